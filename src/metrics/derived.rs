//! Data derived once per prepared representation and shared by every pair it meets
//! (docs/design.md §7): the Gram matrix, ordered k-nearest-neighbour lists, kernel statistics for the
//! CKA family, top singular vectors for SVCCA, RDM ranks for RSA. Each piece is computed on
//! first use and memoised, so a layer pair then costs O(n·k) for kNN metrics and O(n²) for
//! kernel metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use faer::{Accum, MatMut, MatRef, Par};
use ndarray::Array2;
use rayon::prelude::*;

use super::graph;
use super::half::HalfRows;
use super::prep::standard;
use crate::error::{Error, Result};
use crate::store::Blob;

/// Ordered neighbour lists: row i holds i's k nearest neighbours by inner product, self
/// excluded, most similar first; ties broken by lower index.
#[derive(Debug, Clone)]
pub struct Knn {
    /// Neighbours per row.
    pub k: usize,
    /// n × k, row-major, ordered.
    pub ordered: Vec<u32>,
    /// The same lists sorted by index, for O(log k) membership tests.
    pub sorted: Vec<u32>,
    /// The canonical similarity of each neighbour in `ordered` (docs/design.md §13).
    pub sims: Vec<f64>,
}

impl Knn {
    /// Lists from ordered neighbours and their similarities (n × k each, row-major).
    pub fn new(k: usize, ordered: Vec<u32>, sims: Vec<f64>) -> Self {
        let mut sorted = ordered.clone();
        sorted
            .par_chunks_mut(k.max(1))
            .for_each(|c| c.sort_unstable());
        Knn {
            k,
            ordered,
            sorted,
            sims,
        }
    }

    /// Row i's similarities, in the order of [`Knn::row`].
    pub fn row_sims(&self, i: usize) -> &[f64] {
        &self.sims[i * self.k..(i + 1) * self.k]
    }

    /// Row i, ordered by similarity.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ordered[i * self.k..(i + 1) * self.k]
    }
    /// Row i, sorted by index.
    pub fn set(&self, i: usize) -> &[u32] {
        &self.sorted[i * self.k..(i + 1) * self.k]
    }
    /// True when j is among i's neighbours.
    pub fn contains(&self, i: usize, j: u32) -> bool {
        self.set(i).binary_search(&j).is_ok()
    }
}

/// One row whose k-th and (k+1)-th neighbours are equally similar: under random tie-breaking
/// its neighbour set is `sure` plus `picks` members drawn uniformly from `group`.
#[derive(Debug, Clone, PartialEq)]
pub struct TieRow {
    /// The row (sample index).
    pub row: u32,
    /// Neighbours strictly more similar than the k-th, sorted by index.
    pub sure: Vec<u32>,
    /// Every other sample exactly as similar as the k-th, sorted by index.
    pub group: Vec<u32>,
    /// k − |sure|: how many of `group` are neighbours (fewer than |group|).
    pub picks: usize,
}

impl TieRow {
    /// Probability that j is a neighbour of this row under uniformly random tie-breaking.
    pub fn p(&self, j: u32) -> f64 {
        if self.sure.binary_search(&j).is_ok() {
            1.0
        } else if self.group.binary_search(&j).is_ok() {
            self.picks as f64 / self.group.len() as f64
        } else {
            0.0
        }
    }
}

/// The rows of a representation with a tie at the k boundary (docs/design.md §4, ties), by row.
#[derive(Debug, Clone, Default)]
pub struct Ties {
    /// The tied rows, by row.
    pub rows: Vec<TieRow>,
}

impl Ties {
    /// The tie structure of row i, if it has one.
    pub fn row(&self, i: usize) -> Option<&TieRow> {
        self.rows
            .binary_search_by_key(&(i as u32), |r| r.row)
            .ok()
            .map(|p| &self.rows[p])
    }

    /// Row i's neighbours with the probability of each (1 for an untied row's list).
    pub fn candidates<'a>(&'a self, knn: &'a Knn, i: usize) -> Vec<(u32, f64)> {
        match self.row(i) {
            None => knn.row(i).iter().map(|&j| (j, 1.0)).collect(),
            Some(t) => {
                let p = t.picks as f64 / t.group.len() as f64;
                t.sure
                    .iter()
                    .map(|&j| (j, 1.0))
                    .chain(t.group.iter().map(|&j| (j, p)))
                    .collect()
            }
        }
    }

    /// Probability that j is among row i's neighbours.
    pub fn p(&self, knn: &Knn, i: usize, j: u32) -> f64 {
        match self.row(i) {
            None => f64::from(u8::from(knn.contains(i, j))),
            Some(t) => t.p(j),
        }
    }
}

/// Sums of a kernel matrix used by both HSIC estimators.
#[derive(Debug, Clone)]
pub struct KernelStats {
    /// The n × n kernel, row-major; `None` for the linear kernel in feature space
    /// ([`Derived::linear_features`]), where no n × n matrix exists.
    pub mat: Option<Arc<Vec<f32>>>,
    /// Each row's sum.
    pub row_sums: Vec<f64>,
    /// The sum of all entries.
    pub total: f64,
    /// The diagonal.
    pub diag: Vec<f64>,
    /// ⟨K, K⟩_F, which every CKA cell of this kernel needs.
    pub self_dot: f64,
}

