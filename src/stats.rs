//! Statistics a skeptic asks for: permutation nulls, p-values, z-scores, calibrated scores and
//! bootstrap intervals for a model-pair alignment (the max over layer pairs).
//!
//! Raw similarity scores are inflated by model scale and by the max over layer pairs
//! (Gröger, Wen, Brbić 2026, "Revisiting the Platonic Representation Hypothesis: An
//! Aristotelian View"). The null here permutes the y side's sample order and scores each
//! permutation exactly as the real pair, max over all layer pairs included, so the null
//! carries the same selection inflation as the statistic. A permutation only re-indexes the
//! derived data already held (neighbour lists, kernels, bases): no new Gram matrix.
//!
//! Draw p of a sample with seed s uses the generator seeded by `mix(s, p)`, so draws are
//! reproducible one by one and a larger sample extends a smaller one.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::metrics::{Derived, Metric, MetricSpec};
use crate::rng::Rng;

/// The seed of draw `p` of a sample seeded with `seed`.
pub fn draw_seed(seed: u64, p: usize) -> u64 {
    let mut r = Rng::new(seed ^ 0x005E_ED0F_D4A3);
    for _ in 0..2 {
        r.next_u64();
    }
    r.next_u64() ^ (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Permutation `p` of 0..n for a sample seeded with `seed`.
pub fn permutation(seed: u64, p: usize, n: usize) -> Vec<u32> {
    Rng::new(draw_seed(seed, p))
        .permutation(n)
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// Bootstrap resample `b` (n indices drawn with replacement) for a sample seeded with `seed`.
pub fn resample(seed: u64, b: usize, n: usize) -> Vec<u32> {
    let mut r = Rng::new(draw_seed(seed ^ 0xB007, b));
    (0..n).map(|_| r.below(n) as u32).collect()
}

/// Max over all layer pairs of `spec` (the model-pair statistic).
pub fn best_over_layers<X, Y>(spec: &MetricSpec, xs: &[X], ys: &[Y]) -> Result<f64>
where
    X: std::ops::Deref<Target = Derived>,
    Y: std::ops::Deref<Target = Derived>,
{
    let mut best = f64::NEG_INFINITY;
    for x in xs {
        for y in ys {
            best = best.max(spec.compute(x, y)?);
        }
    }
    Ok(best)
}

/// Null draws `range` (permutations of the y samples), each the max over all layer pairs.
pub fn null_draws(
    spec: &MetricSpec,
    xs: &[Arc<Derived>],
    ys: &[Arc<Derived>],
    seed: u64,
    range: Range<usize>,
) -> Result<Vec<f64>> {
    xs.par_iter()
        .chain(ys.par_iter())
        .for_each(|d| d.warm(spec));
    let n = ys[0].n();
    range
        .into_par_iter()
        .map(|p| {
            let perm = Arc::new(permutation(seed, p, n));
            let permuted: Vec<Derived> = ys
                .iter()
                .map(|y| Derived::reindexed(y, perm.clone()))
                .collect();
            best_over_layers(spec, xs, &permuted.iter().collect::<Vec<_>>())
        })
        .collect()
}

/// Bootstrap draws `range`: the samples resampled with replacement (the same rows on both
/// sides), each scored as the max over all layer pairs.
pub fn bootstrap_draws(
    spec: &MetricSpec,
    xs: &[Arc<Derived>],
    ys: &[Arc<Derived>],
    seed: u64,
    range: Range<usize>,
) -> Result<Vec<f64>> {
    let n = xs[0].n();
    range
        .into_par_iter()
        .map(|b| {
            let idx = Arc::new(resample(seed, b, n));
            let rx: Vec<Derived> = xs
                .iter()
                .map(|x| Derived::reindexed(x, idx.clone()))
                .collect();
            let ry: Vec<Derived> = ys
                .iter()
                .map(|y| Derived::reindexed(y, idx.clone()))
                .collect();
            best_over_layers(
                spec,
                &rx.iter().collect::<Vec<_>>(),
                &ry.iter().collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// The largest value a metric can take, for calibration.
pub fn max_attainable(spec: &MetricSpec) -> f64 {
    match spec.metric {
        Metric::LcsKnn => spec.k as f64,
        _ => 1.0,
    }
}

/// A raw score against its permutation null.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct NullSummary {
    /// Number of permutations.
    pub permutations: usize,
    pub null_mean: f64,
    /// Sample standard deviation of the null draws.
    pub null_sd: f64,
    /// (1 + #{null ≥ raw}) / (1 + P).
    pub p_value: f64,
    /// (raw − null mean) / null sd.
    pub z: f64,
    /// (raw − null mean) / (max attainable − null mean): 0 at chance, 1 at the maximum.
    pub calibrated: f64,
}

/// Summarises `raw` against null draws.
pub fn summarize(raw: f64, null: &[f64], max: f64) -> NullSummary {
    let p = null.len();
    let mean = null.iter().sum::<f64>() / p as f64;
    let var = null.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (p.max(2) - 1) as f64;
    let sd = var.sqrt();
    let ge = null.iter().filter(|&&v| v >= raw).count();
    NullSummary {
        permutations: p,
        null_mean: mean,
        null_sd: sd,
        p_value: (1 + ge) as f64 / (1 + p) as f64,
        z: if sd > 0.0 { (raw - mean) / sd } else { 0.0 },
        calibrated: if max > mean {
            (raw - mean) / (max - mean)
        } else {
            0.0
        },
    }
}

/// Percentile 95% interval [2.5%, 97.5%] of bootstrap draws (linear interpolation).
pub fn ci95(draws: &[f64]) -> [f64; 2] {
    let mut v = draws.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    [q(0.025), q(0.975)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Kernel, prep};
    use ndarray::Array2;

    fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut r = Rng::new(seed);
        Array2::from_shape_fn((n, d), |_| r.normal() as f32)
    }

    fn derived(x: Array2<f32>) -> Arc<Derived> {
        Arc::new(Derived::new(prep::prepare(x.view(), None, true).unwrap()))
    }

    #[test]
    fn permutation_path_equals_recomputing_from_the_permuted_matrix() {
        let x = random(64, 12, 1);
        let y = random(64, 14, 2);
        let perm = permutation(5, 0, 64);
        let y_perm = y.select(
            ndarray::Axis(0),
            &perm.iter().map(|&i| i as usize).collect::<Vec<_>>(),
        );
        let (dx, dy) = (derived(x), derived(y));
        let recomputed = derived(y_perm);
        for &m in crate::metrics::ALL {
            let mut specs = vec![MetricSpec::new(m)];
            if m == Metric::Cka {
                let mut s = MetricSpec::new(m);
                s.kernel = Kernel::Rbf { sigma: 0.8 };
                specs.push(s);
            }
            for spec in specs {
                let reindexed = Derived::reindexed(&dy, Arc::new(perm.clone()));
                let a = spec.compute(&dx, &reindexed).unwrap();
                let b = spec.compute(&dx, &recomputed).unwrap();
                assert!((a - b).abs() < 1e-9, "{m}: permuted {a} vs recomputed {b}");
            }
        }
    }

    #[test]
    fn independent_pairs_have_uniform_p_values_and_calibrate_to_zero() {
        let spec = MetricSpec::new(Metric::MutualKnn);
        let mut ps = Vec::new();
        let mut cals = Vec::new();
        for s in 0..40u64 {
            let xs = vec![derived(random(256, 16, 100 + s))];
            let ys = vec![derived(random(256, 16, 200 + s))];
            let raw = best_over_layers(&spec, &xs, &ys).unwrap();
            let null = null_draws(&spec, &xs, &ys, s, 0..99).unwrap();
            let sum = summarize(raw, &null, 1.0);
            ps.push(sum.p_value);
            cals.push(sum.calibrated);
        }
        let mean_p = ps.iter().sum::<f64>() / ps.len() as f64;
        let small = ps.iter().filter(|&&p| p <= 0.1).count();
        assert!((0.3..=0.7).contains(&mean_p), "mean p {mean_p}: {ps:?}");
        assert!(small <= 10, "{small} of 40 p-values ≤ 0.1: {ps:?}");
        let mean_cal = cals.iter().sum::<f64>() / cals.len() as f64;
        assert!(mean_cal.abs() < 0.01, "mean calibrated {mean_cal}");
    }

    #[test]
    fn shared_latent_pair_is_significant_and_calibrated_above_zero() {
        let z = random(256, 8, 7);
        let wx = random(8, 20, 8);
        let wy = random(8, 30, 9);
        let x = z.dot(&wx) + random(256, 20, 10) * 0.5;
        let y = z.dot(&wy) + random(256, 30, 11) * 0.5;
        let spec = MetricSpec::new(Metric::MutualKnn);
        let (xs, ys) = (vec![derived(x)], vec![derived(y)]);
        let raw = best_over_layers(&spec, &xs, &ys).unwrap();
        let null = null_draws(&spec, &xs, &ys, 0, 0..199).unwrap();
        let s = summarize(raw, &null, 1.0);
        assert_eq!(s.p_value, 1.0 / 200.0);
        assert!(s.calibrated > 0.2, "{s:?}");
        assert!(s.z > 10.0, "{s:?}");
        // Draws are reproducible one by one: a longer sample extends the shorter.
        let more = null_draws(&spec, &xs, &ys, 0, 199..250).unwrap();
        let all = null_draws(&spec, &xs, &ys, 0, 0..250).unwrap();
        assert_eq!([null, more].concat(), all);
        let boot = bootstrap_draws(&spec, &xs, &ys, 0, 0..50).unwrap();
        let ci = ci95(&boot);
        assert!(ci[0] < ci[1] && ci[0] > s.null_mean, "{ci:?}");
    }
}
