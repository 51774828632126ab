//! Alignment metrics: the eight of the official platonic-rep `metrics.py` with the same
//! numbers, plus Procrustes, RSA, Jaccard kNN and linear R² (docs/design.md §4).
//!
//! Every metric is a pure function of two [`Derived`] representations (prepared features and
//! their memoised derived data). [`MetricSpec`] names a metric with its parameters; its
//! [`MetricSpec::params_key`] and [`Metric::version`] are part of every cache key.
//!
//! Neighbours are by inner product, self excluded, most similar first; ties between
//! candidates are broken by the lower sample index, deterministically. [`Ties`] records the
//! rows tied at the k boundary, and [`TieBreak::Expected`] averages over random tie-breaking.

pub mod amx;
pub mod derived;
pub mod dot;
pub mod extra;
pub mod graph;
pub mod half;
pub mod kernel;
pub mod knn;
pub mod prep;
pub mod spec;

use std::fmt;
use std::str::FromStr;

pub use derived::Derived;
pub use derived::{TieRow, Ties};
pub use prep::{ClampRule, ClampScope, Layout, Prep, Scope};
pub use spec::{Kernel, MetricSpec, TieBreak};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// A metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    /// mutual_knn: mean fraction of shared k nearest neighbours (official).
    MutualKnn,
    /// cycle_knn: fraction of samples reached back through a neighbour (official).
    CycleKnn,
    /// lcs_knn: mean longest common subsequence of the ordered neighbour lists (official).
    LcsKnn,
    /// edit_distance_knn: 1 − mean edit distance of the neighbour lists / k (official).
    EditDistanceKnn,
    /// jaccard_knn: mean Jaccard index of the neighbour sets.
    JaccardKnn,
    /// cka: centred kernel alignment, biased HSIC (official).
    Cka,
    /// unbiased_cka: CKA with the unbiased HSIC estimator (official).
    UnbiasedCka,
    /// cknna: CKA restricted to mutual k-nearest-neighbour pairs (official).
    Cknna,
    /// svcca: mean canonical correlation of the top singular subspaces (official).
    Svcca,
    /// cca: mean canonical correlation, regularised (Aristotelian).
    Cca,
    /// pwcca: projection-weighted CCA (Morcos et al. 2018, as Aristotelian computes it).
    Pwcca,
    /// procrustes: orthogonal Procrustes similarity.
    Procrustes,
    /// rsa: Spearman correlation of the two cosine-distance RDMs.
    Rsa,
    /// linear_r2: held-out R² of a ridge regression from X to Y.
    LinearR2,
}

/// Every metric, in the order `--help` lists them.
pub const ALL: &[Metric] = &[
    Metric::MutualKnn,
    Metric::CycleKnn,
    Metric::LcsKnn,
    Metric::EditDistanceKnn,
    Metric::JaccardKnn,
    Metric::Cka,
    Metric::UnbiasedCka,
    Metric::Cknna,
    Metric::Svcca,
    Metric::Cca,
    Metric::Pwcca,
    Metric::Procrustes,
    Metric::Rsa,
    Metric::LinearR2,
];

