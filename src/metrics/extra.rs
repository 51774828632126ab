//! SVCCA and the metrics beyond the official set: Procrustes, RSA, linear R².

use faer::{Mat, Side};
use ndarray::Array2;

use super::derived::{BLOCK_ROWS, Derived, centred_cross};

/// `svcca`: mean canonical correlation between the top-`c` left singular subspaces of the
/// column-standardised features. Both bases are orthonormal and centred, so the canonical
/// correlations are the singular values of U_Xᵀ U_Y (what scikit-learn's CCA converges to).
/// Range [0, 1] (Raghu et al. 2017); at chance ≈ the mean singular value of two random
/// c-dimensional subspaces of Rⁿ (grows with c/n).
pub fn svcca(ua: &Array2<f64>, ub: &Array2<f64>) -> Result<f64, String> {
    let c = ua.ncols();
    let m = Mat::<f64>::from_fn(c, c, |i, j| {
        ua.column(i)
            .iter()
            .zip(ub.column(j).iter())
            .map(|(a, b)| a * b)
            .sum()
    });
    let s = m
        .singular_values()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    Ok(s.iter().map(|v| v.min(1.0)).sum::<f64>() / c as f64)
}

/// `procrustes`: orthogonal Procrustes similarity max_Q ⟨X, Y Q⟩ = ‖XᵀY‖_* for column-centred,
/// Frobenius-normalised X and Y (Williams et al. 2021). Range [0, 1]; the angular Procrustes
/// distance is arccos of it. At chance it still grows with min(d, n)/n, so compare against
/// the permutation null. Computed on each side's reduced basis
/// ([`Derived::procrustes_basis`]), so the cost is bounded by min(n, d).
pub fn procrustes(a: &Derived, b: &Derived) -> Result<f64, String> {
    let za = a.procrustes_basis();
    let zb = b.procrustes_basis();
    let m = za.transpose() * &*zb;
    let s = m
        .singular_values()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    Ok(s.iter().sum::<f64>().min(1.0))
}

/// The canonical correlations of two representations, largest first, with the left singular
/// vectors (columns of U, d_x × min(d_x, d_y)) when `vectors`.
fn canonical(
    a: &Derived,
    b: &Derived,
    vectors: bool,
) -> Result<(Vec<f64>, Option<Mat<f64>>), String> {
    let (ca, cb) = (a.cca_basis(), b.cca_basis());
    let cross = centred_cross(a.rows(), Some(&ca.mean), b.rows(), Some(&cb.mean));
    let scale = 1.0 / (a.n() as f64 - 1.0).max(1.0);
    let t = &ca.inv_sqrt * cross * &cb.inv_sqrt * faer::Scale(scale);
    if !vectors {
        let s = t
            .singular_values()
            .map_err(|e| format!("SVD did not converge: {e:?}"))?;
        return Ok((s, None));
    }
    let svd = t
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let s: Vec<f64> = (0..svd.S().dim()).map(|i| svd.S()[i]).collect();
    Ok((s, Some(svd.U().to_owned())))
}

/// `cca`: the mean of the min(d_x, d_y) canonical correlations of the column-centred
/// features, each covariance regularised by 10⁻⁶·I (Aristotelian's `cca`). Range [0, 1].
pub fn cca(a: &Derived, b: &Derived) -> Result<f64, String> {
    let (s, _) = canonical(a, b, false)?;
    if s.is_empty() {
        return Err("no canonical correlations (a representation has no columns)".into());
    }
    Ok(s.iter().sum::<f64>() / s.len() as f64)
}

