//! Prepared rows held at 16 bits (docs/design.md §13). Features stored as f16 or bf16 stay as
//! stored, two bytes a value, beside each row's clamp threshold and unit scale; a search
//! widens them a tile at a time to exactly the f32 values [`prep::prepare`] gives (the widening
//! is exact, then the same clamp and the same f32 multiply), so every graph found from them is
//! the graph of the prepared f32 rows, at half their memory.

use std::ops::Range;

use ndarray::Array2;
use rayon::prelude::*;

use super::prep;
use crate::error::Result;
use crate::matrix::{self, DType};
use crate::store::Blob;

/// Where the 16-bit values live.
enum Held {
    /// A stored blob, read in place (memory-mapped for a local store).
    Blob(Blob),
    /// Bytes in memory.
    Owned(Vec<u8>),
}

/// One layer's prepared rows, held as its f16 or bf16 values.
pub struct HalfRows {
    held: Held,
    dtype: DType,
    n: usize,
    d: usize,
    threshold: Option<f32>,
    /// Each row's [`prep::unit_scale`], when rows are normalised.
    scales: Option<Vec<f32>>,
}

/// Rows per task when the scales are computed.
const CHUNK: usize = 256;

impl HalfRows {
    /// True when features of `dtype` can be held this way.
    pub fn holds(dtype: DType) -> bool {
        matches!(dtype, DType::F16 | DType::BF16)
    }

    /// A stored layer of f16 or bf16 values (verify it first), prepared with `threshold` and
    /// `normalize` as [`prep::prepare`] would; an all-zero row is the same error.
    pub fn from_blob(blob: Blob, threshold: Option<f32>, normalize: bool) -> Result<Self> {
        let (dtype, n, d) = (blob.dtype, blob.n, blob.d);
        HalfRows::new(Held::Blob(blob), dtype, n, d, threshold, normalize)
    }

    /// n × d little-endian f16 or bf16 values in memory (no header), prepared as
    /// [`HalfRows::from_blob`].
    pub fn from_bytes(
        dtype: DType,
        n: usize,
        d: usize,
        bytes: Vec<u8>,
        threshold: Option<f32>,
        normalize: bool,
    ) -> Result<Self> {
        HalfRows::new(Held::Owned(bytes), dtype, n, d, threshold, normalize)
    }

    fn new(
        held: Held,
        dtype: DType,
        n: usize,
        d: usize,
        threshold: Option<f32>,
        normalize: bool,
    ) -> Result<Self> {
        assert!(
            HalfRows::holds(dtype),
            "{} is not a 16-bit type",
            dtype.name()
        );
        let mut rows = HalfRows {
            held,
            dtype,
            n,
            d,
            threshold,
            scales: None,
        };
        assert_eq!(rows.bytes().len(), n * d * 2, "n × d values");
        let scales: Vec<Option<f32>> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map_init(Vec::new, |buf, c| {
                let r = c * CHUNK..((c + 1) * CHUNK).min(n);
                buf.resize(r.len() * d, 0.0);
                rows.clamped(r.clone(), buf);
                (0..r.len())
                    .map(|o| prep::unit_scale(&buf[o * d..(o + 1) * d]))
                    .collect::<Vec<_>>()
            })
            .flatten()
            .collect();
        // The first all-zero row, as prepare reports it.
        if let Some(i) = scales.iter().position(Option::is_none) {
            return Err(prep::zero_row(i));
        }
        rows.scales = normalize.then(|| scales.into_iter().flatten().collect());
        Ok(rows)
    }

    fn bytes(&self) -> &[u8] {
        match &self.held {
            Held::Blob(b) => b.elements(),
            Held::Owned(v) => v,
        }
    }

    /// Number of rows.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Values per row.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Bytes held for the values (two per value).
    pub fn held_bytes(&self) -> usize {
        self.n * self.d * 2
    }

    /// Rows `rows` widened and clamped into `out` (row-major, `rows.len()` × d).
    fn clamped(&self, rows: Range<usize>, out: &mut [f32]) {
        self.decode(&rows, out);
        prep::clamp_row(out, self.threshold);
    }

    /// Rows `rows` widened as stored (exact) into `out`.
    fn decode(&self, rows: &Range<usize>, out: &mut [f32]) {
        let d = self.d;
        let bytes = &self.bytes()[rows.start * d * 2..rows.end * d * 2];
        matrix::decode_into(self.dtype, bytes, out);
    }

    /// Rows `rows` as prepared f32 values, into `out` (row-major, `rows.len()` × d): the same
    /// bits as those rows of [`prep::prepare`]'s result. The clamp and the scale are one pass
    /// (the same two f32 operations on each value, in the same order).
    pub fn widen(&self, rows: Range<usize>, out: &mut [f32]) {
        let Some(scales) = &self.scales else {
            return self.clamped(rows, out);
        };
        self.decode(&rows, out);
        let scales = &scales[rows];
        let t = self.threshold.unwrap_or(f32::INFINITY);
        for (row, &s) in out.chunks_mut(self.d.max(1)).zip(scales) {
            for v in row {
                *v = v.clamp(-t, t) * s;
            }
        }
    }

