//! Exact k-nearest-neighbour graphs, certified against any GEMM (docs/design.md §13).
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
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::amx::Bf16Tiles;
pub use super::amx::Gemm;
use super::derived::{Knn, TieRow, Ties};
use super::dot::dot_f64;
use super::half::HalfRows;

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

/// Prepared rows as a search reads them: f32 values in memory (row-major n × d), or 16-bit
/// values widened a tile at a time ([`HalfRows`]); the same rows give the same graph.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Row-major f32 values, n × d.
    F32(&'a [f32], usize, usize),
    /// f16 or bf16 values with their preparation.
    Half(&'a HalfRows),
}

impl<'a> Source<'a> {
    /// The f32 rows of `x`, which must be in standard layout.
    pub fn of(x: ArrayView2<'a, f32>) -> Self {
        let (n, d) = x.dim();
        Source::F32(x.to_slice().expect("rows in standard layout"), n, d)
    }

    /// Number of rows.
    pub fn n(self) -> usize {
        match self {
            Source::F32(_, n, _) => n,
            Source::Half(h) => h.n(),
        }
    }

    /// Values per row.
    pub fn d(self) -> usize {
        match self {
            Source::F32(_, _, d) => d,
            Source::Half(h) => h.d(),
        }
    }

    /// `f` of each row, in row order, computed in parallel over runs of 256 rows (each run
    /// widened once, for 16-bit rows).
    pub fn map_rows<T: Send>(self, f: impl Fn(&[f32]) -> T + Sync) -> Vec<T> {
        const RUN: usize = 256;
        let (n, d) = (self.n(), self.d());
        (0..n.div_ceil(RUN))
            .into_par_iter()
            .map_init(Vec::new, |buf, c| {
                let (r0, r1) = (c * RUN, ((c + 1) * RUN).min(n));
                let rows = self.rows(r0, r1, buf);
                (0..r1 - r0)
                    .map(|o| f(&rows[o * d..(o + 1) * d]))
                    .collect::<Vec<_>>()
            })
            .flatten()
            .collect()
    }

    /// Calls `f(r0, rows)` for runs of `per` rows from row 0, in order (`rows`: the run's
    /// values, row-major).
    pub fn for_each_run(self, per: usize, mut f: impl FnMut(usize, &[f32])) {
        let mut buf = Vec::new();
        for r0 in (0..self.n()).step_by(per) {
            f(r0, self.rows(r0, (r0 + per).min(self.n()), &mut buf));
        }
    }

    /// Rows `r0..r1` as f32: a slice of the values, or the rows widened into `buf`.
    pub(crate) fn rows<'b>(self, r0: usize, r1: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Source::F32(x, _, d) => &x[r0 * d..r1 * d],
            Source::Half(h) => {
                let d = h.d();
                buf.resize((r1 - r0) * d, 0.0);
                h.widen(r0..r1, buf);
                buf
            }
        }
    }
}

/// Rows of prepared features, with what the certificate needs.
pub struct Rows<'a> {
    x: Source<'a>,
    norms: Vec<f64>,
    max_norm: f64,
    gamma: f64,
    absolute: f64,
}

impl<'a> Rows<'a> {
    /// Wraps the row-major data of an n × d matrix.
    pub fn new(x: &'a [f32], n: usize, d: usize) -> Self {
        Rows::of(Source::F32(x, n, d))
    }

    /// Wraps the rows of `x`.
    pub fn of(x: Source<'a>) -> Self {
        let d = x.d();
        let norms = x.map_rows(|r| dot_f64(r, r).sqrt());
        let max_norm = norms.iter().copied().fold(0.0, f64::max);
        let u = f64::powi(2.0, -24);
        // Twice the textbook bound (and the f64 rescoring's own rounding, far smaller), so
        // the certificate never rests on the last bit of an estimate.
        let du = (d.max(1) as f64) * u;
        let gamma = 2.0 * du / (1.0 - du).max(0.5) + (d as f64) * f64::powi(2.0, -50);
        Rows {
            x,
            norms,
            max_norm,
            gamma,
            absolute: 0.0,
        }
    }

    /// The same rows with the error bound of another product: |value − x·y| ≤
    /// `gamma`·‖x‖‖y‖ + `absolute` for every pair (e.g. [`Bf16Tiles::gamma`]).
    fn with_bound(mut self, gamma: f64, absolute: f64) -> Self {
        self.gamma = gamma;
        self.absolute = absolute;
        self
    }