/// Top singular vectors for SVCCA, or why they could not be computed.
pub type SvdBasis = Result<Array2<f64>, String>;

/// Neighbour lists with their ties, for one k.
pub type Graph = (Arc<Knn>, Arc<Ties>);

/// Where a representation's rows come from.
enum Source {
    /// Prepared features held by this value: as f32, or as 16-bit values (widened to f32 on a
    /// tile of the neighbour search, and whole only for a metric that reads them otherwise).
    Features(Option<HalfRows>),
    /// Rows of another representation: row i is row `idx[i]` of `base`. When `idx` is a
    /// permutation, `inverse` is set and every derived piece is re-indexed from the base's
    /// instead of recomputed (no new Gram matrix, neighbour search or SVD).
    Reindexed {
        base: Arc<Derived>,
        idx: Arc<Vec<u32>>,
        inverse: Option<Arc<Vec<u32>>>,
    },
}

/// What CCA needs of one representation X: its column means and Cxx^(−1/2), where Cxx is
/// the covariance (X − 1·meanᵀ)ᵀ(X − 1·meanᵀ)/(n − 1) plus 10⁻⁶·I with every eigenvalue kept
/// at least 10⁻⁶ (as Aristotelian's `cca` and `pwcca`). The canonical correlations of X and Y
/// are the singular values of Cxx^(−1/2)·XcᵀYc·Cyy^(−1/2)/(n − 1).
pub struct CcaBasis {
    /// Column means.
    pub mean: Vec<f64>,
    /// Cxx^(−1/2), d × d.
    pub inv_sqrt: faer::Mat<f64>,
}

/// A prepared representation and its memoised derived data.
pub struct Derived {
    n: usize,
    source: Source,
    x: OnceLock<Arc<Array2<f32>>>,
    dense: bool,
    budget: usize,
    gram: OnceLock<Arc<Vec<f32>>>,
    knn: Mutex<HashMap<usize, Graph>>,
    kernels: Mutex<HashMap<u64, Arc<KernelStats>>>,
    svd: Mutex<HashMap<usize, Arc<SvdBasis>>>,
    rdm_ranks: Mutex<Option<Arc<Vec<f64>>>>,
    procrustes: Mutex<Option<Arc<faer::Mat<f64>>>>,
    cca_white: Mutex<Option<Arc<CcaBasis>>>,
}

impl Derived {
    fn with_source(n: usize, dense: bool, budget: usize, source: Source) -> Self {
        Derived {
            n,
            source,
            dense,
            budget,
            x: OnceLock::new(),
            gram: OnceLock::new(),
            knn: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            svd: Mutex::new(HashMap::new()),
            rdm_ranks: Mutex::new(None),
            procrustes: Mutex::new(None),
            cca_white: Mutex::new(None),
        }
    }

    /// Derives from prepared features: computes the Gram matrix now, everything else lazily.
    pub fn new(x: Array2<f32>) -> Self {
        let x = standard(x);
        let d = Derived::with_source(x.nrows(), true, usize::MAX, Source::Features(None));
        let _ = d.gram.set(Arc::new(gram(&x)));
        let _ = d.x.set(Arc::new(x));
        d
    }

    /// Derives from prepared features within a memory budget: with the n × n Gram matrix
    /// ([`Derived::new`]) when [`dense_fits`], else without any n × n matrix (the large-n
    /// path: tiled neighbour search, kernel metrics in feature space). Both give the same
    /// neighbours, ties and scores (docs/design.md §13).
    pub fn within(x: Array2<f32>, budget: usize) -> Self {
        if dense_fits(x.nrows(), budget) {
            return Derived::new(x);
        }
        let d = Derived::with_source(x.nrows(), false, budget, Source::Features(None));
        let _ = d.x.set(Arc::new(standard(x)));
        d
    }

    /// A stored layer (its hash verified here), prepared with `threshold` and `normalize` and
    /// derived within `budget`. A layer stored as f16 or bf16 that takes the large-n path is
    /// held at 16 bits ([`Derived::within_half`], read in place from the store); any other is
    /// prepared as f32, in place.
    pub fn from_blob(
        blob: Blob,
        threshold: Option<f32>,
        normalize: bool,
        budget: usize,
    ) -> Result<Self> {
        blob.verify()?;
        if HalfRows::holds(blob.dtype) && !dense_fits(blob.n, budget) {
            let rows = HalfRows::from_blob(blob, threshold, normalize)?;
            return Ok(Derived::within_half(rows, budget));
        }
        let x = crate::matrix::decode_contiguous(blob.dtype, blob.n, blob.d, blob.elements());
        drop(blob);
        let x = super::prep::prepare_owned(x, threshold, normalize)?;
        Ok(Derived::within(x, budget))
    }

    /// [`Derived::within`] from prepared rows held at 16 bits: on the large-n path they stay
    /// so, and the neighbour search widens them a tile at a time (the same graph as from the
    /// f32 rows, at half their memory); on the dense path they are widened once.
    pub fn within_half(rows: HalfRows, budget: usize) -> Self {
        if dense_fits(rows.n(), budget) {
            return Derived::new(rows.to_f32());
        }
        Derived::with_source(rows.n(), false, budget, Source::Features(Some(rows)))
    }

