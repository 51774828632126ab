//! `.safetensors`: an 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range, then the data. One tensor per layer (natural sort of names)
//! or one n × L × d tensor.

use std::path::Path;

use super::{Buffer, FeatureFile, FileMeta, TensorSpec, map_file, tensors_to_layers};
use crate::error::{Error, Result};
use crate::matrix::DType;

/// Largest JSON header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Opens a `.safetensors` file (memory-mapped, no copy).
pub fn open(path: &Path) -> Result<FeatureFile> {
    let map = map_file(path)?;
    let tensors = parse(path, &map)?;
    let layers = tensors_to_layers(path, tensors)?;
    FeatureFile::new(path, vec![Buffer::Mapped(map)], layers, FileMeta::default())
}

/// Parses the header into tensor specs pointing into `bytes` (buffer 0).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<TensorSpec>> {
    if bytes.len() < 8 {
        return Err(Error::format(path, "truncated: no safetensors header"));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if hlen > MAX_HEADER || 8 + hlen > bytes.len() as u64 {
        return Err(Error::format(
            path,
            format!("truncated or corrupt: header length {hlen} exceeds the file"),
        ));
    }
    let data_start = 8 + hlen as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| Error::format(path, format!("corrupt safetensors header: {e}")))?;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| Error::format(path, format!("tensor {name}: {m}"));
        let dtype = match v.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            Some(other) => {
                return Err(bad(&format!(
                    "not a float matrix (dtype {other}); prh reads F16, BF16, F32, F64"
                )));
            }
            None => return Err(bad("no dtype")),
        };
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad("bad shape"))
            })
            .collect::<Result<_>>()?;
        let offs = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("no data_offsets"))?;
        let (b, e) = (
            offs[0].as_u64().ok_or_else(|| bad("bad data_offsets"))? as usize,
            offs[1].as_u64().ok_or_else(|| bad("bad data_offsets"))? as usize,
        );
        let need = shape
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .and_then(|x| x.checked_mul(dtype.size()))
            .ok_or_else(|| bad("shape overflows"))?;
        if e < b || e - b != need {
            return Err(bad(&format!(
                "data_offsets [{b}, {e}] do not match shape {shape:?}"
            )));
        }
        if e > data_len {
            return Err(bad(&format!(
                "truncated: data ends at {e}, file holds {data_len} data bytes"
            )));
        }
        out.push(TensorSpec {
            strides: TensorSpec::c_strides(&shape),
            name,
            buffer: 0,
            offset: data_start + b,
            dtype,
            shape,
        });
    }
    Ok(out)
}

/// Encodes named f32 tensors as `.safetensors` bytes. Used by the demo and tests.
pub fn encode_f32(tensors: &[(&str, Vec<usize>, &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, shape, data) in tensors {
        let len = data.len() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + len]}),
        );
        at += len;
    }
    let mut h = serde_json::to_vec(&header).expect("json");
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + at);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, data) in tensors {
        for v in *data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}
