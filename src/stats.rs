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
use crate::layers::Reduce;
use crate::metrics::{Derived, MetricSpec};
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

/// The model-pair statistic: `spec` over the layer pairs `reduce` needs, aggregated by it.
pub fn reduce_over_layers<X, Y>(
    spec: &MetricSpec,
    reduce: Reduce,
    xs: &[X],
    ys: &[Y],
) -> Result<f64>
where
    X: std::ops::Deref<Target = Derived> + Sync,
    Y: std::ops::Deref<Target = Derived> + Sync,
{
    if let Some([i, j]) = reduce.single(xs.len(), ys.len())? {
        return spec.compute(&xs[i], &ys[j]);
    }
    if let Some(block) = spec.compute_block(xs, ys) {
        return Ok(reduce.apply(&block?)?.0);
    }
    let mut table = Vec::with_capacity(xs.len());
    for x in xs {
        table.push(
            ys.iter()
                .map(|y| spec.compute(x, y))
                .collect::<Result<Vec<f64>>>()?,
        );
    }
    Ok(reduce.apply(&table)?.0)
}

/// How a sample of draws resamples a model pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resampling {
    /// The permutation null: the y samples permuted, the same permutation for all y layers.
    Permutation,
    /// The bootstrap: the samples drawn with replacement, the same rows on both sides.
    Bootstrap,
}

impl Resampling {
    /// Its name in the cache of draws.
    pub fn name(self) -> &'static str {
        match self {
            Resampling::Permutation => "permutation",
            Resampling::Bootstrap => "bootstrap",
        }
    }
}

/// Draws `range` of a resampling scheme (draw i is the same whatever the range, for a seed),
/// each aggregated over layer pairs as the real pair is.
pub fn draws(
    how: Resampling,
    spec: &MetricSpec,
    reduce: Reduce,
    (xs, ys): (&[Arc<Derived>], &[Arc<Derived>]),
    seed: u64,
    range: Range<usize>,
) -> Result<Vec<f64>> {
    if how == Resampling::Permutation {
        // The unpermuted side's derived data is shared by every draw: computed once, first.
        xs.par_iter()
            .chain(ys.par_iter())
            .for_each(|d| d.warm(spec));
    }
    let n = xs[0].n();
    range
        .into_par_iter()
        .map(|i| {
            let (rx, ry) = match how {
                Resampling::Permutation => {
                    let perm = Arc::new(permutation(seed, i, n));
                    (None, reindex(ys, &perm))
                }
                Resampling::Bootstrap => {
                    let idx = Arc::new(resample(seed, i, n));
                    (Some(reindex(xs, &idx)), reindex(ys, &idx))
                }
            };
            let rx: Vec<&Derived> = match &rx {
                Some(r) => r.iter().collect(),
                None => xs.iter().map(|x| x.as_ref()).collect(),
            };
            reduce_over_layers(spec, reduce, &rx, &ry.iter().collect::<Vec<_>>())
        })
        .collect()
}

/// Every layer with its samples taken in the order `idx`.
fn reindex(layers: &[Arc<Derived>], idx: &Arc<Vec<u32>>) -> Vec<Derived> {
    layers
        .iter()
        .map(|d| Derived::reindexed(d, idx.clone()))
        .collect()
}

/// Significance level of the calibration threshold unless `--alpha` says otherwise.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// A raw score against its permutation null.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct NullSummary {
    /// Number of permutations.
    pub permutations: usize,
    /// Mean of the null draws.
    pub null_mean: f64,
    /// Sample standard deviation of the null draws.
    pub null_sd: f64,
    /// (1 + #{null ≥ raw}) / (1 + P).
    pub p_value: f64,
    /// (raw − null mean) / null sd.
    pub z: f64,
    /// The critical threshold τ: the ⌈(1 − α)(P + 1)⌉-th smallest of the raw score together
    /// with the P null scores.
    pub tau: f64,
    /// clamp((raw − τ) / (max attainable − τ), 0, 1), the calibrated score of Gröger, Wen &
    /// Brbić (2026, Algorithms 1–2): 0 for anything a permutation reaches at level α, 1 at
    /// the maximum.
    pub calibrated: f64,
    /// (raw − null mean) / (max attainable − null mean): 0 at the null's mean, 1 at the
    /// maximum, not clamped (prh's earlier `calibrated`).
    pub chance_adjusted: f64,
}