impl Metric {
    /// The metric's name as used on the command line and in the cache.
    pub fn name(self) -> &'static str {
        match self {
            Metric::MutualKnn => "mutual_knn",
            Metric::CycleKnn => "cycle_knn",
            Metric::LcsKnn => "lcs_knn",
            Metric::EditDistanceKnn => "edit_distance_knn",
            Metric::JaccardKnn => "jaccard_knn",
            Metric::Cka => "cka",
            Metric::UnbiasedCka => "unbiased_cka",
            Metric::Cknna => "cknna",
            Metric::Svcca => "svcca",
            Metric::Cca => "cca",
            Metric::Pwcca => "pwcca",
            Metric::Procrustes => "procrustes",
            Metric::Rsa => "rsa",
            Metric::LinearR2 => "linear_r2",
        }
    }

    /// Version of what the metric returns; bumped whenever that changes, so old cache rows
    /// are never reused for new numbers.
    pub fn version(self) -> u32 {
        match self {
            // 2: cached in both orientations (version 1 stored one and served it both ways).
            Metric::CycleKnn | Metric::Cknna => 2,
            // 2: computed in feature space when X is no wider than n (the kernel form's f32
            // Gram matrices moved it by up to ~1e-7).
            Metric::LinearR2 => 2,
            _ => 1,
        }
    }

    /// True when swapping X and Y gives the same number (the cache stores one orientation).
    /// cycle_knn is not (it asks whether i is an X-neighbour of a Y-neighbour of i), nor is
    /// cknna (the official unbiased HSIC pairs K's column sums with L's row sums, and the
    /// masked kernels are not symmetric), nor linear_r2 (a regression from X to Y), nor pwcca
    /// (weighted by X's canonical variables).
    pub fn symmetric(self) -> bool {
        !matches!(
            self,
            Metric::LinearR2 | Metric::CycleKnn | Metric::Cknna | Metric::Pwcca
        )
    }

    /// True for metrics that take the neighbourhood size k.
    pub fn uses_k(self) -> bool {
        matches!(
            self,
            Metric::MutualKnn
                | Metric::CycleKnn
                | Metric::LcsKnn
                | Metric::EditDistanceKnn
                | Metric::JaccardKnn
                | Metric::Cknna
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL.iter().copied().find(|m| m.name() == s).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown metric {s:?}; known: {}",
                ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

impl MetricSpec {
    /// Rows where either side's k-th and (k+1)-th neighbours tie (kNN metrics and cknna;
    /// `None` for the others): where the official number depends on the platform's sort.
    pub fn tied_rows(&self, a: &Derived, b: &Derived) -> Option<usize> {
        self.metric
            .uses_k()
            .then(|| knn::tied_rows(&a.ties(self.k), &b.ties(self.k)))
    }

    /// True when [`MetricSpec::compute_block`] computes a block of layer pairs at once.
    pub fn blocks(&self) -> bool {
        matches!(self.metric, Metric::Cka | Metric::UnbiasedCka | Metric::Rsa)
    }

    /// The metric for every (x, y) pair of a block of layers, rows = `xs` (the CKA family and
    /// RSA: every kernel or RDM read once per block, see [`kernel::dot_block`]); the same
    /// numbers as [`MetricSpec::compute`] per pair up to f64 rounding. `None` for metrics
    /// computed pair by pair.
    pub fn compute_block<X, Y>(&self, xs: &[X], ys: &[Y]) -> Option<Result<Vec<Vec<f64>>>>
    where
        X: std::ops::Deref<Target = Derived> + Sync,
        Y: std::ops::Deref<Target = Derived> + Sync,
    {
        if !self.blocks() || xs.is_empty() || ys.is_empty() {
            return None;
        }
        Some(self.kernel_block(xs, ys))
    }

    fn kernel_block<X, Y>(&self, xs: &[X], ys: &[Y]) -> Result<Vec<Vec<f64>>>
    where
        X: std::ops::Deref<Target = Derived> + Sync,
        Y: std::ops::Deref<Target = Derived> + Sync,
    {
        let name = self.metric.name();
        for x in xs {
            derived::check_pair(name, x, &ys[0])?;
        }
        for y in ys {
            derived::check_pair(name, &xs[0], y)?;
        }
        self.validate(xs[0].n())?;
        let feature_form = xs
            .iter()
            .any(|x| ys.iter().any(|y| self.in_feature_space(x, y)));
        if feature_form {
            // No kernel to share across the block: pair by pair, in parallel.
            return xs
                .iter()
                .map(|x| ys.par_iter().map(|y| self.compute(x, y)).collect())
                .collect();
        }
        for r in xs.iter().map(|x| &**x).chain(ys.iter().map(|y| &**y)) {
            self.refuse_square(r)?;
        }
        if self.metric == Metric::Rsa {
            let rx: Vec<_> = xs.par_iter().map(|x| x.rdm_ranks()).collect();
            let ry: Vec<_> = ys.par_iter().map(|y| y.rdm_ranks()).collect();
            let ax: Vec<&[f64]> = rx.iter().map(|r| r.as_slice()).collect();
            let ay: Vec<&[f64]> = ry.iter().map(|r| r.as_slice()).collect();
            return kernel::dot_block(&ax, &ay)
                .into_iter()
                .map(|row| row.into_iter().map(|v| finite(name, v)).collect())
                .collect();
        }
        let kx: Vec<_> = xs.par_iter().map(|x| x.kernel(self.kernel)).collect();
        let ky: Vec<_> = ys.par_iter().map(|y| y.kernel(self.kernel)).collect();
        let rx: Vec<&[f32]> = kx
            .iter()
            .map(|s| s.mat.as_deref().expect("dense kernel").as_slice())
            .collect();
        let ry: Vec<&[f32]> = ky
            .iter()
            .map(|s| s.mat.as_deref().expect("dense kernel").as_slice())
            .collect();
        let dots = kernel::dot_block(&rx, &ry);
        let unbiased = self.metric == Metric::UnbiasedCka;
        let mut out = Vec::with_capacity(xs.len());
        for (i, row) in dots.iter().enumerate() {
            let mut r = Vec::with_capacity(ys.len());
            for (j, &kl) in row.iter().enumerate() {
                r.push(finite(
                    name,
                    kernel::cka_from_dot(kl, &kx[i], &ky[j], unbiased),
                )?);
            }
            out.push(r);
        }
        Ok(out)
    }

    /// True when this metric needs `r`'s n × n matrices, having no exact bounded-memory form:
    /// rbf cka, rsa, and linear_r2 and procrustes of features wider than n (docs/design.md §13).
    pub fn needs_square(&self, r: &Derived) -> bool {
        match self.metric {
            Metric::Rsa => true,
            Metric::LinearR2 => r.d() > r.n(),
            Metric::Cka | Metric::UnbiasedCka => self.kernel != Kernel::Linear,
            Metric::Procrustes => r.d() > r.n(),
            _ => false,
        }
    }

    /// Refuses, in one line, a metric that needs `r`'s n × n matrices on the large-n path.
    fn refuse_square(&self, r: &Derived) -> Result<()> {
        if self.needs_square(r) {
            r.require_dense(self.metric.name())?;
        }
        Ok(())
    }

    /// True when the CKA family's linear kernel is computed in feature space for this pair
    /// (d_x·d_y below n², or either side on the large-n path): a choice of arithmetic, not of
    /// meaning, that depends on the shapes (docs/design.md §13).
    fn in_feature_space(&self, a: &Derived, b: &Derived) -> bool {
        matches!(self.metric, Metric::Cka | Metric::UnbiasedCka)
            && self.kernel == Kernel::Linear
            && (!a.dense()
                || !b.dense()
                || (a.d() as u128) * (b.d() as u128) < (a.n() as u128) * (a.n() as u128))
    }

    /// Computes the metric for one pair of derived representations.
    pub fn compute(&self, a: &Derived, b: &Derived) -> Result<f64> {
        let name = self.metric.name();
        derived::check_pair(name, a, b)?;
        let n = a.n();
        self.validate(n)?;
        self.refuse_square(a)?;
        self.refuse_square(b)?;
        let v = match self.metric {
            Metric::MutualKnn if self.ties == TieBreak::Expected => knn::mutual_knn_expected(
                &a.knn(self.k),
                &a.ties(self.k),
                &b.knn(self.k),
                &b.ties(self.k),
                n,
            ),
            Metric::CycleKnn if self.ties == TieBreak::Expected => knn::cycle_knn_expected(
                &a.knn(self.k),
                &a.ties(self.k),
                &b.knn(self.k),
                &b.ties(self.k),
                n,
            ),
            Metric::MutualKnn => knn::mutual_knn(&a.knn(self.k), &b.knn(self.k), n),
            Metric::JaccardKnn => knn::jaccard_knn(&a.knn(self.k), &b.knn(self.k), n),
            Metric::CycleKnn => knn::cycle_knn(&a.knn(self.k), &b.knn(self.k), n),
            Metric::LcsKnn => knn::lcs_knn(&a.knn(self.k), &b.knn(self.k), n, self.emulate_pymp),
            Metric::EditDistanceKnn => {
                knn::edit_distance_knn(&a.knn(self.k), &b.knn(self.k), n, self.emulate_pymp)
            }
            Metric::Cka | Metric::UnbiasedCka if self.in_feature_space(a, b) => {
                let kl = derived::cross_frobenius(a.rows(), b.rows());
                let (ka, kb) = (a.linear_features(), b.linear_features());
                kernel::cka_from_dot(kl, &ka, &kb, self.metric == Metric::UnbiasedCka)
            }
            Metric::Cka | Metric::UnbiasedCka => {
                let (ka, kb) = (a.kernel(self.kernel), b.kernel(self.kernel));
                kernel::cka(&ka, &kb, self.metric == Metric::UnbiasedCka)
            }
            Metric::Cknna => kernel::cknna(&a.knn(self.k), &b.knn(self.k), n),
            Metric::Svcca => {
                let ua = a.svcca_basis(self.cca_dim);
                let ub = b.svcca_basis(self.cca_dim);
                let ua = ua
                    .as_ref()
                    .as_ref()
                    .map_err(|m| Error::metric(name, m.clone()))?;
                let ub = ub
                    .as_ref()
                    .as_ref()
                    .map_err(|m| Error::metric(name, m.clone()))?;
                extra::svcca(ua, ub).map_err(|m| Error::metric(name, m))?
            }
            Metric::Cca => extra::cca(a, b).map_err(|m| Error::metric(name, m))?,
            Metric::Pwcca => extra::pwcca(a, b).map_err(|m| Error::metric(name, m))?,
            Metric::Procrustes => extra::procrustes(a, b).map_err(|m| Error::metric(name, m))?,
            Metric::Rsa => extra::rsa(a, b),
            Metric::LinearR2 => {
                extra::linear_r2(a, b, self.ridge).map_err(|m| Error::metric(name, m))?
            }
        };
        finite(name, v)
    }
}

/// A metric value, or an error naming the metric when it is not a number.
fn finite(name: &str, v: f64) -> Result<f64> {
    if !v.is_finite() {
        return Err(Error::metric(
            name,
            format!(
                "the result is not a number ({v}); the inputs are degenerate (constant features?)"
            ),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use ndarray::Array2;

    fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut r = Rng::new(seed);
        Array2::from_shape_fn((n, d), |_| r.normal() as f32)
    }

    fn derived(x: &Array2<f32>) -> Derived {
        Derived::new(prep::prepare(x.view(), None, true).unwrap())
    }

    /// X rotated by a random orthogonal matrix (Gram–Schmidt of a Gaussian matrix).
    fn rotate(x: &Array2<f32>, seed: u64) -> Array2<f32> {
        let d = x.ncols();
        let mut q = random(d, d, seed).mapv(|v| v as f64);
        for j in 0..d {
            for k in 0..j {
                let dot: f64 = (0..d).map(|i| q[[i, j]] * q[[i, k]]).sum();
                for i in 0..d {
                    q[[i, j]] -= dot * q[[i, k]];
                }
            }
            let norm: f64 = (0..d).map(|i| q[[i, j]].powi(2)).sum::<f64>().sqrt();
            for i in 0..d {
                q[[i, j]] /= norm;
            }
        }
        x.mapv(|v| v as f64).dot(&q).mapv(|v| v as f32)
    }

    #[test]
    fn a_block_of_kernel_cells_equals_the_cells_one_by_one() {
        // n = 200: 40,000 kernel entries, more than one chunk of the block product.
        let xs: Vec<Derived> = (0..3)
            .map(|s| derived(&random(200, 8 + 8 * s, s as u64)))
            .collect();
        let ys: Vec<Derived> = (0..2)
            .map(|s| derived(&random(200, 12, 10 + s as u64)))
            .collect();
        let xr: Vec<&Derived> = xs.iter().collect();
        let yr: Vec<&Derived> = ys.iter().collect();
        for (metric, kernel) in [
            (Metric::Cka, Kernel::Linear),
            (Metric::Cka, Kernel::Rbf { sigma: 0.8 }),
            (Metric::UnbiasedCka, Kernel::Linear),
            (Metric::Rsa, Kernel::Linear),
        ] {
            let mut spec = MetricSpec::new(metric);
            spec.kernel = kernel;
            let block = spec.compute_block(&xr, &yr).unwrap().unwrap();
            for (i, x) in xs.iter().enumerate() {
                for (j, y) in ys.iter().enumerate() {
                    let one = spec.compute(x, y).unwrap();
                    assert!(
                        (block[i][j] - one).abs() < 1e-12,
                        "{metric} {i},{j}: {} vs {one}",
                        block[i][j]
                    );
                }
            }
        }
        assert!(
            MetricSpec::new(Metric::MutualKnn)
                .compute_block(&xr, &yr)
                .is_none()
        );
        // The same bits whatever the number of threads (two sweeps must agree exactly).
        for metric in [Metric::Rsa, Metric::Cka] {
            let spec = MetricSpec::new(metric);
            let on = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| spec.compute_block(&xr, &yr).unwrap().unwrap())
            };
            let one = on(1);
            for threads in [2, 3, 7] {
                assert_eq!(on(threads), one, "{metric}, {threads} threads");
            }
        }
    }

    #[test]
    fn every_metric_is_maximal_for_a_rotation_of_the_same_features() {
        let x = random(60, 12, 1);
        let (a, b) = (derived(&x), derived(&rotate(&x, 2)));
        // SVCCA standardises columns, so it is invariant to column permutation and scaling
        // rather than rotation: test it on such a transform.
        let mut permuted = x.clone();
        for j in 0..12 {
            permuted
                .column_mut(j)
                .assign(&x.column((j + 5) % 12).mapv(|v| v * (1.0 + j as f32)));
        }
        let sv = MetricSpec::new(Metric::Svcca)
            .compute(&Derived::new(x.clone()), &Derived::new(permuted))
            .unwrap();
        assert!((sv - 1.0).abs() < 1e-6, "svcca {sv}");
        for &m in ALL.iter().filter(|&&m| m != Metric::Svcca) {
            let s = MetricSpec::new(m);
            let v = s.compute(&a, &b).unwrap();
            let want = match m {
                Metric::LcsKnn => 10.0,
                _ => 1.0,
            };
            assert!((v - want).abs() < 2e-3, "{m}: {v}");
        }
    }

    #[test]
    fn independent_features_score_near_chance() {
        let (a, b) = (derived(&random(300, 32, 3)), derived(&random(300, 32, 4)));
        let chance = 10.0 / 299.0;
        let mk = MetricSpec::new(Metric::MutualKnn).compute(&a, &b).unwrap();
        assert!(
            (mk - chance).abs() < 0.02,
            "mutual_knn {mk} vs chance {chance}"
        );
        let rsa = MetricSpec::new(Metric::Rsa).compute(&a, &b).unwrap();
        assert!(rsa.abs() < 0.05, "rsa {rsa}");
        let r2 = MetricSpec::new(Metric::LinearR2).compute(&a, &b).unwrap();
        assert!(r2 < 0.05, "linear_r2 {r2}");
        let ucka = MetricSpec::new(Metric::UnbiasedCka)
            .compute(&a, &b)
            .unwrap();
        assert!(ucka.abs() < 0.05, "unbiased_cka {ucka}");
    }

    #[test]
    fn metrics_called_symmetric_are() {
        // Related features (so no metric is trivially near 0) with ties at the k boundary.
        let x = random(200, 6, 7).mapv(|v| (v * 2.0).round() + 0.5);
        let y = &x + &random(200, 6, 8).mapv(|v| (v * 2.0).round());
        let (a, b) = (derived(&x), derived(&y));
        for &m in ALL {
            let mut s = MetricSpec::new(m);
            s.cca_dim = 4;
            let (ab, ba) = (s.compute(&a, &b).unwrap(), s.compute(&b, &a).unwrap());
            if m.symmetric() {
                assert!(
                    (ab - ba).abs() < 1e-12,
                    "{m} is called symmetric: {ab} vs {ba}"
                );
            } else {
                assert!(
                    (ab - ba).abs() > 1e-9,
                    "{m} is called asymmetric: {ab} both ways"
                );
            }
        }
    }

    #[test]
    fn params_key_names_only_what_the_metric_uses() {
        assert_eq!(MetricSpec::new(Metric::MutualKnn).params_key(), "k=10");
        let mut s = MetricSpec::new(Metric::Cka);
        s.kernel = Kernel::Rbf { sigma: 0.5 };
        assert_eq!(s.params_key(), "kernel=rbf,sigma=0.5");
        s.kernel = Kernel::RbfMedian;
        assert_eq!(s.params_key(), "kernel=rbf,sigma=median");
        assert_eq!(MetricSpec::from_key("cka", &s.params_key()), Some(s));
        assert_eq!(s.flags(), "--metric cka --kernel rbf --sigma median");
        let given = |k: &str| match k {
            "kernel" => Some("rbf".to_string()),
            "sigma" => Some("median".to_string()),
            _ => None,
        };
        assert_eq!(MetricSpec::from_options("cka", &given).unwrap(), s);
        assert_eq!(MetricSpec::new(Metric::Svcca).params_key(), "cca_dim=10");
        assert_eq!(MetricSpec::new(Metric::Pwcca).params_key(), "");
        assert_eq!(MetricSpec::new(Metric::Procrustes).params_key(), "");
        let mut l = MetricSpec::new(Metric::LcsKnn);
        l.emulate_pymp = true;
        assert_eq!(l.params_key(), "k=10,emulate_pymp=1");
    }
}
