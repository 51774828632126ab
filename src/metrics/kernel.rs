//! The CKA family: HSIC-based similarity of kernel matrices (docs/design.md §4).

use rayon::prelude::*;

use super::derived::{KernelStats, Knn};
use super::dot::dot_f64;
pub use super::dot::frobenius;

/// Entries per step of [`dot_block`]: 2,048 (8 KiB of f32, 16 KiB of f64) per vector, so a
/// block of 24 + 24 vectors' step stays in cache while every pair of the block uses it.
const BLOCK_CHUNK: usize = 2048;

/// Steps per parallel task of [`dot_block`]: a fixed grouping, so the order of the f64
/// additions (and the result's bits) does not depend on the number of threads.
const BLOCK_STEPS_PER_TASK: usize = 16;

/// x_i · y_j for every pair of a block of equally long vectors (flattened kernels for the CKA
/// family, RDM ranks for RSA), reading each vector from memory once per block instead of once
/// per pair: the vectors are walked a cache-sized step at a time (steps in parallel), and every
/// pair's dot product over the step is accumulated in f64. A product of two f32 values is exact
/// in f64, so for kernels the result equals [`frobenius`] up to the order of the additions;
/// that order is fixed (tasks of a fixed number of steps, their sums added in task order), so
/// two runs give the same bits.
pub fn dot_block<T: Copy + Into<f64> + Sync>(ks: &[&[T]], ls: &[&[T]]) -> Vec<Vec<f64>> {
    let (a, b) = (ks.len(), ls.len());
    let len = ks.first().map_or(0, |k| k.len());
    let task = BLOCK_CHUNK * BLOCK_STEPS_PER_TASK;
    let parts: Vec<Vec<f64>> = (0..len.div_ceil(task))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f64; a * b];
            let end = (t * task + task).min(len);
            for start in (t * task..end).step_by(BLOCK_CHUNK) {
                let r = start..(start + BLOCK_CHUNK).min(end);
                for (i, k) in ks.iter().enumerate() {
                    let k = &k[r.clone()];
                    for (j, l) in ls.iter().enumerate() {
                        acc[i * b + j] += dot_f64(k, &l[r.clone()]);
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; a * b];
    for p in parts {
        total.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    total.chunks(b.max(1)).map(|r| r.to_vec()).collect()
}

/// Biased HSIC tr(K H L H) = ⟨K, L⟩ − (2/n) r_K·r_L + s_K s_L / n², given ⟨K, L⟩.
pub fn hsic_biased(kl: f64, k: &KernelStats, l: &KernelStats) -> f64 {
    let n = k.row_sums.len() as f64;
    let rr: f64 = k.row_sums.iter().zip(&l.row_sums).map(|(a, b)| a * b).sum();
    kl - 2.0 / n * rr + k.total * l.total / (n * n)
}

/// Unbiased HSIC (Song et al. 2012, eq. 5) on K, L with zeroed diagonals, given ⟨K, L⟩.
pub fn hsic_unbiased(kl: f64, k: &KernelStats, l: &KernelStats) -> f64 {
    let m = k.row_sums.len() as f64;
    let kl_t = kl - k.diag.iter().zip(&l.diag).map(|(a, b)| a * b).sum::<f64>();
    let sk = k.total - k.diag.iter().sum::<f64>();
    let sl = l.total - l.diag.iter().sum::<f64>();
    let rr: f64 = k
        .row_sums
        .iter()
        .zip(&k.diag)
        .zip(l.row_sums.iter().zip(&l.diag))
        .map(|((rk, dk), (rl, dl))| (rk - dk) * (rl - dl))
        .sum();
    (kl_t + sk * sl / ((m - 1.0) * (m - 2.0)) - 2.0 * rr / (m - 2.0)) / (m * (m - 3.0))
}

/// CKA = HSIC(K, L) / (√(HSIC(K, K) · HSIC(L, L)) + 1e-6), biased or unbiased estimator
/// (Kornblith et al. 2019). Range [0, 1] (biased); the biased estimator is far above 0 on
/// independent features when d is large relative to n (0.84 on the reference's random pair),
/// the unbiased one is ≈ 0 there.
pub fn cka(k: &KernelStats, l: &KernelStats, unbiased: bool) -> f64 {
    let (Some(km), Some(lm)) = (&k.mat, &l.mat) else {
        panic!("cka of kernels in feature space needs cka_from_dot with ‖XᵀY‖²");
    };
    cka_from_dot(frobenius(km, lm), k, l, unbiased)
}

/// [`cka`] given ⟨K, L⟩_F (from [`frobenius`] or [`dot_block`]).
pub fn cka_from_dot(kl: f64, k: &KernelStats, l: &KernelStats, unbiased: bool) -> f64 {
    let f = if unbiased { hsic_unbiased } else { hsic_biased };
    let kl = f(kl, k, l);
    let kk = f(k.self_dot, k, k);
    let ll = f(l.self_dot, l, l);
    kl / ((kk * ll).sqrt() + 1e-6)
}

/// Unbiased HSIC of the masked kernels M∘K and M∘L, where M_ij = 1 when j is among i's
/// neighbours in both `na` and `nb` (self excluded), as the official `cknna` computes it. The
/// kernel values are the neighbours' canonical similarities carried by the lists (symmetric,
/// so K_ji = K_ij), so no n × n matrix is read: O(n·k²).
pub fn cknna_similarity(na: &Knn, nb: &Knn, n: usize) -> f64 {
    let mut sum_k = 0.0;
    let mut sum_l = 0.0;
    let mut trace_term = 0.0; // Σ_ij K'_ij L'_ji
    let mut col_k = vec![0f64; n]; // Σ_i K'_il
    let mut row_l = vec![0f64; n]; // Σ_j L'_lj
    for (i, row_l_i) in row_l.iter_mut().enumerate() {
        let (brow, bsims) = (nb.row(i), nb.row_sims(i));
        for (&j, &kv) in na.row(i).iter().zip(na.row_sims(i)) {
            let Some(p) = brow.iter().position(|&q| q == j) else {
                continue;
            };
            let lv = bsims[p];
            let j_us = j as usize;
            sum_k += kv;
            sum_l += lv;
            col_k[j_us] += kv;
            *row_l_i += lv;
            if na.contains(j_us, i as u32) && nb.contains(j_us, i as u32) {
                trace_term += kv * lv;
            }
        }
    }
    let m = n as f64;
    let cross: f64 = col_k.iter().zip(&row_l).map(|(a, b)| a * b).sum();
    (trace_term + sum_k * sum_l / ((m - 1.0) * (m - 2.0)) - 2.0 * cross / (m - 2.0))
        / (m * (m - 3.0))
}

/// `cknna` = sim(K, L) / (√(sim(K, K) · sim(L, L)) + 1e-6), sim as [`cknna_similarity`]
/// (Huh et al. 2024). At most 1; ≈ 0 on independent features.
pub fn cknna(na: &Knn, nb: &Knn, n: usize) -> f64 {
    let kl = cknna_similarity(na, nb, n);
    let kk = cknna_similarity(na, na, n);
    let ll = cknna_similarity(nb, nb, n);
    kl / ((kk * ll).sqrt() + 1e-6)
}
