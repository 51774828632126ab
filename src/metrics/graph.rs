//! Exact k-nearest-neighbour graphs, certified against any GEMM (docs/design.md §9).
//!
//! A neighbour's similarity is defined once, independently of how it is computed at scale:
//! the *canonical* similarity of rows i and j is [`dot_f64`]`(x_i, x_j)` (f32 products exact
//! in f64, four fixed accumulators), which is symmetric and the same on every path. A fast f32
//! product (the dense Gram matrix, or a tile of rows against all rows) only *proposes*
//! candidates: any summation order of d f32 products is within γ_d·‖x_i‖‖x_j‖ of the exact
//! value (γ_d = d·u / (1 − d·u), u = 2⁻²⁴), so every sample whose canonical similarity reaches
//! row i's k-th is among those whose f32 value is at least the k-th f32 value minus twice that
//! bound. Those few are rescored canonically, ordered (most similar first, ties by lower
//! index), and the tie at the k boundary is read off exactly. The dense path and the tiled path
//! therefore return the same lists, values and ties to the last bit.

use faer::{Accum, MatMut, MatRef, Par};
use ndarray::Array2;
use rayon::prelude::*;

use super::derived::{Knn, TieRow, Ties};
use super::dot::dot_f64;

/// True when rows i and j are the same sample (the same row, or copies in a resample).
#[inline]
pub(crate) fn same_sample(i: usize, j: usize, groups: Option<&[u32]>) -> bool {
    i == j || groups.is_some_and(|g| g[i] == g[j])
}

/// `f32::total_cmp` as an integer: a > b in the total order iff total_key(a) > total_key(b).
/// Comparisons of these vectorise; `total_cmp`'s do not.
#[inline]
pub(crate) fn total_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// The k largest entries of `row` (excluding index `skip`), most similar first, ties by lower
/// index, into `buf` as (value, index). Once the buffer is full, each block of 16 values is
/// first tested branch-free against the k-th best (most blocks hold no candidate), and only a
/// block that does is scanned value by value.
pub(crate) fn top_k_scan(
    row: &[f32],
    skip: usize,
    k: usize,
    groups: Option<&[u32]>,
    buf: &mut Vec<(f32, u32)>,
) {
    const BLOCK: usize = 16;
    buf.clear();
    if k == 0 {
        return;
    }
    for (c, block) in row.chunks(BLOCK).enumerate() {
        if buf.len() == k {
            let kth = total_key(buf[k - 1].0);
            if !block
                .iter()
                .fold(false, |any, &v| any | (total_key(v) > kth))
            {
                continue;
            }
        }
        for (o, &v) in block.iter().enumerate() {
            let j = c * BLOCK + o;
            if same_sample(skip, j, groups) {
                continue;
            }
            if buf.len() == k {
                // Scanning in index order: an equal value never beats an earlier index.
                if total_key(v) <= total_key(buf[k - 1].0) {
                    continue;
                }
                buf.pop();
            }
            let pos = buf.partition_point(|&(b, _)| total_key(b) >= total_key(v));
            buf.insert(pos, (v, j as u32));
        }
    }
}

/// Rows of prepared features, with what the certificate needs.
pub struct Rows<'a> {
    x: &'a [f32],
    d: usize,
    norms: Vec<f64>,
    max_norm: f64,
    gamma: f64,
}