    /// True when the prepared features are held as f32 (always, except for 16-bit rows on
    /// the large-n path that no metric has yet needed whole).
    pub fn holds_f32(&self) -> bool {
        self.x.get().is_some()
    }

    /// Values per row.
    pub fn d(&self) -> usize {
        match &self.source {
            Source::Features(Some(h)) => h.d(),
            Source::Features(None) => self.x().ncols(),
            Source::Reindexed { base, .. } => base.d(),
        }
    }

    /// True when this representation holds n × n matrices (the dense path).
    pub fn dense(&self) -> bool {
        self.dense
    }

    /// Refuses, in one line, a metric that needs n × n matrices on the large-n path.
    pub fn require_dense(&self, metric: &str) -> Result<()> {
        if self.dense {
            return Ok(());
        }
        let n = self.n as f64;
        let max = ((self.budget as f64) / 32.0).sqrt().floor();
        let need = 8.0 * n * n;
        let need = if need >= f64::from(1u32 << 30) {
            format!("{:.1} GiB", need / f64::from(1u32 << 30))
        } else {
            format!("{:.0} MiB", (need / f64::from(1u32 << 20)).ceil())
        };
        Err(Error::Unsupported(format!(
            "{metric} at n = {} needs n × n matrices ({need} for two), more than the memory \
             budget of {} MiB allows (n ≤ {max}); it has no exact bounded-memory form",
            self.n,
            self.budget >> 20,
        ))
        .hint(format!(
            "raise --mem-mib to at least {}, or use a metric that runs at any n: the kNN \
             metrics, cknna, linear cka / unbiased_cka, svcca, cca, pwcca, procrustes, linear_r2",
            (32.0 * n * n / f64::from(1u32 << 20)).ceil()
        )))
    }

    /// The representation whose row i is row `idx[i]` of `base`: a permutation of the samples
    /// (for permutation nulls) or a resample with repeats (for the bootstrap). Nothing is
    /// computed until asked for; for a permutation every derived piece is re-indexed from
    /// `base`'s, so a permuted copy costs O(n·k) for kNN metrics and O(n²) for kernels.
    pub fn reindexed(base: &Arc<Derived>, idx: Arc<Vec<u32>>) -> Self {
        let n = idx.len();
        let mut seen = vec![u32::MAX; base.n];
        let mut is_perm = n == base.n;
        for (i, &j) in idx.iter().enumerate() {
            assert!((j as usize) < base.n, "reindex out of range");
            if seen[j as usize] != u32::MAX {
                is_perm = false;
            }
            seen[j as usize] = i as u32;
        }
        let inverse = is_perm.then(|| Arc::new(seen));
        Derived::with_source(
            n,
            base.dense,
            base.budget,
            Source::Reindexed {
                base: base.clone(),
                idx,
                inverse,
            },
        )
    }

    /// Computes now (instead of on first use) what `spec` will need, so a sweep can derive
    /// every representation in parallel before scoring pairs.
    pub fn warm(&self, spec: &super::MetricSpec) {
        use super::Metric;
        if spec.metric.uses_k() {
            self.knn(spec.k);
        }
        if !self.dense && spec.needs_square(self) {
            return; // refused when computed
        }
        match spec.metric {
            Metric::Cka | Metric::UnbiasedCka if !self.dense => {
                self.linear_features();
            }
            Metric::Cka | Metric::UnbiasedCka => {
                self.kernel(spec.kernel);
            }
            Metric::Svcca => {
                self.svcca_basis(spec.cca_dim);
            }
            Metric::Rsa => {
                self.rdm_ranks();
            }
            Metric::Procrustes => {
                self.procrustes_basis();
            }
            Metric::Cca | Metric::Pwcca => {
                self.cca_basis();
            }
            _ => {}
        }
    }

    /// Number of samples.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The prepared features (n × d, standard layout).
    pub fn x(&self) -> &Array2<f32> {
        self.x.get_or_init(|| match &self.source {
            Source::Features(Some(h)) => Arc::new(h.to_f32()),
            Source::Features(None) => unreachable!("f32 features are set at construction"),
            Source::Reindexed { base, idx, .. } => {
                let bx = base.x();
                Arc::new(bx.select(
                    ndarray::Axis(0),
                    &idx.iter().map(|&i| i as usize).collect::<Vec<_>>(),
                ))
            }
        })
    }

    /// The Gram matrix X Xᵀ (n × n, row-major, f32).
    pub fn gram(&self) -> &[f32] {
        self.gram.get_or_init(|| match &self.source {
            Source::Features(_) => {
                unreachable!("the Gram matrix is set at construction, or never (large n)")
            }
            Source::Reindexed { base, idx, .. } => {
                Arc::new(gather_square(base.gram(), base.n, idx))
            }
        })
    }

    /// The permutation (row i is base row idx[i]) and its inverse, when this is a permuted copy.
    fn permutation(&self) -> Option<(&Arc<Derived>, &[u32], &[u32])> {
        match &self.source {
            Source::Reindexed {
                base,
                idx,
                inverse: Some(inv),
            } => Some((base, idx, inv)),
            _ => None,
        }
    }

