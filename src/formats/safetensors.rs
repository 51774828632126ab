//! `.safetensors`: an 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range, then the data (parsed by Hugging Face's `safetensors` crate). One tensor per layer (natural sort of names)
//! or one n × L × d tensor.

use std::path::Path;

use super::{Buffer, FeatureFile, FileMeta, TensorSpec, read_file, tensors_to_layers};
use crate::error::{Error, Result};
use crate::matrix::DType;

/// Largest JSON header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Opens a `.safetensors` file (read into memory).
pub fn open(path: &Path) -> Result<FeatureFile> {
    let bytes = read_file(path)?;
    let tensors = parse(path, &bytes)?;
    let layers = tensors_to_layers(path, tensors)?;
    FeatureFile::new(path, vec![Buffer::new(bytes)], layers, FileMeta::default())
}

/// Parses the header into tensor specs pointing into `bytes` (buffer 0). Header, dtypes and
/// offsets are validated by Hugging Face's `safetensors` crate (offsets contiguous, inside the
/// file, matching each shape, the file covered exactly); prh adds its own size pre-check and
/// its dtype rule.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<TensorSpec>> {
    use ::safetensors::{Dtype, SafeTensorError, SafeTensors};
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
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::format(
            path,
            match e {
                SafeTensorError::MetadataIncompleteBuffer => {
                    "truncated or trailing data: the tensors do not cover the file exactly".into()
                }
                SafeTensorError::InvalidHeaderDeserialization(e) => {
                    format!("corrupt safetensors header: {e}")
                }
                e => format!("corrupt safetensors file: {e}"),
            },
        )
    })?;
    let base = bytes.as_ptr() as usize;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name}: not a float matrix (dtype {other:?}); prh reads F16, BF16, F32, F64"
                    ),
                ));
            }
        };
        let shape = view.shape().to_vec();
        out.push(TensorSpec {
            strides: TensorSpec::c_strides(&shape),
            name: name.to_string(),
            buffer: 0,
            offset: view.data().as_ptr() as usize - base,
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