/// `pwcca`: projection-weighted CCA (Morcos et al. 2018) as Aristotelian computes it: the
/// top r = min(d_x, d_y, n − 1) canonical correlations, each weighted by the sum over samples
/// of |its canonical variable on the X side|, the weights normalised to sum to 1. Range [0, 1];
/// not symmetric (the weights come from X).
pub fn pwcca(a: &Derived, b: &Derived) -> Result<f64, String> {
    let (s, u) = canonical(a, b, true)?;
    let u = u.expect("asked for vectors");
    let r = s.len().min(a.n().saturating_sub(1));
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
    order.truncate(r);
    // Each weight: Σ_i |(x_i − mean)ᵀ·Cxx^(−1/2)·u_j|, over blocks of rows.
    let ca = a.cca_basis();
    let ur = Mat::<f64>::from_fn(u.nrows(), r, |i, j| u[(i, order[j])]);
    let proj = &ca.inv_sqrt * ur;
    let x = a.rows();
    let (n, d) = (x.n(), x.d());
    let mut w = vec![0f64; r];
    x.for_each_run(BLOCK_ROWS, |r0, rows| {
        let r1 = (r0 + BLOCK_ROWS).min(n);
        let xb = Mat::<f64>::from_fn(r1 - r0, d, |i, j| f64::from(rows[i * d + j]) - ca.mean[j]);
        let z = xb * &proj;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj += (0..z.nrows()).map(|i| z[(i, j)].abs()).sum::<f64>();
        }
    });
    let total: f64 = w.iter().sum::<f64>() + 1e-8; // Aristotelian's EPS
    Ok(order.iter().zip(&w).map(|(&i, wj)| wj / total * s[i]).sum())
}

/// `rsa`: Spearman correlation of the upper triangles of the two cosine-distance RDMs.
/// Range [−1, 1]; 0 for unrelated geometry.
pub fn rsa(a: &Derived, b: &Derived) -> f64 {
    let ra = a.rdm_ranks();
    let rb = b.rdm_ranks();
    ra.iter().zip(rb.iter()).map(|(x, y)| x * y).sum()
}

/// `linear_r2`: how well a ridge regression from X predicts Y, as held-out R² pooled over
/// 5 interleaved folds (sample i is in fold i mod 5) and all Y columns. Features are centred
/// on each training fold; λ = `ridge` × mean diagonal of the centred training kernel.
/// Computed in feature space when X is no wider than n ([`linear_r2_primal`], any n), else in
/// kernel form from the two Gram matrices (the residual sum of squares is
/// tr(Ky,SS) − 2 tr(Wᵀ Ky,TS) + tr(Wᵀ Ky,TT W) with W = (Kx,TT + λI)⁻¹ Kx,TS), so the cost
/// never grows with the larger of n and d_x. Range (−∞, 1]; not symmetric (X → Y).
pub fn linear_r2(a: &Derived, b: &Derived, ridge: f64) -> Result<f64, String> {
    let n = a.n();
    if n < 2 * FOLDS {
        return Err(format!("needs at least {} samples", 2 * FOLDS));
    }
    if a.x().ncols() <= n {
        linear_r2_primal(a, b, ridge)
    } else {
        linear_r2_dual(a, b, ridge)
    }
}

/// Folds of [`linear_r2`]: sample i is in fold i mod 5.
const FOLDS: usize = 5;