    /// Row i: a slice of the values, or the row widened into `buf`.
    fn row<'b>(&'b self, i: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        self.x.rows(i, i + 1, buf)
    }

    /// The canonical similarity of rows i and j.
    pub fn sim(&self, i: usize, j: usize) -> f64 {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        dot_f64(self.row(i, &mut a), self.row(j, &mut b))
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
    proposal: Proposal,
    cand: Vec<(f64, u32)>,
    /// Rows i and j widened, for 16-bit rows.
    xi: Vec<f32>,
    xj: Vec<f32>,
}

/// One row's candidates as f32 similarities stream in, block after block of columns: every
/// value not below the running floor (the running k-th best minus the margin) is kept, and the
/// floor rises as better values arrive. The running k-th never exceeds the final one, so
/// nothing that reaches the final floor is ever dropped.
#[derive(Default)]
pub struct Proposal {
    buf: Vec<(f32, u32)>,
    floor: f32,
    margin: f64,
    k: usize,
    next_prune: usize,
}

impl Proposal {
    /// Starts row i (margin from [`Rows`], for k neighbours).
    pub fn start(&mut self, rows: &Rows, i: usize, k: usize) {
        self.buf.clear();
        self.floor = f32::NEG_INFINITY;
        self.margin = 2.0 * (rows.gamma * rows.norms[i] * rows.max_norm + rows.absolute);
        self.next_prune = 4 * k + 64;
        self.k = k;
    }

    /// Feeds row i's similarities to columns `col0..col0 + block.len()`.
    pub fn feed(&mut self, block: &[f32], col0: usize, i: usize, groups: Option<&[u32]>) {
        let mut from = 0;
        while let Some(o) = next_at_least(block, from, self.floor) {
            let j = col0 + o;
            if !same_sample(i, j, groups) {
                self.buf.push((block[o], j as u32));
                if self.buf.len() >= self.next_prune {
                    self.prune();
                    // Many candidates may stay within the margin of the k-th (near-duplicate
                    // rows): prune again only when the buffer has doubled, so pruning stays
                    // linear.
                    self.next_prune = self.next_prune.max(2 * self.buf.len());
                }
            }
            from = o + 1;
        }
    }

    /// Raises the floor to the k-th best so far minus the margin and drops what is below.
    fn prune(&mut self) {
        let k = self.k;
        if k == 0 || self.buf.len() < k {
            return;
        }
        let (_, kth, _) = self
            .buf
            .select_nth_unstable_by(k - 1, |a, b| total_key(b.0).cmp(&total_key(a.0)));
        let t = kth.0 as f64 - self.margin;
        let mut low = t as f32;
        if low as f64 > t {
            low = low.next_down();
        }
        self.floor = self.floor.max(low);
        let floor = self.floor;
        self.buf.retain(|p| p.0 >= floor);
    }
}

/// The first index at or after `from` whose value is at least `floor` (a numeric comparison:
/// −0 counts as +0, NaN never qualifies). This scan reads every similarity of the search, n²
/// in all, so it runs 16 lanes at a time where the processor has AVX-512.
fn next_at_least(v: &[f32], from: usize, floor: f32) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the processor has AVX-512F (checked just above).
        return unsafe { next_at_least_avx512(v, from, floor) };
    }
    let mut p = from;
    while p + 8 <= v.len() {
        let c: &[f32; 8] = v[p..p + 8].try_into().expect("8 values");
        if c.iter().fold(false, |any, &x| any | (x >= floor)) {
            break;
        }
        p += 8;
    }
    (p..v.len()).find(|&o| v[o] >= floor)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn next_at_least_avx512(v: &[f32], from: usize, floor: f32) -> Option<usize> {
    use std::arch::x86_64::{_CMP_GE_OQ, _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_set1_ps};
    let f = _mm512_set1_ps(floor);
    let mut p = from;
    while p + 16 <= v.len() {
        // SAFETY: p + 16 ≤ v.len(): the 16 values read are inside `v`.
        let x = unsafe { _mm512_loadu_ps(v.as_ptr().add(p)) };
        let m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, f);
        if m != 0 {
            return Some(p + m.trailing_zeros() as usize);
        }
        p += 16;
    }
    (p..v.len()).find(|&o| v[o] >= floor)
}

