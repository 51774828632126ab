//! Neighbourhood metrics on ordered k-nearest-neighbour lists (official meanings, docs/design.md §4).

use super::derived::{Knn, Ties};

/// `mutual_knn`: mean over i of |kNN_X(i) ∩ kNN_Y(i)| / k. Range [0, 1]; chance ≈ k/(n−1).
/// Huh et al. 2024, the Platonic Representation Hypothesis' main metric.
pub fn mutual_knn(a: &Knn, b: &Knn, n: usize) -> f64 {
    let total: usize = overlaps(a, b, n).iter().map(|&c| c as usize).sum();
    total as f64 / (n * a.k) as f64
}

/// |kNN_A(i) ∩ kNN_B(i)| for every i, with a stamp array (one pass over each list, no
/// branches on list contents).
fn overlaps(a: &Knn, b: &Knn, n: usize) -> Vec<u32> {
    let mut stamp = vec![u32::MAX; n];
    (0..n)
        .map(|i| {
            for &j in b.row(i) {
                stamp[j as usize] = i as u32;
            }
            a.row(i)
                .iter()
                .map(|&j| (stamp[j as usize] == i as u32) as u32)
                .sum()
        })
        .collect()
}

/// Rows of either side whose k-th and (k+1)-th neighbours tie: where the official number
/// depends on how the platform's unstable sort orders equal values.
pub fn tied_rows(a: &Ties, b: &Ties) -> usize {
    let (mut i, mut j, mut count) = (0, 0, 0);
    while i < a.rows.len() || j < b.rows.len() {
        let ra = a.rows.get(i).map_or(u32::MAX, |r| r.row);
        let rb = b.rows.get(j).map_or(u32::MAX, |r| r.row);
        count += 1;
        i += usize::from(ra <= rb);
        j += usize::from(rb <= ra);
    }
    count
}

/// `mutual_knn` averaged exactly over uniformly random tie-breaking at the k boundary, each
/// row and side independently: by linearity, E|A ∩ B| = Σ_j P(j ∈ A) · P(j ∈ B).
pub fn mutual_knn_expected(a: &Knn, ta: &Ties, b: &Knn, tb: &Ties, n: usize) -> f64 {
    let exact: usize = overlaps(a, b, n)
        .iter()
        .enumerate()
        .filter(|(i, _)| ta.row(*i).is_none() && tb.row(*i).is_none())
        .map(|(_, &c)| c as usize)
        .sum();
    let mut pb = vec![0.0f64; n];
    let mut tied = 0.0;
    let rows = ta
        .rows
        .iter()
        .map(|r| r.row)
        .chain(tb.rows.iter().map(|r| r.row));
    let mut seen: Vec<u32> = rows.collect();
    seen.sort_unstable();
    seen.dedup();
    for &i in &seen {
        let i = i as usize;
        let cb = tb.candidates(b, i);
        for &(j, p) in &cb {
            pb[j as usize] = p;
        }
        tied += ta
            .candidates(a, i)
            .iter()
            .map(|&(j, p)| p * pb[j as usize])
            .sum::<f64>();
        for &(j, _) in &cb {
            pb[j as usize] = 0.0;
        }
    }
    (exact as f64 + tied) / (n * a.k) as f64
}

/// `cycle_knn` averaged exactly over uniformly random tie-breaking: row i is hit unless none of
/// its Y-neighbours j has i among its X-neighbours. The X rows are independent of one another
/// and of Y, so P(miss) = E over i's Y-set of Π (1 − P(i ∈ A_j)); for a tied Y row the set is
/// `sure` plus a uniform draw of `picks` from `group`, whose expected product is the
/// normalised elementary symmetric polynomial of the group's factors.
pub fn cycle_knn_expected(a: &Knn, ta: &Ties, b: &Knn, tb: &Ties, n: usize) -> f64 {
    let hits: f64 = (0..n)
        .map(|i| {
            let q = |j: u32| 1.0 - ta.p(a, j as usize, i as u32);
            let miss = match tb.row(i) {
                None => b.row(i).iter().map(|&j| q(j)).product::<f64>(),
                Some(t) => {
                    let sure: f64 = t.sure.iter().map(|&j| q(j)).product();
                    sure * mean_product_of_subset(t.group.iter().map(|&j| q(j)), t.picks)
                }
            };
            1.0 - miss
        })
        .sum();
    hits / n as f64
}

/// E[Π_{j ∈ S} q_j] for S a uniformly random r-subset of the q's: e_r(q) / C(m, r), built one
/// element at a time as f_t = e_t / C(s, t), which stays in [0, 1] (no overflow for large m).
fn mean_product_of_subset(q: impl Iterator<Item = f64>, r: usize) -> f64 {
    let mut f = vec![0.0f64; r + 1];
    f[0] = 1.0;
    for (s, qv) in q.enumerate() {
        let s1 = (s + 1) as f64;
        for t in (1..=r.min(s + 1)).rev() {
            let t_f = t as f64;
            f[t] = (s1 - t_f) / s1 * f[t] + t_f / s1 * qv * f[t - 1];
        }
    }
    f[r]
}