/// The critical threshold τ at level `alpha` (in (0, 1)) from the raw score and its null
/// draws, as the published Algorithm 1: the order statistic ⌈(1 − α)(P + 1)⌉ (1-based) of the
/// P + 1 values.
pub fn critical_threshold(raw: f64, null: &[f64], alpha: f64) -> f64 {
    let mut all: Vec<f64> = null.iter().copied().chain([raw]).collect();
    all.sort_by(f64::total_cmp);
    let k = ((1.0 - alpha) * all.len() as f64).ceil() as usize;
    all[k.clamp(1, all.len()) - 1]
}

/// Summarises `raw` against null draws; `max` is the largest value the metric attains and
/// `alpha` the level of the calibration threshold.
pub fn summarize(raw: f64, null: &[f64], max: f64, alpha: f64) -> NullSummary {
    let p = null.len();
    let mean = null.iter().sum::<f64>() / p as f64;
    let var = null.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (p.max(2) - 1) as f64;
    let sd = var.sqrt();
    let ge = null.iter().filter(|&&v| v >= raw).count();
    let tau = critical_threshold(raw, null, alpha);
    NullSummary {
        permutations: p,
        null_mean: mean,
        null_sd: sd,
        p_value: (1 + ge) as f64 / (1 + p) as f64,
        z: if sd > 0.0 { (raw - mean) / sd } else { 0.0 },
        tau,
        calibrated: ((raw - tau) / (max - tau).max(1e-12)).clamp(0.0, 1.0),
        chance_adjusted: if max > mean {
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

/// Pearson correlation of two equally long samples (`None` when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    if x.len() < 2 || x.len() != y.len() {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Average ranks (ties share their mean rank), 1-based.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut s = 0;
    while s < idx.len() {
        let mut e = s + 1;
        while e < idx.len() && x[idx[e]] == x[idx[s]] {
            e += 1;
        }
        let avg = (s + e + 1) as f64 / 2.0;
        for &i in &idx[s..e] {
            r[i] = avg;
        }
        s = e;
    }
    r
}

/// Spearman rank correlation (Pearson on average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&ranks(x), &ranks(y))
}

/// Two-sided p-value of Spearman ρ: exact (all n! orderings) for n ≤ 8, where the t
/// approximation is badly off (it gives 0 for ρ = 1 at n = 4, the exact value is 1/12),
/// else [`correlation_p`].
pub fn spearman_p(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    let rho = spearman(x, y)?;
    if n > 8 {
        return correlation_p(rho, n);
    }
    let rx = ranks(x);
    let ry = ranks(y);
    let mut perm: Vec<usize> = (0..n).collect();
    let (mut hits, mut total) = (0u64, 0u64);
    // Heap's algorithm over all orderings of y's ranks.
    let mut c = vec![0usize; n];
    let mut check = |perm: &[usize]| {
        let yp: Vec<f64> = perm.iter().map(|&i| ry[i]).collect();
        if pearson(&rx, &yp).is_some_and(|r| r.abs() >= rho.abs() - 1e-12) {
            hits += 1;
        }
        total += 1;
    };
    check(&perm);
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                perm.swap(0, i);
            } else {
                perm.swap(c[i], i);
            }
            check(&perm);
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    Some(hits as f64 / total as f64)
}

/// Two-sided p-value of a correlation r over n pairs, from t = r √((n−2)/(1−r²)) with n − 2
/// degrees of freedom (exact for Pearson under normality; the usual approximation for
/// Spearman).
pub fn correlation_p(r: f64, n: usize) -> Option<f64> {
    if n < 3 {
        return None;
    }
    let df = (n - 2) as f64;
    if r.abs() >= 1.0 {
        return Some(0.0);
    }
    let t = r * (df / (1.0 - r * r)).sqrt();
    // P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2).
    Some(incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))
}

/// Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes §6.4).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Smallest magnitude the continued fraction lets d and c take.
const TINY: f64 = 1e-300;