impl<'a> Rows<'a> {
    /// Wraps the row-major data of an n × d matrix.
    pub fn new(x: &'a [f32], n: usize, d: usize) -> Self {
        let norms: Vec<f64> = (0..n)
            .into_par_iter()
            .map(|i| {
                let r = &x[i * d..(i + 1) * d];
                dot_f64(r, r).sqrt()
            })
            .collect();
        let max_norm = norms.iter().copied().fold(0.0, f64::max);
        let u = f64::powi(2.0, -24);
        // Twice the textbook bound (and the f64 rescoring's own rounding, far smaller), so
        // the certificate never rests on the last bit of an estimate.
        let du = (d.max(1) as f64) * u;
        let gamma = 2.0 * du / (1.0 - du).max(0.5) + (d as f64) * f64::powi(2.0, -50);
        Rows {
            x,
            d,
            norms,
            max_norm,
            gamma,
        }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// The canonical similarity of rows i and j.
    pub fn sim(&self, i: usize, j: usize) -> f64 {
        dot_f64(self.row(i), self.row(j))
    }

    fn n(&self) -> usize {
        self.norms.len()
    }
}

/// One row's neighbours: (canonical similarity, index), ordered, and its tie if any.
pub struct RowNeighbours {
    /// The k nearest, most similar first, ties by lower index.
    pub top: Vec<(f64, u32)>,
    /// Set when the k-th and (k+1)-th are equally similar.
    pub tie: Option<TieRow>,
}

/// Scratch buffers reused across the rows one thread refines.
#[derive(Default)]
pub struct Scratch {
    approx: Vec<(f32, u32)>,
    cand: Vec<(f64, u32)>,
}

/// Row i's exact k nearest neighbours from `approx`, f32 similarities of row i to every row
/// computed by any summation order (see the module note). `groups`: rows with one label are
/// copies of one sample and never each other's neighbours.
pub fn refine_row(
    rows: &Rows,
    approx: &[f32],
    i: usize,
    k: usize,
    groups: Option<&[u32]>,
    s: &mut Scratch,
) -> RowNeighbours {
    top_k_scan(approx, i, k, groups, &mut s.approx);
    s.cand.clear();
    if let Some(&(t, _)) = s.approx.get(k.saturating_sub(1)).filter(|_| k > 0) {
        let margin = 2.0 * rows.gamma * rows.norms[i] * rows.max_norm;
        // The smallest f32 that is still a candidate, rounded down so no candidate is lost.
        let floor = t as f64 - margin;
        let mut low = floor as f32;
        if low as f64 > floor {
            low = low.next_down();
        }
        let lk = total_key(low);
        const BLOCK: usize = 16;
        for (c, block) in approx.chunks(BLOCK).enumerate() {
            if !block
                .iter()
                .fold(false, |any, &v| any | (total_key(v) >= lk))
            {
                continue;
            }
            for (o, &v) in block.iter().enumerate() {
                let j = c * BLOCK + o;
                if total_key(v) >= lk && !same_sample(i, j, groups) {
                    s.cand.push((rows.sim(i, j), j as u32));
                }
            }
        }
    } else {
        // Fewer than k others: all of them.
        for j in 0..approx.len() {
            if !same_sample(i, j, groups) {
                s.cand.push((rows.sim(i, j), j as u32));
            }
        }
    }
    s.cand
        .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let take = k.min(s.cand.len());
    let top = s.cand[..take].to_vec();
    let tie =
        (take == k && k > 0 && s.cand.len() > k && s.cand[k].0 == s.cand[k - 1].0).then(|| {
            let kth = s.cand[k - 1].0;
            let mut sure: Vec<u32> = s.cand.iter().filter(|c| c.0 > kth).map(|c| c.1).collect();
            let mut group: Vec<u32> = s.cand.iter().filter(|c| c.0 == kth).map(|c| c.1).collect();
            sure.sort_unstable();
            group.sort_unstable();
            TieRow {
                row: i as u32,
                picks: k - sure.len(),
                sure,
                group,
            }
        });
    RowNeighbours { top, tie }
}

/// Assembles per-row results (in row order) into lists and ties.
pub fn assemble(k: usize, per_row: Vec<RowNeighbours>) -> (Knn, Ties) {
    let n = per_row.len();
    let mut ordered = Vec::with_capacity(n * k);
    let mut sims = Vec::with_capacity(n * k);
    let mut rows = Vec::new();
    for r in per_row {
        for &(s, j) in &r.top {
            ordered.push(j);
            sims.push(s);
        }
        rows.extend(r.tie);
    }
    (Knn::new(k, ordered, sims), Ties { rows })
}

/// Rows per tile so that one tile of f32 similarities (rows × n) takes about `bytes`.
pub fn tile_rows(n: usize, bytes: usize) -> usize {
    (bytes / (4 * n.max(1))).clamp(16, n.max(16))
}

/// The exact k-nearest-neighbour graph of `x` without an n × n matrix: tiles of `tile` rows
/// against all rows (one GEMM each), each row refined by [`refine_row`]. Peak memory is the
/// features plus one tile (tile × n × 4 bytes). `progress` is called with rows done.
pub fn knn_tiled(
    x: &Array2<f32>,
    k: usize,
    groups: Option<&[u32]>,
    tile: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> (Knn, Ties) {
    let xs = x.as_standard_layout();
    let (n, d) = x.dim();
    let rows = Rows::new(xs.as_slice().expect("standard layout"), n, d);
    let a = MatRef::from_row_major_slice(rows.x, n, d);
    let tile = tile.clamp(1, n.max(1));
    let mut buf = vec![0f32; tile * n];
    let mut out = Vec::with_capacity(n);
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + tile).min(n);
        let s = &mut buf[..(r1 - r0) * n];
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(s, r1 - r0, n),
            Accum::Replace,
            a.subrows(r0, r1 - r0),
            a.transpose(),
            1.0f32,
            Par::rayon(0),
        );
        let part: Vec<RowNeighbours> = s
            .par_chunks(n)
            .enumerate()
            .map_init(Scratch::default, |sc, (o, approx)| {
                refine_row(&rows, approx, r0 + o, k, groups, sc)
            })
            .collect();
        out.extend(part);
        progress(r1);
        r0 = r1;
    }
    assemble(k, out)
}