/// [`linear_r2`] in feature space, for X no wider than n: per fold the d_x × d_x system
/// (XcᵀXc + λI) M = XcᵀYc on the centred training rows, then the test rows' residuals. The
/// same number as the kernel form (ridge's primal and dual solutions are one), in O(n·d_x²)
/// time and O(d_x² + d_x·d_y) memory beyond blocks of 4,096 rows, so it runs at any n.
fn linear_r2_primal(a: &Derived, b: &Derived, ridge: f64) -> Result<f64, String> {
    /// Rows per block: the centred rows are formed a block at a time, never all at once.
    const BLOCK: usize = 4096;
    let (x, y) = (a.x(), b.x());
    let (n, dx, dy) = (x.nrows(), x.ncols(), y.ncols());
    // Rows `rows` of `m`, minus `mean`, as an f64 block.
    let centred = |m: &Array2<f32>, rows: &[usize], mean: &[f64]| {
        Mat::<f64>::from_fn(rows.len(), m.ncols(), |p, j| {
            m[[rows[p], j]] as f64 - mean[j]
        })
    };
    let (mut sse, mut sst) = (0.0, 0.0);
    for f in 0..FOLDS {
        let train: Vec<usize> = (0..n).filter(|i| i % FOLDS != f).collect();
        let test: Vec<usize> = (0..n).filter(|i| i % FOLDS == f).collect();
        let nt = train.len();
        let mean = |m: &Array2<f32>| -> Vec<f64> {
            (0..m.ncols())
                .map(|j| train.iter().map(|&i| m[[i, j]] as f64).sum::<f64>() / nt as f64)
                .collect()
        };
        let (mx, my) = (mean(x), mean(y));
        let mut system = Mat::<f64>::zeros(dx, dx);
        let mut rhs = Mat::<f64>::zeros(dx, dy);
        for rows in train.chunks(BLOCK) {
            let (xb, yb) = (centred(x, rows, &mx), centred(y, rows, &my));
            system += xb.transpose() * &xb;
            rhs += xb.transpose() * &yb;
        }
        // λ relative to the mean diagonal of the centred training kernel, tr(XcᵀXc) / n_t.
        let lambda = ridge * (0..dx).map(|j| system[(j, j)]).sum::<f64>() / nt as f64;
        for j in 0..dx {
            system[(j, j)] += lambda.max(1e-12);
        }
        let chol = system
            .llt(Side::Lower)
            .map_err(|_| "ridge system is not positive definite".to_string())?;
        let m = faer::linalg::solvers::Solve::solve(&chol, &rhs);
        for rows in test.chunks(BLOCK) {
            let (xb, yb) = (centred(x, rows, &mx), centred(y, rows, &my));
            let pred = &xb * &m;
            for q in 0..rows.len() {
                for j in 0..dy {
                    let r = yb[(q, j)] - pred[(q, j)];
                    sse += r * r;
                    sst += yb[(q, j)] * yb[(q, j)];
                }
            }
        }
    }
    if sst <= 0.0 {
        return Err("Y has no variance".into());
    }
    Ok(1.0 - sse / sst)
}

/// [`linear_r2`] in kernel form, for X wider than n.
fn linear_r2_dual(a: &Derived, b: &Derived, ridge: f64) -> Result<f64, String> {
    let n = a.n();
    let (gx, gy) = (a.gram(), b.gram());
    let mut sse = 0.0;
    let mut sst = 0.0;
    for f in 0..FOLDS {
        let train: Vec<usize> = (0..n).filter(|i| i % FOLDS != f).collect();
        let test: Vec<usize> = (0..n).filter(|i| i % FOLDS == f).collect();
        let kx = centred(gx, n, &train);
        let ky = centred(gy, n, &train);
        let nt = train.len();
        let mut ktt = Mat::<f64>::from_fn(nt, nt, |p, q| kx(train[p], train[q]));
        let lambda = ridge * (0..nt).map(|p| ktt[(p, p)]).sum::<f64>() / nt as f64;
        for p in 0..nt {
            ktt[(p, p)] += lambda.max(1e-12);
        }
        let chol = ktt
            .llt(Side::Lower)
            .map_err(|_| "ridge system is not positive definite".to_string())?;
        let kts = Mat::<f64>::from_fn(nt, test.len(), |p, q| kx(train[p], test[q]));
        let w = faer::linalg::solvers::Solve::solve(&chol, &kts);
        let ky_tt = Mat::<f64>::from_fn(nt, nt, |p, q| ky(train[p], train[q]));
        let ky_ts = Mat::<f64>::from_fn(nt, test.len(), |p, q| ky(train[p], test[q]));
        let kw = &ky_tt * &w;
        for (q, &s) in test.iter().enumerate() {
            let yy = ky(s, s);
            let cross: f64 = (0..nt).map(|p| w[(p, q)] * ky_ts[(p, q)]).sum();
            let quad: f64 = (0..nt).map(|p| w[(p, q)] * kw[(p, q)]).sum();
            sse += yy - 2.0 * cross + quad;
            sst += yy;
        }
    }
    if sst <= 0.0 {
        return Err("Y has no variance".into());
    }
    Ok(1.0 - sse / sst)
}

