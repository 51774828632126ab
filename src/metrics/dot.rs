//! Dot products accumulated in f64 with a fixed order (the same bits for any number of
//! threads): the leaf under both the derived data (a kernel's ⟨K, K⟩) and the kernel metrics.

use rayon::prelude::*;

/// ⟨K, L⟩_F accumulated in f64. Chunks are summed in parallel, their sums in order, so the
/// result is the same bits for any number of threads.
pub fn frobenius(a: &[f32], b: &[f32]) -> f64 {
    let parts: Vec<f64> = a
        .par_chunks(4096)
        .zip(b.par_chunks(4096))
        .map(|(x, y)| dot_f64(x, y))
        .collect();
    parts.iter().sum()
}

/// Σ x_i y_i in f64 with four independent accumulators (so the loop vectorises).
pub(crate) fn dot_f64<T: Copy + Into<f64>>(x: &[T], y: &[T]) -> f64 {
    let mut acc = [0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (p, q) in xc.zip(yc) {
        for t in 0..4 {
            acc[t] += p[t].into() * q[t].into();
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(&p, &q)| p.into() * q.into()).sum();
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}