/// The same graph from a dense n × n f32 Gram matrix of `x`.
pub fn knn_from_gram(x: &Array2<f32>, g: &[f32], k: usize, groups: Option<&[u32]>) -> (Knn, Ties) {
    let xs = x.as_standard_layout();
    let rows = Rows::new(
        xs.as_slice().expect("standard layout"),
        x.nrows(),
        x.ncols(),
    );
    let n = rows.n();
    let per_row: Vec<RowNeighbours> = g
        .par_chunks(n.max(1))
        .enumerate()
        .map_init(Scratch::default, |sc, (i, approx)| {
            refine_row(&rows, approx, i, k, groups, sc)
        })
        .collect();
    assemble(k, per_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The certificate: whatever f32 approximation within the error bound proposes the
    /// candidates, the neighbours, their similarities and the ties are the canonical ones.
    #[test]
    fn neighbours_do_not_depend_on_the_approximation_within_its_bound() {
        let mut r = crate::rng::Rng::new(11);
        let (n, d, k) = (400, 64, 10);
        // Near-duplicate rows: many similarities within the bound of each other.
        let base: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
        let x: Vec<f32> = (0..n * d)
            .map(|p| base[p % d] + 2e-4 * r.normal() as f32)
            .collect();
        let rows = Rows::new(&x, n, d);
        let mut flipped = 0;
        for i in (0..n).step_by(7) {
            let canon: Vec<f64> = (0..n).map(|j| rows.sim(i, j)).collect();
            let mut want: Vec<(f64, u32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (canon[j], j as u32))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            want.truncate(k);
            for trial in 0..4 {
                let approx: Vec<f32> = (0..n)
                    .map(|j| {
                        let bound = rows.gamma / 2.0 * rows.norms[i] * rows.norms[j];
                        let e = match trial {
                            0 => 0.9 * bound,
                            1 => -0.9 * bound,
                            _ => 0.9 * bound * (2.0 * r.uniform() - 1.0),
                        };
                        (canon[j] + e) as f32
                    })
                    .collect();
                let mut naive: Vec<(f32, u32)> = Vec::new();
                top_k_scan(&approx, i, k, None, &mut naive);
                flipped += usize::from(
                    naive.iter().map(|p| p.1).collect::<Vec<_>>()
                        != want.iter().map(|p| p.1).collect::<Vec<_>>(),
                );
                let got = refine_row(&rows, &approx, i, k, None, &mut Scratch::default());
                assert_eq!(got.top, want, "row {i}, trial {trial}");
            }
        }
        // Without the refinement the f32 proposal alone is often wrong on these rows.
        assert!(
            flipped > 20,
            "only {flipped} proposals differed: the test is too easy"
        );
    }

    #[test]
    fn block_scan_equals_a_full_sort_with_ties_zeros_and_groups() {
        let mut rng = crate::rng::Rng::new(5);
        for trial in 0..40 {
            let n = 1 + trial * 7 % 150;
            // Few distinct values (many ties), both zeros, and the odd large one.
            let row: Vec<f32> = (0..n)
                .map(|_| match (rng.normal() * 3.0) as i64 {
                    0 => 0.0,
                    1 => -0.0,
                    v => v as f32 / 4.0,
                })
                .collect();
            let groups: Vec<u32> = (0..n as u32).map(|j| j / 3).collect();
            for k in [1, 5, 10, 17, 64] {
                for g in [None, Some(groups.as_slice())] {
                    let skip = trial % n;
                    let mut want: Vec<(f32, u32)> = (0..n)
                        .filter(|&j| !same_sample(skip, j, g))
                        .map(|j| (row[j], j as u32))
                        .collect();
                    want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    want.truncate(k);
                    let mut got = Vec::new();
                    top_k_scan(&row, skip, k, g, &mut got);
                    let bits = |v: &[(f32, u32)]| -> Vec<(u32, u32)> {
                        v.iter().map(|&(x, j)| (x.to_bits(), j)).collect()
                    };
                    assert_eq!(bits(&got), bits(&want), "n {n} k {k} skip {skip}");
                }
            }
        }
    }
}