/// One step of the modified Lentz evaluation of a continued fraction with coefficient `aa`:
/// updates d and c (kept away from zero) and returns the factor d·c.
fn fraction_step(aa: f64, d: &mut f64, c: &mut f64) -> f64 {
    *d = 1.0 + aa * *d;
    if d.abs() < TINY {
        *d = TINY;
    }
    *c = 1.0 + aa / *c;
    if c.abs() < TINY {
        *c = TINY;
    }
    *d = 1.0 / *d;
    *d * *c
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= fraction_step(m * (b - m) * x / ((qam + m2) * (a + m2)), &mut d, &mut c);
        let del = fraction_step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            &mut d,
            &mut c,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Least-squares line y = slope · x + intercept.
pub fn least_squares(x: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    let n = x.len() as f64;
    if x.len() < 2 {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// Percentile bootstrap 95% interval of Pearson r, resampling the pairs (`b` resamples).
pub fn pearson_ci95(x: &[f64], y: &[f64], b: usize, seed: u64) -> Option<[f64; 2]> {
    let n = x.len();
    if n < 3 {
        return None;
    }
    let draws: Vec<f64> = (0..b)
        .filter_map(|i| {
            let idx = resample(seed, i, n);
            let xs: Vec<f64> = idx.iter().map(|&j| x[j as usize]).collect();
            let ys: Vec<f64> = idx.iter().map(|&j| y[j as usize]).collect();
            pearson(&xs, &ys)
        })
        .collect();
    (draws.len() >= b / 2).then(|| ci95(&draws))
}

/// Benjamini–Hochberg q-values of `ps`, in their order: q_(i) = min over j ≥ i of p_(j)·m/j for
/// the p-values sorted ascending (ranks j from 1), capped at 1. Calling every pair with
/// q ≤ α aligned controls the false-discovery rate at α over the family (independent or
/// positively dependent tests).
pub fn bh_q_values(ps: &[f64]) -> Vec<f64> {
    let m = ps.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| ps[a].total_cmp(&ps[b]).then(a.cmp(&b)));
    let mut q = vec![0.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(ps[i] * m as f64 / (rank + 1) as f64);
        q[i] = running;
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Kernel, Metric, prep};
    use ndarray::Array2;

    fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut r = Rng::new(seed);
        Array2::from_shape_fn((n, d), |_| r.normal() as f32)
    }

    fn derived(x: Array2<f32>) -> Arc<Derived> {
        Arc::new(Derived::new(prep::prepare(x.view(), None, true).unwrap()))
    }

    /// `range` draws of the max-over-layers mutual kNN under resampling `how`.
    fn knn_draws(
        how: Resampling,
        (xs, ys): (&[Arc<Derived>], &[Arc<Derived>]),
        seed: u64,
        range: Range<usize>,
    ) -> Vec<f64> {
        let spec = MetricSpec::new(Metric::MutualKnn);
        draws(how, &spec, Reduce::Max, (xs, ys), seed, range).unwrap()
    }

    #[test]
    fn q_values_match_a_hand_computation() {
        // Sorted p: 0.001 0.008 0.039 0.041 0.042 0.06 0.074 0.205 (m = 8), given shuffled.
        // p·m/rank: 0.008 0.032 0.104 0.082 0.0672 0.08 0.08457 0.205; then the running
        // minimum from the largest rank down.
        let ps = [0.042, 0.001, 0.205, 0.039, 0.06, 0.008, 0.074, 0.041];
        let want = [0.0672, 0.008, 0.205, 0.0672, 0.08, 0.032, 0.0845714, 0.0672];
        for (q, w) in bh_q_values(&ps).iter().zip(want) {
            assert!((q - w).abs() < 1e-6, "{q} vs {w}");
        }
        // Capped at 1, equal p-values share a q-value, and one test is its own q.
        assert_eq!(bh_q_values(&[0.9, 0.9, 0.9]), vec![0.9, 0.9, 0.9]);
        assert_eq!(bh_q_values(&[0.7, 0.95]), vec![0.95, 0.95]);
        assert_eq!(bh_q_values(&[0.3]), vec![0.3]);
        assert!(bh_q_values(&[]).is_empty());
    }

    #[test]
    fn correlations_and_p_values_match_known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0];
        let r = pearson(&x, &y).unwrap();
        assert!((r - 0.828_571_428_571_428_6).abs() < 1e-12, "{r}");
        // scipy.stats.pearsonr(x, y).pvalue = 0.04156268...
        let p = correlation_p(r, 6).unwrap();
        assert!((p - 0.041_562_7).abs() < 1e-6, "{p}");
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert!((spearman(&x, &[1.0, 4.0, 9.0, 16.0, 25.0, 36.0]).unwrap() - 1.0).abs() < 1e-12);
        // Exact: ρ = 1 at n = 4 is reached by 2 of 24 orderings (ρ = ±1).
        let p4 = spearman_p(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0]).unwrap();
        assert!((p4 - 2.0 / 24.0).abs() < 1e-12, "{p4}");
        let (m, b) = least_squares(&x, &[3.0, 5.0, 7.0, 9.0, 11.0, 13.0]).unwrap();
        assert!((m - 2.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((incomplete_beta(2.0, 3.0, 0.4) - 0.5248).abs() < 1e-12);
        let ci = pearson_ci95(&x, &y, 500, 1).unwrap();
        assert!(ci[0] < r && r < ci[1], "{ci:?}");
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
            let raw = reduce_over_layers(&spec, Reduce::Max, &xs, &ys).unwrap();
            let null = knn_draws(Resampling::Permutation, (&xs, &ys), s, 0..99);
            let sum = summarize(raw, &null, 1.0, DEFAULT_ALPHA);
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
        let raw = reduce_over_layers(&spec, Reduce::Max, &xs, &ys).unwrap();
        let null = knn_draws(Resampling::Permutation, (&xs, &ys), 0, 0..199);
        let s = summarize(raw, &null, 1.0, DEFAULT_ALPHA);
        assert_eq!(s.p_value, 1.0 / 200.0);
        assert!(s.calibrated > 0.2, "{s:?}");
        assert!(s.z > 10.0, "{s:?}");
        // Draws are reproducible one by one: a longer sample extends the shorter.
        let more = knn_draws(Resampling::Permutation, (&xs, &ys), 0, 199..250);
        let all = knn_draws(Resampling::Permutation, (&xs, &ys), 0, 0..250);
        assert_eq!([null, more].concat(), all);
        let boot = knn_draws(Resampling::Bootstrap, (&xs, &ys), 0, 0..50);
        let ci = ci95(&boot);
        assert!(ci[0] < ci[1] && ci[0] > s.null_mean, "{ci:?}");
    }

    #[test]
    fn calibration_follows_the_published_algorithm() {
        // 19 null draws 0.01 … 0.19 and a raw score of 0.30: 20 values in all.
        let null: Vec<f64> = (1..=19).map(|i| i as f64 / 100.0).collect();
        // α = 0.05: τ is the ⌈0.95 · 20⌉ = 19th smallest, 0.19.
        let s = summarize(0.30, &null, 1.0, 0.05);
        assert_eq!(s.tau, 0.19);
        assert!((s.calibrated - 0.11 / 0.81).abs() < 1e-12, "{s:?}");
        assert_eq!(s.p_value, 1.0 / 20.0);
        assert!((s.chance_adjusted - (0.30 - 0.10) / 0.90).abs() < 1e-12);
        // α = 0.5: the ⌈0.5 · 20⌉ = 10th smallest, 0.10.
        assert_eq!(critical_threshold(0.30, &null, 0.5), 0.10);
        // A raw score the null reaches calibrates to 0, never below.
        let low = summarize(0.15, &null, 1.0, 0.05);
        assert_eq!(low.tau, 0.18);
        assert_eq!(low.calibrated, 0.0);
        assert!(low.chance_adjusted > 0.0);
        // K = 1000, α = 0.05: the 951st smallest of 1001 values.
        let big: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert_eq!(critical_threshold(5000.0, &big, 0.05), 950.0);
        // lcs_knn's maximum is k: the score is scaled to it.
        let s = summarize(6.0, &[1.0, 2.0, 3.0], 10.0, 0.05);
        assert_eq!(s.tau, 6.0);
        assert_eq!(s.calibrated, 0.0);
    }
}
