//! SVCCA and the metrics beyond the official set: Procrustes, RSA, linear R².

use faer::{Mat, Side};
use ndarray::Array2;

use super::derived::Derived;

/// `svcca`: mean canonical correlation between the top-`c` left singular subspaces of the
/// column-standardised features. Both bases are orthonormal and centred, so the canonical
/// correlations are the singular values of U_Xᵀ U_Y (what scikit-learn's CCA converges to).
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

/// Centres columns and scales to unit Frobenius norm (f64).
fn centred_unit(x: &Array2<f32>) -> Mat<f64> {
    let (n, d) = x.dim();
    let mut m = Mat::<f64>::zeros(n, d);
    for j in 0..d {
        let mean = x.column(j).iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        for i in 0..n {
            m[(i, j)] = x[[i, j]] as f64 - mean;
        }
    }
    let norm = m.norm_l2();
    if norm > 0.0 {
        m /= faer::Scale(norm);
    }
    m
}

/// `procrustes`: orthogonal Procrustes similarity max_Q ⟨X, Y Q⟩ = ‖XᵀY‖_* for column-centred,
/// Frobenius-normalised X and Y (Williams et al. 2021). Range [0, 1]; the angular Procrustes
/// distance is arccos of it.
pub fn procrustes(a: &Derived, b: &Derived) -> Result<f64, String> {
    let x = centred_unit(&a.x);
    let y = centred_unit(&b.x);
    let xty = x.transpose() * &y;
    let s = xty
        .singular_values()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    Ok(s.iter().sum::<f64>().min(1.0))
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
/// on each training fold; λ = `ridge` × mean diagonal of the training kernel. Computed in the
/// dual (kernel) form from X's Gram matrix. Range (−∞, 1]; not symmetric (X → Y).
pub fn linear_r2(a: &Derived, b: &Derived, ridge: f64) -> Result<f64, String> {
    let n = a.n();
    const FOLDS: usize = 5;
    if n < 2 * FOLDS {
        return Err(format!("needs at least {} samples", 2 * FOLDS));
    }
    let g = a.gram();
    let y = &b.x;
    let dy = y.ncols();
    let mut sse = 0.0;
    let mut sst = 0.0;
    for f in 0..FOLDS {
        let train: Vec<usize> = (0..n).filter(|i| i % FOLDS != f).collect();
        let test: Vec<usize> = (0..n).filter(|i| i % FOLDS == f).collect();
        let nt = train.len();
        // Centred training kernel via the Gram matrix.
        let m: Vec<f64> = (0..n)
            .map(|i| train.iter().map(|&t| g[i * n + t] as f64).sum::<f64>() / nt as f64)
            .collect();
        let c = train.iter().map(|&t| m[t]).sum::<f64>() / nt as f64;
        let kc = |i: usize, j: usize| g[i * n + j] as f64 - m[i] - m[j] + c;
        let mut ktt = Mat::<f64>::from_fn(nt, nt, |p, q| kc(train[p], train[q]));
        let lambda = ridge * (0..nt).map(|p| ktt[(p, p)]).sum::<f64>() / nt as f64;
        for p in 0..nt {
            ktt[(p, p)] += lambda.max(1e-12);
        }
        let ymean: Vec<f64> = (0..dy)
            .map(|j| train.iter().map(|&t| y[[t, j]] as f64).sum::<f64>() / nt as f64)
            .collect();
        let yt = Mat::<f64>::from_fn(nt, dy, |p, j| y[[train[p], j]] as f64 - ymean[j]);
        let chol = ktt
            .llt(Side::Lower)
            .map_err(|_| "ridge system is not positive definite".to_string())?;
        let alpha = faer::linalg::solvers::Solve::solve(&chol, &yt);
        let kst = Mat::<f64>::from_fn(test.len(), nt, |p, q| kc(test[p], train[q]));
        let pred = &kst * &alpha;
        for (p, &i) in test.iter().enumerate() {
            for j in 0..dy {
                let truth = y[[i, j]] as f64 - ymean[j];
                sse += (truth - pred[(p, j)]).powi(2);
                sst += truth * truth;
            }
        }
    }
    if sst == 0.0 {
        return Err("Y has no variance".into());
    }
    Ok(1.0 - sse / sst)
}
