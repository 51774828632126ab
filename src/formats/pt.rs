//! platonic-rep `.pt` files as written by `extract_features.py`: a `torch.save` zip whose
//! `data.pkl` holds a dict with `feats` (an n × L × d tensor, or a list of n × d tensors) and
//! optional scalars `num_params`, `loss`, `bpb`. Views with storage offsets and strides are
//! honoured. The pickle is parsed by [`super::pickle`], never executed.

use std::collections::HashMap;
use std::path::Path;

use super::pickle::{self, StorageKind, Value};
use super::{Buffer, FeatureFile, FileMeta, LayerSpec, TensorSpec, npz, open_regular};
use crate::error::{Error, Result};
use crate::matrix::DType;
use crate::metrics::Layout;

/// Opens a platonic-rep `.pt` file.
pub fn open(path: &Path) -> Result<FeatureFile> {
    let (file, _) = open_regular(path)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        Error::format(
            path,
            format!(
                "not a torch.save zip archive (legacy pre-1.6 .pt files are not supported): {e}"
            ),
        )
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(|r| r.ok())
                .map(|s| s.to_string())
        })
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| Error::format(path, "no data.pkl in the archive"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Some(order) = read_capped(path, &mut zip, &format!("{prefix}byteorder"), 64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        && order.trim() != "little"
    {
        return Err(Error::format(
            path,
            format!("unsupported byte order {order:?}"),
        ));
    }
    let pkl = read_capped(path, &mut zip, &pkl_name, MAX_PICKLE)?;
    let root = pickle::load(&pkl).map_err(|m| Error::format(path, m))?;
    let Value::Dict(entries) = root else {
        return Err(Error::format(
            path,
            "expected a dict with 'feats' (platonic-rep layout) at the top level",
        ));
    };
    let get = |k: &str| {
        entries
            .iter()
            .find(|(kk, _)| matches!(kk, Value::Str(s) if &**s == k))
            .map(|(_, v)| v)
    };
    let feats = get("feats").ok_or_else(|| Error::format(path, "no 'feats' entry"))?;

    let mut storages: HashMap<String, usize> = HashMap::new();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut load_storage = |zip: &mut zip::ZipArchive<std::fs::File>,
                            key: &str,
                            kind: StorageKind,
                            numel: usize|
     -> Result<usize> {
        if let Some(&i) = storages.get(key) {
            return Ok(i);
        }
        let bytes = read_storage(path, zip, &prefix, key, kind, numel)?;
        buffers.push(Buffer::new(bytes));
        storages.insert(key.to_string(), buffers.len() - 1);
        Ok(buffers.len() - 1)
    };

    let tensor_list: Vec<&Value> = match feats {
        Value::Tensor { .. } => vec![feats],
        Value::List(items) | Value::Tuple(items) => items.iter().collect(),
        other => {
            return Err(Error::format(
                path,
                format!(
                    "'feats' is not a tensor or a list of tensors ({})",
                    other.kind_name()
                ),
            ));
        }
    };
    super::check_layer_count(path, tensor_list.len(), "tensors in 'feats'")?;
    let mut layers: Vec<LayerSpec> = Vec::new();
    for (li, t) in tensor_list.iter().enumerate() {
        let Value::Tensor {
            kind,
            key,
            storage_numel,
            offset,
            shape,
            strides,
        } = t
        else {
            return Err(Error::format(path, format!("feats[{li}] is not a tensor")));
        };
        let dtype = float_dtype(*kind).ok_or_else(|| {
            Error::format(
                path,
                "not a float matrix: 'feats' holds integers or booleans",
            )
        })?;
        if tensor_list.len() > 1 && shape.len() != 2 {
            return Err(Error::format(
                path,
                format!(
                    "wrong rank: feats[{li}] has shape {shape:?}; each list entry must be n × d"
                ),
            ));
        }
        let buffer = load_storage(&mut zip, key, *kind, *storage_numel)?;
        let name = if tensor_list.len() > 1 {
            format!("feats[{li}]")
        } else {
            "feats".to_string()
        };
        let spec = TensorSpec {
            name,
            buffer,
            offset: offset
                .checked_mul(kind.size())
                .ok_or_else(|| Error::format(path, "storage offset overflows"))?,
            dtype,
            shape: shape.clone(),
            strides: strides.clone(),
        };
        layers.extend(spec.into_layers(path)?);
    }

    let mut meta = FileMeta::default();
    if let Some(v) = get("num_params") {
        meta.num_params = match v {
            Value::Int(i) => Some(*i),
            Value::Float(f) => Some(*f as i64),
            Value::Tensor { .. } => scalar(path, &mut zip, &prefix, v)?.map(|f| f as i64),
            _ => None,
        };
    }
    for name in ["loss", "bpb"] {
        if let Some(v) = get(name) {
            let value = match v {
                Value::Float(f) => Some(*f),
                Value::Int(i) => Some(*i as f64),
                Value::Tensor { .. } => scalar(path, &mut zip, &prefix, v)?,
                _ => None,
            };
            if let Some(x) = value.filter(|x| x.is_finite()) {
                meta.scores.push((name.to_string(), x));
            }
        }
    }
    // A list of per-layer tensors is clamped layer by layer by the official code.
    let layout = if tensor_list.len() > 1 {
        Layout::Layers
    } else {
        Layout::Stacked
    };
    FeatureFile::new(path, buffers, (layers, layout), meta)
}

fn float_dtype(k: StorageKind) -> Option<DType> {
    match k {
        StorageKind::F32 => Some(DType::F32),
        StorageKind::F16 => Some(DType::F16),
        StorageKind::BF16 => Some(DType::BF16),
        StorageKind::F64 => Some(DType::F64),
        StorageKind::Other(_) => None,
    }
}

/// The value of a one-element float tensor (`tensor(2.5)`), or `None` for anything else.
fn scalar(
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    prefix: &str,
    v: &Value,
) -> Result<Option<f64>> {
    let Value::Tensor {
        kind,
        key,
        storage_numel,
        offset,
        shape,
        ..
    } = v
    else {
        return Ok(None);
    };
    if shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)) != Some(1) {
        return Ok(None);
    }
    let Some(dtype) = float_dtype(*kind) else {
        return Ok(None);
    };
    let bytes = read_storage(path, zip, prefix, key, *kind, *storage_numel)?;
    let at = offset
        .checked_mul(dtype.size())
        .filter(|at| {
            at.checked_add(dtype.size())
                .is_some_and(|e| e <= bytes.len())
        })
        .ok_or_else(|| {
            Error::format(
                path,
                format!("scalar storage {key}: offset {offset} lies outside the storage"),
            )
        })?;
    Ok(Some(match dtype {
        DType::F64 => f64::from_le_bytes(bytes[at..at + 8].try_into().expect("8")),
        _ => dtype.decode(&bytes[at..]) as f64,
    }))
}