    /// The k-nearest-neighbour lists (memoised per k).
    pub fn knn(&self, k: usize) -> Arc<Knn> {
        self.graph(k).0
    }

    /// The rows whose k-th and (k+1)-th neighbours tie (memoised per k, found with the lists).
    pub fn ties(&self, k: usize) -> Arc<Ties> {
        self.graph(k).1
    }

    /// True when the neighbour lists for k are at hand (computed or set).
    pub fn has_graph(&self, k: usize) -> bool {
        self.knn.lock().expect("lock").contains_key(&k)
    }

    /// Sets the neighbour lists and ties for k (a stored graph read back), unless already set.
    pub fn set_graph(&self, k: usize, knn: Knn, ties: Ties) {
        self.knn
            .lock()
            .expect("lock")
            .entry(k)
            .or_insert_with(|| (Arc::new(knn), Arc::new(ties)));
    }

    /// The neighbour lists and ties for k: relabelled from the base's for a permuted copy,
    /// else from the Gram matrix (dense) or tiles of rows (large n), with the same result.
    pub fn graph(&self, k: usize) -> Graph {
        self.graph_with(k, &|_| {})
    }

    /// [`Derived::graph`], reporting the rows searched so far to `progress` when the large-n
    /// search runs.
    pub fn graph_with(&self, k: usize, progress: &(dyn Fn(usize) + Sync)) -> Graph {
        if let Some(v) = self.knn.lock().expect("lock").get(&k) {
            return v.clone();
        }
        let (knn, ties) = match self.permutation() {
            Some((base, idx, inv)) => {
                let (b, bt) = base.graph(k);
                relabel(&b, &bt, idx, inv)
            }
            None => {
                let groups = match &self.source {
                    Source::Reindexed { idx, .. } => Some(idx.as_slice()),
                    Source::Features(_) => None,
                };
                if self.dense {
                    graph::knn_from_gram(self.x(), self.gram(), k, groups)
                } else {
                    let rows = self
                        .search_rows(k, groups, 0..self.n, progress, &|| false)
                        .expect("never stopped");
                    graph::assemble(k, rows)
                }
            }
        };
        let v = (Arc::new(knn), Arc::new(ties));
        self.knn.lock().expect("lock").insert(k, v.clone());
        v
    }

