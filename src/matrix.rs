//! Element types, strided 2-D views over raw little-endian bytes, and the canonical encoding
//! that defines a representation's identity (docs/design.md §2).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use ndarray::Array2;

/// Element type of a stored matrix, kept as ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// Lower-case name used in the catalog, the CLI and the blob header ("f32", "bf16", ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// Parses [`DType::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            "f64" => DType::F64,
            _ => return None,
        })
    }

    /// Decodes one little-endian element to f32 (f64 is rounded to nearest).
    #[inline]
    pub fn decode(self, b: &[u8]) -> f32 {
        match self {
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F64 => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
        }
    }

    /// True when the little-endian element is a finite number (checks the exponent bits).
    #[inline]
    pub fn is_finite(self, b: &[u8]) -> bool {
        match self {
            DType::F16 => (u16::from_le_bytes([b[0], b[1]]) & 0x7c00) != 0x7c00,
            DType::BF16 => (u16::from_le_bytes([b[0], b[1]]) & 0x7f80) != 0x7f80,
            DType::F32 => {
                (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000) != 0x7f80_0000
            }
            DType::F64 => {
                let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                (v & 0x7ff0_0000_0000_0000) != 0x7ff0_0000_0000_0000
            }
        }
    }

    /// Index of the first non-finite element in a contiguous little-endian buffer.
    pub fn first_non_finite(self, bytes: &[u8]) -> Option<usize> {
        match self {
            // Fast path: branch-free scan that the compiler vectorises.
            DType::F32 => {
                let bad = bytes
                    .chunks_exact(4)
                    .map(|c| {
                        (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
                            as u32
                    })
                    .fold(0u32, |a, b| a | b);
                if bad == 0 {
                    return None;
                }
                bytes.chunks_exact(4).position(|c| !self.is_finite(c))
            }
            _ => bytes
                .chunks_exact(self.size())
                .position(|c| !self.is_finite(c)),
        }
    }
}

/// Size in bytes of the canonical header that precedes the elements of every blob.
pub const HEADER_LEN: usize = 32;
/// Format tag: the first 8 bytes of every blob.
pub const FORMAT_TAG: &[u8; 8] = b"PRHMAT01";

/// The canonical 32-byte header of an n × d matrix of `dtype`:
/// bytes 0..8 `PRHMAT01`, 8..16 the dtype name in ASCII padded with NUL,
/// 16..24 n as u64 little-endian, 24..32 d as u64 little-endian.
pub fn canonical_header(dtype: DType, n: usize, d: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(FORMAT_TAG);
    let name = dtype.name().as_bytes();
    h[8..8 + name.len()].copy_from_slice(name);
    h[16..24].copy_from_slice(&(n as u64).to_le_bytes());
    h[24..32].copy_from_slice(&(d as u64).to_le_bytes());
    h
}

/// Parses a canonical header; `None` when it is not one.
pub fn parse_header(h: &[u8]) -> Option<(DType, usize, usize)> {
    if h.len() < HEADER_LEN || &h[..8] != FORMAT_TAG {
        return None;
    }
    let name_end = h[8..16].iter().position(|&b| b == 0).unwrap_or(8);
    let dtype = DType::from_name(std::str::from_utf8(&h[8..8 + name_end]).ok()?)?;
    let n = u64::from_le_bytes(h[16..24].try_into().ok()?) as usize;
    let d = u64::from_le_bytes(h[24..32].try_into().ok()?) as usize;
    Some((dtype, n, d))
}

