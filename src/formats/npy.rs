//! NumPy `.npy` (format versions 1–3): n × d or n × L × d, little-endian f16/f32/f64,
//! C or Fortran order.

use std::path::Path;

use super::{Buffer, FeatureFile, FileMeta, TensorSpec, read_file};
use crate::error::{Error, Result};
use crate::matrix::DType;
use crate::metrics::Layout;

/// Parsed `.npy` header: element type, shape, order, and where the data starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    pub data_offset: usize,
}

/// Parses the header of an `.npy` byte buffer.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(Error::format(path, "not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(Error::format(path, "truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(Error::format(path, format!("unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| Error::format(path, "truncated .npy header"))?;
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| Error::format(path, ".npy header is not text"))?;
    let descr = dict_value(text, "descr")
        .and_then(|v| {
            v.trim()
                .strip_prefix('\'')
                .and_then(|v| v.split('\'').next())
        })
        .ok_or_else(|| Error::format(path, ".npy header has no 'descr'"))?;
    let dtype = parse_descr(path, descr)?;
    let fortran_order = match dict_value(text, "fortran_order").map(str::trim) {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        _ => return Err(Error::format(path, ".npy header has no 'fortran_order'")),
    };
    let shape_txt = dict_value(text, "shape")
        .and_then(|v| {
            let v = v.trim().strip_prefix('(')?;
            Some(&v[..v.find(')')?])
        })
        .ok_or_else(|| Error::format(path, ".npy header has no 'shape'"))?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| Error::format(path, format!("bad .npy shape entry {s:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NpyHeader {
        dtype,
        shape,
        fortran_order,
        data_offset: end,
    })
}

/// The text after `'key':` in a Python dict literal.
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let i = text.find(&pat)?;
    Some(&text[i + pat.len()..])
}

fn parse_descr(path: &Path, descr: &str) -> Result<DType> {
    let (order, code) = descr.split_at(1.min(descr.len()));
    if !matches!(order, "<" | "|" | "=") {
        return Err(Error::format(
            path,
            format!("unsupported byte order in dtype {descr:?} (prh reads little-endian)"),
        ));
    }
    match code {
        "f2" => Ok(DType::F16),
        "f4" => Ok(DType::F32),
        "f8" => Ok(DType::F64),
        other => Err(Error::format(
            path,
            format!(
                "not a float matrix: dtype {other:?} (prh reads f16, f32, f64; bf16 via .safetensors or .pt)"
            ),
        )),
    }
}

/// A tensor spec for an `.npy` held in `buffer`, checked for size.
pub fn tensor_spec(path: &Path, name: &str, bytes: &[u8], buffer: usize) -> Result<TensorSpec> {
    let h = parse_header(path, bytes)?;
    let strides = if h.fortran_order {
        let mut rev: Vec<usize> = h.shape.iter().rev().copied().collect();
        rev = TensorSpec::c_strides(&rev);
        rev.reverse();
        rev
    } else {
        TensorSpec::c_strides(&h.shape)
    };
    let numel = h
        .shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .and_then(|e| e.checked_mul(h.dtype.size()))
        .ok_or_else(|| Error::format(path, "shape overflows"))?;
    if bytes.len() - h.data_offset < numel {
        return Err(Error::format(
            path,
            format!(
                "truncated: {name} declares shape {:?} ({numel} bytes) but holds {}",
                h.shape,
                bytes.len() - h.data_offset
            ),
        ));
    }
    Ok(TensorSpec {
        name: name.to_string(),
        buffer,
        offset: h.data_offset,
        dtype: h.dtype,
        shape: h.shape,
        strides,
    })
}

/// Opens an `.npy` file (read into memory).
pub fn open(path: &Path) -> Result<FeatureFile> {
    let bytes = read_file(path)?;
    let spec = tensor_spec(path, "array", &bytes, 0)?;
    let layers = spec.into_layers(path)?;
    FeatureFile::new(
        path,
        vec![Buffer::new(bytes)],
        (layers, Layout::Stacked),
        FileMeta::default(),
    )
}

/// An `.npy` file (version 1.0, C order) of little-endian f32 values.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let body: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode("<f4", shape, &body)
}

/// An `.npy` file of little-endian IEEE half-precision values (rounded from f32).
pub fn encode_f16(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let body: Vec<u8> = data
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    encode("<f2", shape, &body)
}

/// The header for `descr` and `shape`, padded to a multiple of 64 bytes, then `body`.
fn encode(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips() {
        let b = encode_f32(&[3, 2, 4], &[0.5; 24]);
        let h = parse_header(Path::new("x.npy"), &b).unwrap();
        assert_eq!(h.shape, vec![3, 2, 4]);
        assert_eq!(h.dtype, DType::F32);
        assert!(!h.fortran_order);
        assert_eq!(h.data_offset % 64, 0);
        assert_eq!(b.len() - h.data_offset, 24 * 4);
    }

    fn replace(mut b: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
        let i = b.windows(from.len()).position(|w| w == from).unwrap();
        b[i..i + from.len()].copy_from_slice(to);
        b
    }

    #[test]
    fn rejects_integer_and_big_endian() {
        let b = replace(encode_f32(&[2, 2], &[1.0; 4]), b"<f4", b"<i8");
        let e = parse_header(Path::new("x.npy"), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a float matrix"), "{e}");
        let b2 = replace(encode_f32(&[2, 2], &[1.0; 4]), b"<f4", b">f4");
        let e = parse_header(Path::new("x.npy"), &b2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("byte order"), "{e}");
    }
}