    /// All rows as prepared f32 values (n × d).
    pub fn to_f32(&self) -> Array2<f32> {
        let d = self.d;
        let mut x = vec![0f32; self.n * d];
        x.par_chunks_mut(CHUNK * d.max(1))
            .enumerate()
            .for_each(|(c, out)| {
                let r0 = c * CHUNK;
                self.widen(r0..r0 + out.len() / d.max(1), out)
            });
        Array2::from_shape_vec((self.n, d), x).expect("n × d")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn bytes_of(dtype: DType, v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| match dtype {
                DType::F16 => f16::from_f32(x).to_le_bytes(),
                _ => bf16::from_f32(x).to_le_bytes(),
            })
            .collect()
    }

    #[test]
    fn widened_rows_are_the_prepared_rows_bit_for_bit() {
        let (n, d) = (700, 37);
        let mut r = crate::rng::Rng::new(5);
        let v: Vec<f32> = (0..n * d)
            .map(|i| r.normal() as f32 * if i % 11 == 0 { 40.0 } else { 1.0 })
            .collect();
        for dtype in [DType::F16, DType::BF16] {
            let bytes = bytes_of(dtype, &v);
            let stored = matrix::decode_contiguous(dtype, n, d, &bytes);
            let t = prep::clamp_threshold(&[stored.view()], 0.95);
            for (threshold, normalize) in [(t, true), (None, true), (t, false)] {
                let want = prep::prepare(stored.view(), threshold, normalize).unwrap();
                let h =
                    HalfRows::from_bytes(dtype, n, d, bytes.clone(), threshold, normalize).unwrap();
                let all = h.to_f32();
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(all.as_slice().unwrap(), want.as_slice().unwrap()));
                // Any run of rows, not only whole chunks.
                let mut out = vec![0f32; 300 * d];
                h.widen(250..550, &mut out);
                let want_rows = want.slice(ndarray::s![250..550, ..]);
                assert!(same(
                    &out,
                    want_rows.as_standard_layout().as_slice().unwrap()
                ));
            }
        }
    }

    /// The search reads 16-bit rows a tile at a time (both products, across 512-column
    /// blocks, and a block of rows alone) and finds the graph of the prepared f32 rows.
    #[test]
    fn a_search_over_16_bit_rows_finds_the_graph_of_the_f32_rows() {
        use super::super::graph::{self, Gemm, Source};
        let (n, d, k) = (1_300, 24, 7);
        let mut r = crate::rng::Rng::new(9);
        // Small integers tie often; the Gaussian half does not.
        let v: Vec<f32> = (0..n * d)
            .map(|i| {
                if i < n * d / 2 {
                    r.below(3) as f32
                } else {
                    r.normal() as f32
                }
            })
            .collect();
        for dtype in [DType::F16, DType::BF16] {
            let bytes = bytes_of(dtype, &v);
            let stored = matrix::decode_contiguous(dtype, n, d, &bytes);
            let t = prep::clamp_threshold(&[stored.view()], 0.9);
            let x = prep::prepare(stored.view(), t, true).unwrap();
            let h = HalfRows::from_bytes(dtype, n, d, bytes, t, true).unwrap();
            let (want, want_ties) = graph::knn_tiled_with(&x, k, None, Gemm::F32, &|_| {});
            assert!(want_ties.rows.len() > 50, "the rows must tie");
            for gemm in [Gemm::F32, Gemm::Bf16Amx] {
                let rows =
                    graph::knn_rows(Source::Half(&h), k, None, gemm, 0..n, &|_| {}, &|| false);
                let (got, got_ties) = graph::assemble(k, rows.unwrap());
                assert_eq!(got.ordered, want.ordered, "{dtype:?} {gemm:?}");
                assert_eq!(got.sims, want.sims, "{dtype:?} {gemm:?}");
                assert_eq!(got_ties.rows, want_ties.rows, "{dtype:?} {gemm:?}");
                let block =
                    graph::knn_rows(Source::Half(&h), k, None, gemm, 512..1024, &|_| {}, &|| {
                        false
                    })
                    .unwrap();
                let block: Vec<u32> = block
                    .iter()
                    .flat_map(|r| r.top.iter().map(|t| t.1))
                    .collect();
                assert_eq!(
                    block,
                    want.ordered[512 * k..1024 * k],
                    "{dtype:?} {gemm:?} block"
                );
            }
        }
    }

    #[test]
    fn an_all_zero_row_is_refused_as_prepare_refuses_it() {
        let mut v = vec![1f32; 6 * 4];
        v[12..16].fill(0.0);
        v[20..24].fill(0.0);
        let bytes = bytes_of(DType::F16, &v);
        let stored = matrix::decode_contiguous(DType::F16, 6, 4, &bytes);
        let want = prep::prepare(stored.view(), None, true)
            .unwrap_err()
            .to_string();
        let got = HalfRows::from_bytes(DType::F16, 6, 4, bytes, None, true)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(got, want);
        assert!(got.contains("row 3"), "{got}");
    }
}