/// A 2-D view (n rows × d columns) over little-endian element bytes, with strides in elements.
/// It is how every file reader hands a layer to ingest without copying it first.
#[derive(Clone, Copy)]
pub struct LayerView<'a> {
    pub dtype: DType,
    pub n: usize,
    pub d: usize,
    /// Bytes starting at element (0, 0).
    pub data: &'a [u8],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> LayerView<'a> {
    /// A contiguous row-major view.
    pub fn contiguous(dtype: DType, n: usize, d: usize, data: &'a [u8]) -> Self {
        LayerView {
            dtype,
            n,
            d,
            data,
            row_stride: d,
            col_stride: 1,
        }
    }

    /// Number of bytes the view needs to reach its last element, or `None` on overflow.
    pub fn required_bytes(&self) -> Option<usize> {
        if self.n == 0 || self.d == 0 {
            return Some(0);
        }
        let last = (self.n - 1)
            .checked_mul(self.row_stride)?
            .checked_add((self.d - 1).checked_mul(self.col_stride)?)?;
        last.checked_add(1)?.checked_mul(self.dtype.size())
    }

    /// Row `i` as contiguous bytes when the columns are contiguous, else `None`.
    pub fn row_slice(&self, i: usize) -> Option<&'a [u8]> {
        if self.col_stride != 1 {
            return None;
        }
        let es = self.dtype.size();
        let start = i * self.row_stride * es;
        Some(&self.data[start..start + self.d * es])
    }

    /// Appends row `i` in canonical (contiguous little-endian) form to `out`.
    pub fn push_row(&self, i: usize, out: &mut Vec<u8>) {
        if let Some(r) = self.row_slice(i) {
            out.extend_from_slice(r);
            return;
        }
        let es = self.dtype.size();
        for j in 0..self.d {
            let at = (i * self.row_stride + j * self.col_stride) * es;
            out.extend_from_slice(&self.data[at..at + es]);
        }
    }

    /// The matrix decoded to f32, row-major.
    pub fn to_f32(&self) -> Array2<f32> {
        let es = self.dtype.size();
        let mut out = Array2::<f32>::zeros((self.n, self.d));
        for (i, mut row) in out.rows_mut().into_iter().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let at = (i * self.row_stride + j * self.col_stride) * es;
                *v = self.dtype.decode(&self.data[at..at + es]);
            }
        }
        out
    }
}

/// Decodes a contiguous canonical element buffer (no header) of shape n × d to f32. Half
/// precision goes through `half`'s slice conversion (F16C / NEON where the CPU has it), a
/// block at a time.
pub fn decode_contiguous(dtype: DType, n: usize, d: usize, bytes: &[u8]) -> Array2<f32> {
    assert_eq!(
        bytes.len(),
        n * d * dtype.size(),
        "buffer length matches n*d"
    );
    let mut v = vec![0f32; n * d];
    decode_into(dtype, bytes, &mut v);
    Array2::from_shape_vec((n, d), v).expect("buffer length matches n*d")
}

/// Decodes canonical elements (no header) into `out`, one value per element of `bytes`.
pub fn decode_into(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => match in_place::<f16>(bytes) {
            Some(v) => v.convert_to_f32_slice(out),
            None => decode_half(f16::ZERO, f16::from_le_bytes, bytes, out),
        },
        DType::BF16 => match in_place::<bf16>(bytes) {
            Some(v) => v.convert_to_f32_slice(out),
            None => decode_half(bf16::ZERO, bf16::from_le_bytes, bytes, out),
        },
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = dtype.decode(c);
            }
        }
    }
}

/// Little-endian 16-bit values read in place, when this machine is little-endian and the
/// bytes are aligned (a mapped blob's are); `None` otherwise.
fn in_place<T: bytemuck::Pod>(bytes: &[u8]) -> Option<&[T]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

/// Decodes 16-bit floats (`f16` or `bf16`, little-endian) into `out`, a block at a time.
fn decode_half<T: Copy>(zero: T, from_le: impl Fn([u8; 2]) -> T, bytes: &[u8], out: &mut [f32])
where
    [T]: half::slice::HalfFloatSliceExt,
{
    const BLOCK: usize = 1024;
    let mut buf = [zero; BLOCK];
    for (out, src) in out.chunks_mut(BLOCK).zip(bytes.chunks(2 * BLOCK)) {
        let buf = &mut buf[..out.len()];
        for (b, c) in buf.iter_mut().zip(src.chunks_exact(2)) {
            *b = from_le([c[0], c[1]]);
        }
        buf.convert_to_f32_slice(out);
    }
}