    /// The neighbours of rows `rows` (against all rows) by the large-n search, as
    /// [`graph::knn_rows`] finds them: from the 16-bit values when they are held so. `None`
    /// once `stop` has returned true.
    pub fn search_rows(
        &self,
        k: usize,
        groups: Option<&[u32]>,
        rows: std::ops::Range<usize>,
        progress: &(dyn Fn(usize) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Option<Vec<graph::RowNeighbours>> {
        graph::knn_rows(
            self.rows(),
            k,
            groups,
            graph::Gemm::best(),
            rows,
            progress,
            stop,
        )
    }

    /// The prepared rows as the row-block readers take them: the 16-bit values when they are
    /// held so (never widened whole), else the f32 features.
    pub fn rows(&self) -> graph::Source<'_> {
        match &self.source {
            Source::Features(Some(h)) => graph::Source::Half(h),
            _ => graph::Source::of(self.x().view()),
        }
    }

    /// Statistics of the CKA family's kernel matrix of this representation.
    pub fn kernel(&self, kernel: super::Kernel) -> Arc<KernelStats> {
        match kernel {
            super::Kernel::Linear => self.linear_kernel(),
            super::Kernel::Rbf { sigma } => self.rbf_kernel(sigma),
            super::Kernel::RbfMedian => self.rbf_median_kernel(),
        }
    }

    /// Linear-kernel statistics (the kernel is the Gram matrix).
    pub fn linear_kernel(&self) -> Arc<KernelStats> {
        self.kernel_memo(0, || {
            self.gram();
            self.gram.get().expect("initialised").clone()
        })
    }

    /// Linear-kernel statistics computed in feature space, without the n × n kernel:
    /// row sums K1 = X(Xᵀ1), total ‖Xᵀ1‖², diagonal ‖x_i‖², ⟨K, K⟩ = ‖XᵀX‖²_F. With
    /// ⟨K, L⟩ = ‖XᵀY‖²_F ([`cross_frobenius`]) these are every term of both HSIC estimators,
    /// in O(n·d²) time and O(d²) memory.
    pub fn linear_features(&self) -> Arc<KernelStats> {
        const KEY: u64 = 2; // the RBF keys are odd, the linear Gram form's is 0
        if let Some(v) = self.kernels.lock().expect("lock").get(&KEY) {
            return v.clone();
        }
        let v = Arc::new(match self.permutation() {
            Some((base, idx, _)) => {
                let b = base.linear_features();
                let pick = |v: &[f64]| idx.iter().map(|&i| v[i as usize]).collect();
                KernelStats {
                    mat: None,
                    row_sums: pick(&b.row_sums),
                    total: b.total,
                    diag: pick(&b.diag),
                    self_dot: b.self_dot,
                }
            }
            None => {
                let x = self.rows();
                let s = column_sums(x);
                let (row_sums, diag): (Vec<f64>, Vec<f64>) = x
                    .map_rows(|r| {
                        let rs = r
                            .iter()
                            .zip(&s)
                            .map(|(&v, &m)| f64::from(v) * m)
                            .sum::<f64>();
                        (rs, super::dot::dot_f64(r, r))
                    })
                    .into_iter()
                    .unzip();
                KernelStats {
                    mat: None,
                    row_sums,
                    total: s.iter().map(|v| v * v).sum(),
                    diag,
                    self_dot: cross_frobenius(x, x),
                }
            }
        });
        self.kernels.lock().expect("lock").insert(KEY, v.clone());
        v
    }

    /// RBF-kernel statistics for σ: K = exp(−‖xi − xj‖² / (2σ²)).
    pub fn rbf_kernel(&self, sigma: f64) -> Arc<KernelStats> {
        let key = sigma.to_bits() | 1; // never 0, which is the linear kernel's key
        if let Some((base, idx, _)) = self.permutation() {
            let b = base.rbf_kernel(sigma);
            return self.kernel_memo(key, || {
                Arc::new(gather_square(
                    b.mat.as_deref().expect("an RBF kernel is dense"),
                    base.n,
                    idx,
                ))
            });
        }
        self.kernel_memo(key, || {
            let n = self.n();
            let g = self.gram();
            let denom = 2.0 * sigma * sigma;
            let mut k = vec![0f32; n * n];
            k.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                let gii = g[i * n + i] as f64;
                for (j, v) in row.iter_mut().enumerate() {
                    let d2 = (gii + g[j * n + j] as f64 - 2.0 * g[i * n + j] as f64).max(0.0);
                    *v = (-d2 / denom).exp() as f32;
                }
            });
            Arc::new(k)
        })
    }

    /// RBF-kernel statistics with this representation's median-heuristic σ
    /// ([`super::Kernel::RbfMedian`]). Holds a second n × n f32 buffer while it selects the
    /// median.
    pub fn rbf_median_kernel(&self) -> Arc<KernelStats> {
        const KEY: u64 = u64::MAX; // odd like the RBF keys, and no σ's bits
        if let Some((base, idx, _)) = self.permutation() {
            let b = base.rbf_median_kernel();
            return self.kernel_memo(KEY, || {
                Arc::new(gather_square(
                    b.mat.as_deref().expect("an RBF kernel is dense"),
                    base.n,
                    idx,
                ))
            });
        }
        self.kernel_memo(KEY, || {
            let n = self.n();
            let g = self.gram();
            let mut k = vec![0f32; n * n];
            k.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                let gii = g[i * n + i] as f64;
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (gii + g[j * n + j] as f64 - 2.0 * g[i * n + j] as f64).max(0.0) as f32;
                }
                row[i] = 0.0;
            });
            let mut sorted = k.clone();
            let mid = (n * n - 1) / 2; // the lower middle value, as torch.median
            let (_, &mut median, _) = sorted.select_nth_unstable_by(mid, f32::total_cmp);
            drop(sorted);
            let denom = if median > 0.0 {
                2.0 * median as f64
            } else {
                2.0
            };
            k.par_iter_mut()
                .for_each(|v| *v = (-(*v as f64) / denom).exp() as f32);
            Arc::new(k)
        })
    }

    fn kernel_memo(&self, key: u64, make: impl FnOnce() -> Arc<Vec<f32>>) -> Arc<KernelStats> {
        if let Some(v) = self.kernels.lock().expect("lock").get(&key) {
            return v.clone();
        }
        let mat = make();
        let n = self.n();
        let row_sums: Vec<f64> = mat
            .par_chunks(n)
            .map(|r| r.iter().map(|&v| v as f64).sum())
            .collect();
        let total = row_sums.iter().sum();
        let diag = (0..n).map(|i| mat[i * n + i] as f64).collect();
        let self_dot = super::dot::frobenius(&mat, &mat);
        let v = Arc::new(KernelStats {
            mat: Some(mat),
            row_sums,
            total,
            diag,
            self_dot,
        });
        self.kernels.lock().expect("lock").insert(key, v.clone());
        v
    }

    /// The top `c` left singular vectors (n × c, f64) of the column-standardised features, as
    /// SVCCA uses them. Errors on a zero-variance column.
    pub fn svcca_basis(&self, c: usize) -> Arc<SvdBasis> {
        if let Some(v) = self.svd.lock().expect("lock").get(&c) {
            return v.clone();
        }
        let v = Arc::new(match self.permutation() {
            Some((base, idx, _)) => match base.svcca_basis(c).as_ref() {
                Ok(u) => Ok(u.select(
                    ndarray::Axis(0),
                    &idx.iter().map(|&i| i as usize).collect::<Vec<_>>(),
                )),
                Err(e) => Err(e.clone()),
            },
            None => svcca_basis(self.x(), c),
        });
        self.svd.lock().expect("lock").insert(c, v.clone());
        v
    }

    /// A basis Z with ZxᵀZy having the singular values of XcᵀYc, for column-centred,
    /// Frobenius-normalised features Xc: Xc itself when d ≤ n, else U·√Λ from the
    /// eigendecomposition of the centred Gram matrix (n × n), so Procrustes never forms d × d.
    pub fn procrustes_basis(&self) -> Arc<faer::Mat<f64>> {
        if let Some(v) = self.procrustes.lock().expect("lock").as_ref() {
            return v.clone();
        }
        if let Some((base, idx, _)) = self.permutation() {
            let b = base.procrustes_basis();
            let z = faer::Mat::<f64>::from_fn(self.n, b.ncols(), |i, j| b[(idx[i] as usize, j)]);
            let v = Arc::new(z);
            *self.procrustes.lock().expect("lock") = Some(v.clone());
            return v;
        }
        let x = self.x();
        let (n, d) = x.dim();
        let z = if d <= n {
            let mut m = faer::Mat::<f64>::zeros(n, d);
            for j in 0..d {
                let col = x.column(j);
                let mean = col.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                for i in 0..n {
                    m[(i, j)] = col[i] as f64 - mean;
                }
            }
            let norm = m.norm_l2();
            if norm > 0.0 {
                m /= faer::Scale(norm);
            }
            m
        } else {
            let g = self.gram();
            let rm: Vec<f64> = (0..n)
                .map(|i| g[i * n..(i + 1) * n].iter().map(|&v| v as f64).sum::<f64>() / n as f64)
                .collect();
            let tm = rm.iter().sum::<f64>() / n as f64;
            let kc =
                faer::Mat::<f64>::from_fn(n, n, |i, j| g[i * n + j] as f64 - rm[i] - rm[j] + tm);
            let trace: f64 = (0..n).map(|i| kc[(i, i)]).sum();
            match kc.self_adjoint_eigen(faer::Side::Lower) {
                Ok(eig) => {
                    let u = eig.U();
                    let s = eig.S();
                    let scale = if trace > 0.0 { 1.0 / trace.sqrt() } else { 0.0 };
                    faer::Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * s[j].max(0.0).sqrt() * scale)
                }
                Err(_) => faer::Mat::<f64>::zeros(n, 1),
            }
        };
        let v = Arc::new(z);
        *self.procrustes.lock().expect("lock") = Some(v.clone());
        v
    }

    /// What CCA needs of this representation ([`CcaBasis`]), computed in O(d²) memory.
    pub fn cca_basis(&self) -> Arc<CcaBasis> {
        if let Some(v) = self.cca_white.lock().expect("lock").as_ref() {
            return v.clone();
        }
        let v = match self.permutation() {
            // Permuting rows leaves the column means and the covariance as they are.
            Some((base, _, _)) => base.cca_basis(),
            None => {
                const REG: f64 = 1e-6;
                let x = self.rows();
                let (n, d) = (x.n(), x.d());
                let mean: Vec<f64> = column_sums(x).iter().map(|s| s / n as f64).collect();
                let c = centred_cross(x, Some(&mean), x, Some(&mean));
                let scale = 1.0 / (n as f64 - 1.0).max(1.0);
                let c = faer::Mat::<f64>::from_fn(d, d, |i, j| {
                    c[(i, j)] * scale + if i == j { REG } else { 0.0 }
                });
                let inv_sqrt = match c.self_adjoint_eigen(faer::Side::Lower) {
                    Ok(eig) => {
                        let (u, s) = (eig.U(), eig.S());
                        let inv: Vec<f64> = (0..d).map(|j| 1.0 / s[j].max(REG).sqrt()).collect();
                        let us = faer::Mat::<f64>::from_fn(d, d, |i, j| u[(i, j)] * inv[j]);
                        us * u.transpose()
                    }
                    Err(_) => faer::Mat::<f64>::zeros(d, d),
                };
                Arc::new(CcaBasis { mean, inv_sqrt })
            }
        };
        *self.cca_white.lock().expect("lock") = Some(v.clone());
        v
    }

    /// Average ranks of the upper triangle (i < j, row by row) of the cosine-distance RDM,
    /// centred and scaled to unit norm, so Spearman ρ of two RDMs is their dot product.
    pub fn rdm_ranks(&self) -> Arc<Vec<f64>> {
        if let Some(v) = self.rdm_ranks.lock().expect("lock").as_ref() {
            return v.clone();
        }
        if let Some((base, idx, _)) = self.permutation() {
            let b = base.rdm_ranks();
            let n = self.n;
            let pair = |a: usize, c: usize| {
                let (a, c) = if a < c { (a, c) } else { (c, a) };
                a * n - a * (a + 1) / 2 + (c - a - 1)
            };
            let mut out = Vec::with_capacity(n * (n - 1) / 2);
            for i in 0..n {
                for j in i + 1..n {
                    out.push(b[pair(idx[i] as usize, idx[j] as usize)]);
                }
            }
            let v = Arc::new(out);
            *self.rdm_ranks.lock().expect("lock") = Some(v.clone());
            return v;
        }
        let n = self.n();
        let g = self.gram();
        let mut vals: Vec<(f64, u32)> = Vec::with_capacity(n * (n - 1) / 2);
        for i in 0..n {
            for j in i + 1..n {
                let cos =
                    g[i * n + j] as f64 / ((g[i * n + i] as f64) * (g[j * n + j] as f64)).sqrt();
                vals.push((1.0 - cos, vals.len() as u32));
            }
        }
        vals.par_sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let m = vals.len();
        let mut ranks = vec![0f64; m];
        let mut s = 0;
        while s < m {
            let mut e = s + 1;
            while e < m && vals[e].0 == vals[s].0 {
                e += 1;
            }
            let avg = (s + e - 1) as f64 / 2.0;
            for v in &vals[s..e] {
                ranks[v.1 as usize] = avg;
            }
            s = e;
        }
        let mean = ranks.iter().sum::<f64>() / m as f64;
        let mut norm = 0.0;
        for r in ranks.iter_mut() {
            *r -= mean;
            norm += *r * *r;
        }
        let norm = norm.sqrt();
        if norm > 0.0 {
            for r in ranks.iter_mut() {
                *r /= norm;
            }
        }
        let v = Arc::new(ranks);
        *self.rdm_ranks.lock().expect("lock") = Some(v.clone());
        v
    }
}