/// Row i's exact neighbours from its proposal: the candidates rescored canonically, ordered,
/// and the tie at the k boundary read off.
fn finish(rows: &Rows, i: usize, s: &mut Scratch) -> RowNeighbours {
    let Scratch {
        proposal,
        cand,
        xi,
        xj,
    } = s;
    let k = proposal.k;
    proposal.prune();
    cand.clear();
    let xi = rows.row(i, xi);
    cand.extend(
        proposal
            .buf
            .iter()
            .map(|&(_, j)| (dot_f64(xi, rows.row(j as usize, xj)), j)),
    );
    cand.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let take = k.min(cand.len());
    let top = cand[..take].to_vec();
    let tie = (take == k && k > 0 && cand.len() > k && cand[k].0 == cand[k - 1].0).then(|| {
        let kth = cand[k - 1].0;
        let mut sure: Vec<u32> = cand.iter().filter(|c| c.0 > kth).map(|c| c.1).collect();
        let mut group: Vec<u32> = cand.iter().filter(|c| c.0 == kth).map(|c| c.1).collect();
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
    s.proposal.start(rows, i, k);
    s.proposal.feed(approx, 0, i, groups);
    finish(rows, i, s)
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

/// The graph for `k2` ≤ k read off the graph for k (docs/design.md §13), equal to a search for
/// `k2`: the first `k2` of each ordered list with their similarities, and the ties at `k2`.
/// The samples as similar as the `k2`-th form a run of the list; when the run reaches the
/// list's end, the tie stored at k (all samples of that similarity) or its absence (none
/// beyond) completes it.
pub fn truncate(knn: &Knn, ties: &Ties, k2: usize) -> (Knn, Ties) {
    let k = knn.k;
    assert!(0 < k2 && k2 <= k, "k = {k2} from a graph for {k}");
    let n = knn.ordered.len() / k.max(1);
    let mut ordered = Vec::with_capacity(n * k2);
    let mut sims = Vec::with_capacity(n * k2);
    let mut rows = Vec::new();
    let sorted = |v: &[u32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    for i in 0..n {
        let (o, s) = (
            &knn.ordered[i * k..(i + 1) * k],
            &knn.sims[i * k..(i + 1) * k],
        );
        ordered.extend_from_slice(&o[..k2]);
        sims.extend_from_slice(&s[..k2]);
        if k2 == k {
            rows.extend(ties.row(i).cloned());
            continue;
        }
        let v = s[k2 - 1];
        if s[k2] != v {
            continue;
        }
        let first = s.iter().position(|&x| x == v).expect("k2 - 1 is one");
        let last = s.iter().rposition(|&x| x == v).expect("k2 - 1 is one");
        let group = match ties.row(i) {
            Some(t) if last == k - 1 => t.group.clone(),
            _ => sorted(&o[first..=last]),
        };
        rows.push(TieRow {
            row: i as u32,
            sure: sorted(&o[..first]),
            group,
            picks: k2 - first,
        });
    }
    (Knn::new(k2, ordered, sims), Ties { rows })
}

/// Rows per task of the tiled search, and columns per block: one block of similarities
/// (256 × 512 f32, 512 KiB) stays in cache while its rows' proposals read it, and each block
/// of columns is read once per 256 rows (at n = 1,000,000 the columns do not fit any cache:
/// 64-row tasks ran the AMX product at 296 GFLOP/s per core at d = 256, 256-row tasks at 497).
const TILE_ROWS: usize = 256;
const TILE_COLS: usize = 512;

/// Rows per task: where a block of rows of a split search ([`knn_rows`]) may start.
pub const ROW_TILE: usize = TILE_ROWS;

/// The exact k-nearest-neighbour graph of `x` without an n × n matrix, proposals from the
/// fastest product this machine has ([`Gemm::best`]).
pub fn knn_tiled(
    x: &Array2<f32>,
    k: usize,
    groups: Option<&[u32]>,
    progress: &(dyn Fn(usize) + Sync),
) -> (Knn, Ties) {
    knn_tiled_with(x, k, groups, Gemm::best(), progress)
}

/// The exact k-nearest-neighbour graph of `x` without an n × n matrix: each task takes 256 rows
/// and walks all rows in blocks of 512 (one single-threaded product per block, tasks in
/// parallel), feeding every row's [`Proposal`]; then each row is finished canonically. The
/// product is `gemm`'s (the result does not depend on it). Memory beyond the features and the
/// result: 512 KiB of similarities and the proposals per thread, plus two bf16 copies of the
/// rows for AMX. `progress` is called with the number of rows done so far.
pub fn knn_tiled_with(
    x: &Array2<f32>,
    k: usize,
    groups: Option<&[u32]>,
    gemm: Gemm,
    progress: &(dyn Fn(usize) + Sync),
) -> (Knn, Ties) {
    let xs = x.as_standard_layout();
    let rows = knn_rows(
        Source::of(xs.view()),
        k,
        groups,
        gemm,
        0..xs.nrows(),
        progress,
        &|| false,
    );
    assemble(k, rows.expect("never stopped"))
}

/// The neighbours of rows `rows` only (each against all rows of `x`), as
/// [`knn_tiled_with`] finds them: a block of a graph that several workers share
/// ([`encode_part`]). `rows.start` is a multiple of [`ROW_TILE`]. Once `stop` returns true,
/// tasks not yet started are skipped and the result is `None`. 16-bit rows are widened a tile
/// at a time: for the AMX product once, as they are rounded to bf16; for the f32 product, each
/// task's rows once and each block of columns as the task reaches it.
pub fn knn_rows(
    x: Source<'_>,
    k: usize,
    groups: Option<&[u32]>,
    gemm: Gemm,
    rows_wanted: std::ops::Range<usize>,
    progress: &(dyn Fn(usize) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Option<Vec<RowNeighbours>> {
    let (n, d) = (x.n(), x.d());
    assert!(
        rows_wanted.start.is_multiple_of(TILE_ROWS) && rows_wanted.end <= n,
        "rows {rows_wanted:?} of {n}"
    );
    let mut rows = Rows::of(x);
    // bf16 keeps f32's exponent range, but a product near f32::MAX could overflow the tiles'
    // f32 sums: such rows take the f32 product.
    let tiles = (gemm == Gemm::Bf16Amx && rows.max_norm < 1e18)
        .then(|| Bf16Tiles::pack_rows(x))
        .flatten();
    if let Some(t) = &tiles {
        let absolute = t.absolute(rows.max_norm);
        rows = rows.with_bound(t.gamma(), absolute);
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    // Rows per task. The f32 product widens 16-bit columns once per task, so its tasks over
    // 16-bit rows are four tiles tall: a quarter of the widening per product.
    let task = match (&tiles, x) {
        (None, Source::Half(_)) => 4 * TILE_ROWS,
        _ => TILE_ROWS,
    };
    let tasks = rows_wanted.len().div_ceil(task);
    let tiles_out: Option<Vec<Vec<RowNeighbours>>> = (0..tasks)
        .into_par_iter()
        .map_init(
            || {
                let widened = (Vec::new(), Vec::new());
                (vec![0f32; task * TILE_COLS], Vec::<Scratch>::new(), widened)
            },
            |(buf, scratch, (wa, wb)), t| {
                if stop() {
                    return None;
                }
                let r0 = rows_wanted.start + t * task;
                let r1 = (r0 + task).min(rows_wanted.end);
                scratch.resize_with(r1 - r0, Scratch::default);
                for (o, sc) in scratch.iter_mut().enumerate() {
                    sc.proposal.start(&rows, r0 + o, k);
                }
                if let Some(t) = &tiles {
                    t.begin();
                }
                // The f32 product's left operand: the task's rows, widened once.
                let task_rows = match tiles {
                    None => x.rows(r0, r1, wa),
                    Some(_) => &[],
                };
                for c0 in (0..n).step_by(TILE_COLS) {
                    let c1 = (c0 + TILE_COLS).min(n);
                    let w = c1 - c0;
                    let ldc = match &tiles {
                        Some(t) => {
                            let ldc = w.div_ceil(32) * 32;
                            t.block(r0, r1 - r0, c0, w, buf, ldc);
                            ldc
                        }
                        None => {
                            faer::linalg::matmul::matmul(
                                MatMut::from_row_major_slice_mut(
                                    &mut buf[..(r1 - r0) * w],
                                    r1 - r0,
                                    w,
                                ),
                                Accum::Replace,
                                MatRef::from_row_major_slice(task_rows, r1 - r0, d),
                                MatRef::from_row_major_slice(x.rows(c0, c1, wb), w, d).transpose(),
                                1.0f32,
                                Par::Seq,
                            );
                            w
                        }
                    };
                    for (o, sc) in scratch.iter_mut().enumerate() {
                        sc.proposal
                            .feed(&buf[o * ldc..o * ldc + w], c0, r0 + o, groups);
                    }
                }
                if let Some(t) = &tiles {
                    t.end();
                }
                let out: Vec<RowNeighbours> = scratch
                    .iter_mut()
                    .enumerate()
                    .map(|(o, sc)| finish(&rows, r0 + o, sc))
                    .collect();
                let so_far = done.fetch_add(r1 - r0, std::sync::atomic::Ordering::Relaxed);
                progress(so_far + r1 - r0);
                Some(out)
            },
        )
        .collect::<Option<_>>();
    tiles_out.map(|t| t.into_iter().flatten().collect())
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

/// The stored form of a graph: magic, n, k, the ordered lists (u32), their similarities
/// (f64), the tied rows, and a BLAKE3 checksum of all that; little-endian throughout.
pub fn encode(knn: &Knn, ties: &Ties) -> Vec<u8> {
    let n = knn.ordered.len() / knn.k.max(1);
    framed(MAGIC, &[n, knn.k], knn, ties)
}

const MAGIC: &[u8; 8] = b"PRHKNN1\0";
const PART_MAGIC: &[u8; 8] = b"PRHKNNP\0";

/// The stored form of a part of an n-row graph: the neighbours of rows `rows` (in order, as
/// [`knn_rows`] returns them), framed as [`encode`]'s form with the part's magic, n, k and
/// its first and end row; tied rows keep their row numbers.
pub fn encode_part(
    n: usize,
    k: usize,
    rows: std::ops::Range<usize>,
    part: Vec<RowNeighbours>,
) -> Vec<u8> {
    assert_eq!(part.len(), rows.len(), "one result per row");
    let (knn, ties) = assemble(k, part);
    framed(PART_MAGIC, &[n, k, rows.start, rows.end], &knn, &ties)
}

/// `magic`, the `header` numbers (u64 each), the lists, similarities and tied rows, and a
/// BLAKE3 checksum of all that.
fn framed(magic: &[u8; 8], header: &[usize], knn: &Knn, ties: &Ties) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * (1 + header.len()) + knn.ordered.len() * 12 + 32);
    out.extend_from_slice(magic);
    for &v in header {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    knn.ordered
        .iter()
        .for_each(|j| out.extend_from_slice(&j.to_le_bytes()));
    knn.sims
        .iter()
        .for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
    out.extend_from_slice(&(ties.rows.len() as u64).to_le_bytes());
    let put = |v: u32, out: &mut Vec<u8>| out.extend_from_slice(&v.to_le_bytes());
    for t in &ties.rows {
        put(t.row, &mut out);
        put(t.picks as u32, &mut out);
        put(t.sure.len() as u32, &mut out);
        t.sure.iter().for_each(|&j| put(j, &mut out));
        put(t.group.len() as u32, &mut out);
        t.group.iter().for_each(|&j| put(j, &mut out));
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Reads a part back, for an n-row graph, k, and the rows the part should cover; `None` when
/// it is damaged or of another graph or rows.
pub fn decode_part(
    bytes: &[u8],
    n: usize,
    k: usize,
    rows: std::ops::Range<usize>,
) -> Option<(Knn, Ties)> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = Reader { b: body };
    if r.take(8)? != PART_MAGIC {
        return None;
    }
    let dims = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    if dims != [n as u64, k as u64, rows.start as u64, rows.end as u64] {
        return None;
    }
    let (knn, ties) = read_lists(&mut r, rows.len(), k, n)?;
    ties.rows
        .iter()
        .all(|t| rows.contains(&(t.row as usize)))
        .then_some((knn, ties))
}

/// The graph of n rows from parts that cover 0..n in order, each read by [`decode_part`]: the
/// lists one after another, as one search would have assembled them.
pub fn merge_parts(k: usize, parts: Vec<(Knn, Ties)>) -> (Knn, Ties) {
    let mut ordered = Vec::new();
    let mut sims = Vec::new();
    let mut rows = Vec::new();
    for (knn, ties) in parts {
        ordered.extend(knn.ordered);
        sims.extend(knn.sims);
        rows.extend(ties.rows);
    }
    (Knn::new(k, ordered, sims), Ties { rows })
}

/// Reads [`encode`]'s form back, for n samples and k; `None` when it is damaged (checksum,
/// sizes, an index out of range) or of another n or k.
pub fn decode(bytes: &[u8], n: usize, k: usize) -> Option<(Knn, Ties)> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = Reader { b: body };
    if r.take(8)? != MAGIC || r.u64()? != n as u64 || r.u64()? != k as u64 {
        return None;
    }
    read_lists(&mut r, n, k, n)
}

/// The lists of `rows` rows (neighbour indices below n), their similarities and tied rows,
/// to the end of the reader.
fn read_lists(r: &mut Reader, rows_n: usize, k: usize, n: usize) -> Option<(Knn, Ties)> {
    let ordered: Vec<u32> = (0..rows_n * k).map(|_| r.u32()).collect::<Option<_>>()?;
    let sims: Vec<f64> = (0..rows_n * k)
        .map(|_| {
            r.take(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        })
        .collect::<Option<_>>()?;
    let count = r.u64()? as usize;
    let mut rows = Vec::with_capacity(count.min(rows_n));
    for _ in 0..count {
        let (row, picks) = (r.u32()?, r.u32()? as usize);
        let sl = r.u32()? as usize;
        let sure: Vec<u32> = (0..sl).map(|_| r.u32()).collect::<Option<_>>()?;
        let gl = r.u32()? as usize;
        let group: Vec<u32> = (0..gl).map(|_| r.u32()).collect::<Option<_>>()?;
        rows.push(TieRow {
            row,
            sure,
            group,
            picks,
        });
    }
    let in_range = |v: &[u32]| v.iter().all(|&j| (j as usize) < n);
    let ok = r.b.is_empty()
        && in_range(&ordered)
        && rows
            .iter()
            .all(|t| (t.row as usize) < n && in_range(&t.sure) && in_range(&t.group));
    ok.then(|| (Knn::new(k, ordered, sims), Ties { rows }))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.b.split_at_checked(len)?;
        self.b = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector scan finds what a plain scan finds, from any start, on any length, with
    /// signed zeros (−0 is at least +0) and NaN (never at least anything).
    #[test]
    fn the_floor_scan_finds_the_first_value_at_or_above_the_floor() {
        let mut r = crate::rng::Rng::new(23);
        for len in [0usize, 1, 15, 16, 17, 40, 333] {
            let v: Vec<f32> = (0..len)
                .map(|t| match t % 13 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f32::NAN,
                    _ => r.normal() as f32,
                })
                .collect();
            for floor in [f32::NEG_INFINITY, -1.0, -0.0, 0.0, 0.5, 2.5, f32::INFINITY] {
                for from in [0, 1, 7, 16, len / 2, len] {
                    let want = (from.min(len)..len).find(|&o| v[o] >= floor);
                    assert_eq!(
                        next_at_least(&v, from.min(len), floor),
                        want,
                        "{len} {floor} {from}"
                    );
                }
            }
        }
    }

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
                let mut naive: Vec<u32> = (0..n as u32).filter(|&j| j as usize != i).collect();
                naive.sort_by(|&a, &b| {
                    approx[b as usize]
                        .total_cmp(&approx[a as usize])
                        .then(a.cmp(&b))
                });
                naive.truncate(k);
                flipped += usize::from(naive != want.iter().map(|p| p.1).collect::<Vec<_>>());
                let got = refine_row(&rows, &approx, i, k, None, &mut Scratch::default());
                assert_eq!(got.top, want, "row {i}, trial {trial}");
                // Streamed in blocks of 37 columns (the floor rising and pruning on the way):
                // the same neighbours.
                let mut sc = Scratch::default();
                sc.proposal.start(&rows, i, k);
                for (b, block) in approx.chunks(37).enumerate() {
                    sc.proposal.feed(block, b * 37, i, None);
                }
                assert_eq!(finish(&rows, i, &mut sc).top, want, "row {i}, blocks");
            }
        }
        // Without the refinement the f32 proposal alone is often wrong on these rows.
        assert!(
            flipped > 20,
            "only {flipped} proposals differed: the test is too easy"
        );
    }

    /// Against a full sort of the canonical similarities: lists, ties (sure, group, picks),
    /// self and copies of one sample (`groups`) excluded, on rows of few distinct values
    /// (exact ties), zeros of both signs and all-zero rows.
    #[test]
    fn a_refined_row_equals_a_full_canonical_sort_with_ties_zeros_and_groups() {
        let mut r = crate::rng::Rng::new(5);
        let (mut tied, mut grouped) = (0, 0);
        for trial in 0..40 {
            let (n, d) = (2 + trial * 7 % 150, 3);
            let x: Vec<f32> = (0..n * d)
                .map(|_| match (r.normal() * 2.0) as i64 {
                    0 => 0.0,
                    1 => -0.0,
                    v => v as f32 / 4.0,
                })
                .collect();
            let rows = Rows::new(&x, n, d);
            let labels: Vec<u32> = (0..n as u32).map(|j| j / 3).collect();
            let i = trial % n;
            // Any f32 rounding of the canonical values is a proposal within the bound.
            let approx: Vec<f32> = (0..n).map(|j| rows.sim(i, j) as f32).collect();
            for k in [1, 5, 10, 17] {
                for groups in [None, Some(labels.as_slice())] {
                    let mut want: Vec<(f64, u32)> = (0..n)
                        .filter(|&j| !same_sample(i, j, groups))
                        .map(|j| (rows.sim(i, j), j as u32))
                        .collect();
                    if want.len() <= k {
                        continue;
                    }
                    want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    let got = refine_row(&rows, &approx, i, k, groups, &mut Scratch::default());
                    let what = format!("trial {trial}, n {n}, k {k}, groups {}", groups.is_some());
                    assert_eq!(got.top, want[..k], "{what}");
                    let kth = want[k - 1].0;
                    let ids = |keep: &dyn Fn(f64) -> bool| {
                        let mut v: Vec<u32> =
                            want.iter().filter(|c| keep(c.0)).map(|c| c.1).collect();
                        v.sort_unstable();
                        v
                    };
                    match got.tie {
                        None => assert!(want[k].0 != kth, "{what}: a tie went unreported"),
                        Some(t) => {
                            let sure = ids(&|s| s > kth);
                            assert_eq!(t.row, i as u32);
                            assert_eq!(t.picks, k - sure.len(), "{what}");
                            assert_eq!(t.sure, sure, "{what}");
                            assert_eq!(t.group, ids(&|s| s == kth), "{what}");
                            tied += 1;
                        }
                    }
                    grouped += usize::from(groups.is_some());
                }
            }
        }
        assert!(
            tied > 20 && grouped > 20,
            "{tied} tied, {grouped} grouped cases"
        );
    }

    /// The dense path, the tiled path with f32 proposals and the tiled path with AMX bf16
    /// proposals return the same lists, similarities and ties, across tile edges (256-row
    /// tasks, 512-column blocks, 32-row tile steps), on near-duplicate rows (many candidates
    /// within bf16's margin, few within f32's), Gaussian rows, small-integer rows (exact ties)
    /// and copies.
    #[test]
    fn the_graph_is_the_same_whichever_product_proposes_candidates() {
        let mut r = crate::rng::Rng::new(13);
        let (n, d, k) = (4_200, 40, 10);
        let base: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
        let near = ndarray::Array2::from_shape_fn((n, d), |(i, j)| {
            base[j] + [0.3, 0.05, 3e-3][i % 3] * r.normal() as f32
        });
        let ints = ndarray::Array2::from_shape_fn((n, d), |_| r.below(3) as f32);
        let gauss = ndarray::Array2::from_shape_fn((n, d), |_| r.normal() as f32);
        let groups: Vec<u32> = (0..n as u32).map(|i| i / 3).collect();
        let gemms = [Gemm::F32, Gemm::Bf16Amx];
        let mut in_margin = 0usize;
        for (x, g) in [
            (&near, None),
            (&gauss, None),
            (&ints, None),
            (&near, Some(groups.as_slice())),
        ] {
            let gram = super::super::derived::gram(x);
            let (want, want_ties) = knn_from_gram(x, &gram, k, g);
            for gemm in gemms {
                let (got, got_ties) = knn_tiled_with(x, k, g, gemm, &|_| {});
                let differ: Vec<usize> = (0..n)
                    .filter(|&i| {
                        let r = i * k..(i + 1) * k;
                        got.ordered[r.clone()] != want.ordered[r.clone()]
                            || got.sims[r.clone()] != want.sims[r]
                    })
                    .collect();
                assert!(
                    differ.is_empty(),
                    "{gemm:?}: {} rows differ, first {:?}",
                    differ.len(),
                    differ.first()
                );
                assert!(got_ties.rows == want_ties.rows, "{gemm:?}: ties differ");
            }
            // How many rows' (k+1)-th canonical neighbour is within bf16's bound of the k-th
            // but not f32's: the data exercise the wider margin.
            let xs = x.as_standard_layout();
            let rows = Rows::new(xs.as_slice().unwrap(), n, d);
            let Some(tiles) = Bf16Tiles::pack(xs.as_slice().unwrap(), n, d) else {
                continue;
            };
            let (kp, _) = knn_from_gram(x, &gram, k + 1, g);
            for i in 0..n {
                let gap = kp.sims[i * (k + 1) + k - 1] - kp.sims[i * (k + 1) + k];
                let scale = rows.norms[i] * rows.max_norm;
                in_margin += usize::from(gap > rows.gamma * scale && gap < tiles.gamma() * scale);
            }
        }
        assert!(in_margin > 1_000, "{in_margin} rows tell the margins apart");
        if !super::super::amx::amx_ready() {
            eprintln!("no AMX-BF16 here: Gemm::Bf16Amx fell back to f32 in this test");
        }
    }

    #[test]
    fn a_graph_for_k_gives_every_smaller_k_exactly() {
        let mut r = crate::rng::Rng::new(5);
        // Small integers: ties at every rank, runs reaching the list's end and beyond it.
        for (n, d, levels) in [(90, 2, 2), (120, 3, 3), (64, 4, 5)] {
            let x = ndarray::Array2::from_shape_fn((n, d), |_| r.below(levels) as f32 + 0.5);
            let (knn, ties) = knn_tiled(&x, 12, None, &|_| {});
            let mut tied = 0;
            for k2 in 1..=12 {
                let (a, at) = truncate(&knn, &ties, k2);
                let (b, bt) = knn_tiled(&x, k2, None, &|_| {});
                assert_eq!((&a.ordered, &a.sims), (&b.ordered, &b.sims), "n {n} k {k2}");
                assert_eq!(at.rows, bt.rows, "n {n} k {k2}");
                tied += bt.rows.len();
            }
            assert!(
                tied > 100,
                "{tied} tied rows: the data did not tie enough to test"
            );
        }
    }

    /// A graph searched in blocks of rows, each stored as a part and read back, merges into the
    /// graph one search gives (ties included); a part read for other rows, another n or k, or
    /// damaged is refused.
    #[test]
    fn parts_of_a_graph_merge_into_the_whole_and_damage_is_refused() {
        let mut r = crate::rng::Rng::new(17);
        let (n, k) = (700, 6);
        let x = ndarray::Array2::from_shape_fn((n, 3), |_| r.below(3) as f32 + 0.5);
        let (want, want_ties) = knn_tiled(&x, k, None, &|_| {});
        assert!(!want_ties.rows.is_empty());
        let blocks = [(0, 256), (256, 512), (512, 700)];
        let stored: Vec<Vec<u8>> = blocks
            .iter()
            .map(|&(a, b)| {
                let part = knn_rows(
                    Source::of(x.view()),
                    k,
                    None,
                    Gemm::best(),
                    a..b,
                    &|_| {},
                    &|| false,
                );
                encode_part(n, k, a..b, part.unwrap())
            })
            .collect();
        let read: Vec<(Knn, Ties)> = blocks
            .iter()
            .zip(&stored)
            .map(|(&(a, b), s)| decode_part(s, n, k, a..b).expect("reads back"))
            .collect();
        let stopped = knn_rows(
            Source::of(x.view()),
            k,
            None,
            Gemm::best(),
            0..n,
            &|_| {},
            &|| true,
        );
        assert!(stopped.is_none(), "a stopped search returns nothing");
        let (got, got_ties) = merge_parts(k, read);
        assert_eq!((got.ordered, got.sims), (want.ordered, want.sims));
        assert_eq!(got_ties.rows, want_ties.rows);
        assert!(decode_part(&stored[1], n, k, 128..193).is_none());
        assert!(decode_part(&stored[1], n + 1, k, 128..192).is_none());
        assert!(decode_part(&stored[1], n, k + 1, 128..192).is_none());
        assert!(
            decode(&stored[0], 128, k).is_none(),
            "a part is not a graph"
        );
        let mut bad = stored[2].clone();
        bad[60] ^= 1;
        assert!(decode_part(&bad, n, k, 192..300).is_none());
    }

    #[test]
    fn a_stored_graph_reads_back_and_damage_is_refused() {
        let mut r = crate::rng::Rng::new(3);
        // Width-3 small integers: many tied rows to carry.
        let x = ndarray::Array2::from_shape_fn((120, 3), |_| [0.0f32, 1.0, 2.0][r.below(3)] + 0.5);
        let (knn, ties) = knn_tiled(&x, 5, None, &|_| {});
        assert!(!ties.rows.is_empty());
        let bytes = encode(&knn, &ties);
        let (k2, t2) = decode(&bytes, 120, 5).expect("reads back");
        assert_eq!(
            (k2.ordered, k2.sims),
            (knn.ordered.clone(), knn.sims.clone())
        );
        assert_eq!(t2.rows, ties.rows);
        assert!(decode(&bytes, 121, 5).is_none() && decode(&bytes, 120, 4).is_none());
        for at in [0, 30, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(
                decode(&bad, 120, 5).is_none(),
                "a flipped byte at {at} went unnoticed"
            );
        }
        assert!(decode(&bytes[..bytes.len() - 1], 120, 5).is_none());
    }
}