/// `jaccard_knn`: mean over i of |A ∩ B| / |A ∪ B| for the two k-neighbour sets. Range [0, 1];
/// chance ≈ k / (2(n−1) − k) on independent features.
pub fn jaccard_knn(a: &Knn, b: &Knn, n: usize) -> f64 {
    let k = a.k as f64;
    let sum: f64 = overlaps(a, b, n)
        .iter()
        .map(|&s| s as f64 / (2.0 * k - s as f64))
        .sum();
    sum / n as f64
}

/// `cycle_knn`: fraction of i that are among the X-neighbours of at least one of their
/// Y-neighbours. Range [0, 1]; chance ≈ 1 − (1 − k/(n−1))^k on independent features (about
/// 0.6 at k = 10, n = 118), so it must be read against its null.
pub fn cycle_knn(a: &Knn, b: &Knn, n: usize) -> f64 {
    let hits = (0..n)
        .filter(|&i| b.row(i).iter().any(|&j| a.contains(j as usize, i as u32)))
        .count();
    hits as f64 / n as f64
}

/// Rows counted by the official `lcs_knn`/`edit_distance_knn` when `pymp` is installed: its
/// results are written only by the parent of 4 forked workers, which handles the first
/// ⌈n/4⌉ rows (static schedule); the other rows stay 0. `rows_counted(n, true)` reproduces that.
pub fn rows_counted(n: usize, emulate_pymp: bool) -> usize {
    if emulate_pymp {
        n / 4 + usize::from(!n.is_multiple_of(4))
    } else {
        n
    }
}

/// `lcs_knn`: mean over i of the length of the longest common subsequence of the two ordered
/// neighbour lists (not divided by k). Range [0, k]; near the mutual overlap count at chance
/// (≈ k²/(n−1) for k ≪ n).
pub fn lcs_knn(a: &Knn, b: &Knn, n: usize, emulate_pymp: bool) -> f64 {
    let rows = rows_counted(n, emulate_pymp);
    let sum: usize = (0..rows).map(|i| lcs(a.row(i), b.row(i))).sum();
    sum as f64 / n as f64
}

/// `edit_distance_knn`: 1 − mean(Levenshtein distance of the ordered lists) / k. Range [0, 1];
/// ≈ 0 at chance (disjoint lists are k edits apart).
pub fn edit_distance_knn(a: &Knn, b: &Knn, n: usize, emulate_pymp: bool) -> f64 {
    let rows = rows_counted(n, emulate_pymp);
    let sum: usize = (0..rows).map(|i| levenshtein(a.row(i), b.row(i))).sum();
    1.0 - sum as f64 / n as f64 / a.k as f64
}

/// Length of the longest common subsequence.
pub fn lcs(x: &[u32], y: &[u32]) -> usize {
    let mut prev = vec![0usize; y.len() + 1];
    let mut cur = vec![0usize; y.len() + 1];
    for &xi in x {
        for (j, &yj) in y.iter().enumerate() {
            cur[j + 1] = if xi == yj {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[y.len()]
}

/// Levenshtein distance (unit insert, delete, substitute).
pub fn levenshtein(x: &[u32], y: &[u32]) -> usize {
    let mut prev: Vec<usize> = (0..=y.len()).collect();
    let mut cur = vec![0usize; y.len() + 1];
    for (i, &xi) in x.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &yj) in y.iter().enumerate() {
            cur[j + 1] = if xi == yj {
                prev[j]
            } else {
                1 + prev[j].min(prev[j + 1]).min(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[y.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_distances() {
        assert_eq!(lcs(&[1, 2, 3, 4], &[2, 4, 3]), 2);
        assert_eq!(levenshtein(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(levenshtein(&[1, 2, 3], &[4, 5, 6]), 3);
        assert_eq!(levenshtein(&[1, 2, 3], &[2, 3, 4]), 2);
        assert_eq!(rows_counted(118, true), 30);
        assert_eq!(rows_counted(263, true), 66);
        assert_eq!(rows_counted(8, true), 2);
    }

    #[test]
    fn mean_product_of_a_random_subset_matches_enumeration() {
        let q = [0.9, 0.2, 0.5, 1.0, 0.0, 0.7];
        for r in 0..=q.len() {
            let (mut sum, mut count) = (0.0, 0);
            for mask in 0u32..1 << q.len() {
                if mask.count_ones() as usize == r {
                    sum += (0..q.len())
                        .filter(|&i| mask >> i & 1 == 1)
                        .map(|i| q[i])
                        .product::<f64>();
                    count += 1;
                }
            }
            let got = mean_product_of_subset(q.iter().copied(), r);
            assert!((got - sum / count as f64).abs() < 1e-12, "r = {r}");
        }
    }
}