/// ‖XᵀY‖²_F in f64 (= ⟨XXᵀ, YYᵀ⟩_F), from [`centred_cross`] without centring.
pub fn cross_frobenius(x: graph::Source, y: graph::Source) -> f64 {
    let acc = centred_cross(x, None, y, None);
    let mut total = 0.0;
    for j in 0..acc.ncols() {
        for i in 0..acc.nrows() {
            total += acc[(i, j)] * acc[(i, j)];
        }
    }
    total
}

/// (X − 1·mxᵀ)ᵀ(Y − 1·myᵀ) in f64 (no centring where a mean is `None`): the d_x × d_y
/// cross-product accumulated over blocks of rows, so memory is O(d_x·d_y) whatever n. A fixed
/// block size and faer's GEMM (which never splits the summed dimension across threads) give
/// the same bits on any thread count.
pub fn centred_cross(
    x: graph::Source,
    mx: Option<&[f64]>,
    y: graph::Source,
    my: Option<&[f64]>,
) -> faer::Mat<f64> {
    let (n, dx, dy) = (x.n(), x.d(), y.d());
    let at = |m: Option<&[f64]>, j: usize| m.map_or(0.0, |m| m[j]);
    let mut acc = faer::Mat::<f64>::zeros(dx, dy);
    let (mut bx, mut by) = (Vec::new(), Vec::new());
    for r0 in (0..n).step_by(BLOCK_ROWS) {
        let r1 = (r0 + BLOCK_ROWS).min(n);
        let (xs, ys) = (x.rows(r0, r1, &mut bx), y.rows(r0, r1, &mut by));
        let a =
            faer::Mat::<f64>::from_fn(r1 - r0, dx, |i, j| f64::from(xs[i * dx + j]) - at(mx, j));
        let b =
            faer::Mat::<f64>::from_fn(r1 - r0, dy, |i, j| f64::from(ys[i * dy + j]) - at(my, j));
        faer::linalg::matmul::matmul(
            acc.as_mut(),
            Accum::Add,
            a.transpose(),
            b.as_ref(),
            1.0f64,
            Par::rayon(0),
        );
    }
    acc
}