/// Largest `data.pkl` accepted. platonic-rep's pickles are a few kilobytes: the tensors live in
/// separate members.
const MAX_PICKLE: u64 = 64 << 20;

/// A storage member: exactly `numel` elements, nothing more.
fn read_storage(
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    prefix: &str,
    key: &str,
    kind: StorageKind,
    numel: usize,
) -> Result<Vec<u8>> {
    let want = numel.checked_mul(kind.size()).ok_or_else(|| {
        Error::format(
            path,
            format!("storage {key} declares {numel} elements: overflows"),
        )
    })?;
    let name = format!("{prefix}data/{key}");
    npz::read_exact_member(path, &mut member(path, zip, &name)?, &name, want as u64)
}

/// The archive member called `name`, or an error naming it.
fn member<'a>(
    path: &Path,
    zip: &'a mut zip::ZipArchive<std::fs::File>,
    name: &str,
) -> Result<zip::read::ZipFile<'a, std::fs::File>> {
    zip.by_name(name)
        .map_err(|e| Error::format(path, format!("archive member {name}: {e}")))
}

/// A member of unknown length up to `cap` bytes.
fn read_capped(
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    cap: u64,
) -> Result<Vec<u8>> {
    npz::read_capped_member(path, &mut member(path, zip, name)?, name, cap)
}