/// The Gram matrix of features centred on the training rows: K_ij − m_i − m_j + c.
fn centred<'a>(g: &'a [f32], n: usize, train: &[usize]) -> impl Fn(usize, usize) -> f64 + 'a {
    let nt = train.len() as f64;
    let m: Vec<f64> = (0..n)
        .map(|i| train.iter().map(|&t| g[i * n + t] as f64).sum::<f64>() / nt)
        .collect();
    let c = train.iter().map(|&t| m[t]).sum::<f64>() / nt;
    move |i, j| g[i * n + j] as f64 - m[i] - m[j] + c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn linear_r2_in_feature_space_equals_the_kernel_form() {
        for (n, dx, dy, ridge) in [(50, 6, 4, 0.1), (203, 31, 17, 1.0), (64, 64, 3, 0.01)] {
            let x = random(n, dx, 3);
            let y = &random(n, dy, 4) + &x.slice(ndarray::s![.., ..dy]).mapv(|v| 0.5 * v);
            let (a, b) = (Derived::new(x), Derived::new(y));
            let (p, d) = (
                linear_r2_primal(&a, &b, ridge).unwrap(),
                linear_r2_dual(&a, &b, ridge).unwrap(),
            );
            // The kernel form works from f32 Gram matrices: agreement to their rounding,
            // worst where the ridge system is near singular (d_x above the training rows).
            assert!(
                (p - d).abs() < 1e-5 * d.abs().max(1.0),
                "n {n} d {dx}: primal {p} vs kernel {d}"
            );
        }
    }

    fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut r = Rng::new(seed);
        Array2::from_shape_fn((n, d), |_| r.normal() as f32)
    }

    /// ‖XᵀY‖_* formed directly in d × d, for checking the reduced-basis path.
    fn direct(x: &Array2<f32>, y: &Array2<f32>) -> f64 {
        let centre = |m: &Array2<f32>| {
            let mut c = m.mapv(|v| v as f64);
            let mean = c.mean_axis(ndarray::Axis(0)).unwrap();
            c -= &mean;
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            c / norm
        };
        let (cx, cy) = (centre(x), centre(y));
        let m = cx.t().dot(&cy);
        let f = Mat::<f64>::from_fn(m.nrows(), m.ncols(), |i, j| m[[i, j]]);
        f.singular_values().unwrap().iter().sum()
    }

    #[test]
    fn procrustes_reduced_basis_equals_the_direct_nuclear_norm() {
        for (n, dx, dy) in [(30, 50, 70), (40, 12, 90), (25, 10, 8)] {
            let x = random(n, dx, 1);
            let y = random(n, dy, 2);
            let got = procrustes(&Derived::new(x.clone()), &Derived::new(y.clone())).unwrap();
            let want = direct(&x, &y);
            assert!(
                (got - want).abs() < 1e-6,
                "n={n} dx={dx} dy={dy}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn linear_r2_is_high_for_a_linear_map_and_low_for_noise() {
        let x = random(200, 20, 3);
        let w = random(20, 15, 4);
        let y = x.dot(&w);
        let r2 = linear_r2(&Derived::new(x.clone()), &Derived::new(y), 1e-4).unwrap();
        assert!(r2 > 0.99, "{r2}");
        let r2n = linear_r2(&Derived::new(x), &Derived::new(random(200, 15, 5)), 0.1).unwrap();
        assert!(r2n < 0.05, "{r2n}");
    }
}