/// Rows per block where features are read a block at a time (the feature-space kernels and
/// covariances): fixed, so sums are taken in the same order on any thread count.
pub const BLOCK_ROWS: usize = 1024;

/// Each column's sum over the rows of `x`, in f64, rows in order.
pub fn column_sums(x: graph::Source) -> Vec<f64> {
    let d = x.d();
    let mut s = vec![0f64; d];
    x.for_each_run(BLOCK_ROWS, |_, rows| {
        for row in rows.chunks_exact(d.max(1)) {
            for (a, &v) in s.iter_mut().zip(row) {
                *a += f64::from(v);
            }
        }
    });
    s
}

/// The memory budget for derived data when none is given (`--mem-mib`'s default).
pub const DEFAULT_BUDGET: usize = 4096 << 20;

/// Bytes the large-n neighbour search holds beyond features and lists (blocks of
/// similarities and proposals, per thread), for planning.
pub const SEARCH_BYTES: usize = 64 << 20;

/// True when a representation of n samples may hold its n × n matrices within `budget`
/// bytes: the Gram matrix and one kernel (8n² bytes) in at most a quarter of it, so a
/// sweep holds several representations at once.
pub fn dense_fits(n: usize, budget: usize) -> bool {
    (n as u128) * (n as u128) * 8 <= (budget as u128) / 4
}

/// Lists and ties of a permuted copy (row i is base row idx[i]) from the base's: O(n·k).
fn relabel(b: &Knn, bt: &Ties, idx: &[u32], inv: &[u32]) -> (Knn, Ties) {
    let (n, k) = (idx.len(), b.k);
    let mut ordered = Vec::with_capacity(n * k);
    let mut sims = Vec::with_capacity(n * k);
    for &src in idx {
        ordered.extend(b.row(src as usize).iter().map(|&j| inv[j as usize]));
        sims.extend_from_slice(b.row_sims(src as usize));
    }
    let map = |v: &[u32]| {
        let mut out: Vec<u32> = v.iter().map(|&j| inv[j as usize]).collect();
        out.sort_unstable();
        out
    };
    let mut rows: Vec<TieRow> = bt
        .rows
        .iter()
        .map(|t| TieRow {
            row: inv[t.row as usize],
            sure: map(&t.sure),
            group: map(&t.group),
            picks: t.picks,
        })
        .collect();
    rows.sort_unstable_by_key(|t| t.row);
    (Knn::new(k, ordered, sims), Ties { rows })
}

