//! Neighbourhood metrics on ordered k-nearest-neighbour lists (official meanings, DESIGN.md §4).

use super::derived::Knn;

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
}