/// Canonical little-endian bytes of an f32 matrix (no header), for writing test and demo data.
pub fn f32_bytes(x: &Array2<f32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() * 4);
    for v in x.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_decoding_equals_element_decoding_in_every_dtype() {
        // 37 × 61 = 2257 elements: two full blocks and a partial one; values span normal,
        // subnormal, zero, negative zero and large magnitudes.
        let (n, d) = (37, 61);
        let mut rng = crate::rng::Rng::new(3);
        let vals: Vec<f32> = (0..n * d)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => 1e-7 * rng.normal() as f32,
                3 => 6e4 * rng.normal() as f32,
                _ => rng.normal() as f32,
            })
            .collect();
        for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            let bytes: Vec<u8> = vals
                .iter()
                .flat_map(|&v| match dtype {
                    DType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                    DType::BF16 => bf16::from_f32(v).to_le_bytes().to_vec(),
                    DType::F32 => v.to_le_bytes().to_vec(),
                    DType::F64 => (v as f64).to_le_bytes().to_vec(),
                })
                .collect();
            let got = decode_contiguous(dtype, n, d, &bytes);
            // The same bytes one byte off their alignment (16-bit values are then not read in
            // place).
            let mut shifted = vec![0u8; bytes.len() + 1];
            shifted[1..].copy_from_slice(&bytes);
            let mut off = vec![0f32; n * d];
            decode_into(dtype, &shifted[1..], &mut off);
            for (i, c) in bytes.chunks_exact(dtype.size()).enumerate() {
                let want = dtype.decode(c);
                assert_eq!(
                    got[(i / d, i % d)].to_bits(),
                    want.to_bits(),
                    "{dtype:?} element {i}"
                );
                assert_eq!(
                    off[i].to_bits(),
                    want.to_bits(),
                    "{dtype:?} element {i}, unaligned"
                );
            }
        }
    }

    #[test]
    fn header_round_trips() {
        for dt in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            let h = canonical_header(dt, 1024, 768);
            assert_eq!(parse_header(&h), Some((dt, 1024, 768)));
        }
        assert_eq!(
            parse_header(b"PRHMAT02\0\0\0\0\0\0\0\0xxxxxxxxxxxxxxxx"),
            None
        );
    }

    #[test]
    fn finite_check_finds_nan_inf_in_every_dtype() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(DType::F32.first_non_finite(&f32s), Some(1));
        let f64s: Vec<u8> = [f64::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(DType::F64.first_non_finite(&f64s), Some(0));
        let f16s: Vec<u8> = [f16::from_f32(1.0), f16::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(DType::F16.first_non_finite(&f16s), Some(1));
        let b16s: Vec<u8> = [bf16::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(DType::BF16.first_non_finite(&b16s), Some(0));
        let ok: Vec<u8> = [0.0f32, -3.5, 1e30]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(DType::F32.first_non_finite(&ok), None);
    }

    #[test]
    fn strided_view_gathers_rows() {
        // 2 x 3 matrix stored transposed (column-major): strides (1, 2).
        let vals = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let v = LayerView {
            dtype: DType::F32,
            n: 2,
            d: 3,
            data: &bytes,
            row_stride: 1,
            col_stride: 2,
        };
        let m = v.to_f32();
        assert_eq!(m.row(0).to_vec(), vec![1.0, 2.0, 3.0]);
        assert_eq!(m.row(1).to_vec(), vec![4.0, 5.0, 6.0]);
        let mut out = Vec::new();
        v.push_row(1, &mut out);
        assert_eq!(
            out,
            [4.0f32, 5.0, 6.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
    }
}