/// X Xᵀ in f32 with faer (parallel GEMM over the lower triangle, then mirrored).
pub fn gram(x: &Array2<f32>) -> Vec<f32> {
    let (n, d) = x.dim();
    let xs = x.as_standard_layout();
    let slice = xs.as_slice().expect("standard layout");
    let a = MatRef::from_row_major_slice(slice, n, d);
    let mut out = vec![0f32; n * n];
    {
        let dst = MatMut::from_row_major_slice_mut(&mut out, n, n);
        faer::linalg::matmul::triangular::matmul(
            dst,
            faer::linalg::matmul::triangular::BlockStructure::TriangularLower,
            Accum::Replace,
            a,
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            a.transpose(),
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            1.0f32,
            Par::rayon(0),
        );
    }
    mirror_lower(&mut out, n);
    out
}

/// `m[idx[i], idx[j]]` for a row-major square matrix of side `n`, in parallel over rows.
fn gather_square(m: &[f32], n: usize, idx: &[u32]) -> Vec<f32> {
    let k = idx.len();
    let mut out = vec![0f32; k * k];
    out.par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let src = &m[idx[i] as usize * n..(idx[i] as usize + 1) * n];
            for (o, &j) in row.iter_mut().zip(idx.iter()) {
                *o = src[j as usize];
            }
        });
    out
}

/// Copies the lower triangle of a row-major n × n matrix onto the upper, in cache-sized tiles.
fn mirror_lower(m: &mut [f32], n: usize) {
    const T: usize = 64;
    for bi in (0..n).step_by(T) {
        for bj in (bi..n).step_by(T) {
            for i in bi..(bi + T).min(n) {
                for j in bj.max(i + 1)..(bj + T).min(n) {
                    m[i * n + j] = m[j * n + i];
                }
            }
        }
    }
}

fn svcca_basis(x: &Array2<f32>, c: usize) -> Result<Array2<f64>, String> {
    let (n, d) = x.dim();
    if c > n.min(d) {
        return Err(format!("cca_dim {c} exceeds min(n, d) = {}", n.min(d)));
    }
    let mut m = faer::Mat::<f64>::zeros(n, d);
    for j in 0..d {
        let col = x.column(j);
        let mean = col.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = col.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        let sd = var.sqrt();
        if sd < 1e-12 {
            return Err(format!(
                "column {j} has zero variance; SVCCA standardises columns and cannot use it"
            ));
        }
        for i in 0..n {
            m[(i, j)] = (col[i] as f64 - mean) / (sd + 1e-8);
        }
    }
    let svd = m
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let u = svd.U();
    Ok(Array2::from_shape_fn((n, c), |(i, j)| u[(i, j)]))
}

/// Checks that two representations can be compared.
pub fn check_pair(metric: &str, a: &Derived, b: &Derived) -> Result<()> {
    if a.n() != b.n() {
        return Err(Error::metric(
            metric,
            format!(
                "the two representations have different n ({} vs {}); compare only features of the same samples",
                a.n(),
                b.n()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn gram_matches_naive_and_knn_breaks_ties_by_index() {
        let x = array![[1.0f32, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]];
        let g = gram(&x);
        for i in 0..4 {
            for j in 0..4 {
                let want: f32 = x.row(i).dot(&x.row(j));
                assert!((g[i * 4 + j] - want).abs() < 1e-6);
            }
        }
        let knn = graph::knn_from_gram(&x, &g, 2, None).0;
        // Row 2: neighbours by inner product 0.7 (3), then ties 0 (0) and 0 (1): lower index.
        assert_eq!(knn.row(2), &[3, 0]);
        assert_eq!(knn.row(0), &[1, 3]);
        assert!(knn.contains(2, 0) && !knn.contains(2, 1));
    }

    #[test]
    fn a_permuted_copy_scores_cca_and_pwcca_as_the_permuted_features_do() {
        let x = Array2::from_shape_fn((40, 6), |(i, j)| ((i * 7 + j * 13) % 11) as f32 - 5.0);
        let y = Array2::from_shape_fn((40, 9), |(i, j)| ((i * 5 + j * 3) % 7) as f32 + j as f32);
        let idx: Vec<u32> = (0..40).map(|i| (i * 17 % 40) as u32).collect();
        let rows: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
        let base = Arc::new(Derived::new(y.clone()));
        let relabelled = Derived::reindexed(&base, Arc::new(idx));
        let direct = Derived::new(y.select(ndarray::Axis(0), &rows));
        let a = Derived::new(x);
        for m in [super::super::Metric::Cca, super::super::Metric::Pwcca] {
            let s = super::super::MetricSpec::new(m);
            let (r, d) = (
                s.compute(&a, &relabelled).unwrap(),
                s.compute(&a, &direct).unwrap(),
            );
            assert!(
                (r - d).abs() < 1e-9,
                "{m}: {r} relabelled vs {d} recomputed"
            );
        }
    }
}
