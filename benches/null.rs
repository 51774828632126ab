//! Permutation null cost: P = 1000 for mutual_knn on a 12 × 12 layer model pair at n = 1024,
//! against the time of one raw sweep of that pair (derive both sides + 144 cells).
//! Run: `cargo bench --bench null`.

mod common;
use common::size;

use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use prh::metrics::{Derived, Metric, MetricSpec, prep};
use prh::rng::Rng;
use prh::{layers, stats};
use rayon::prelude::*;

fn main() {
    common::announce("null");
    let (n, d, layers) = size((1024, 1024, 12), (96, 32, 3));
    let perms = size(1000, 20);
    // Two models sharing a latent, so the pair is far from its null.
    let mut r = Rng::new(1);
    let z = Array2::from_shape_fn((n, 16), |_| r.normal() as f32);
    let make = |seed: u64| -> Vec<Array2<f32>> {
        (0..layers)
            .map(|l| {
                let mut r = Rng::new(seed * 100 + l as u64);
                let w = Array2::from_shape_fn((16, d), |_| r.normal() as f32);
                let noise = Array2::from_shape_fn((n, d), |_| r.normal() as f32);
                let x = z.dot(&w) * (l as f32 / layers as f32) + noise;
                prep::prepare(x.view(), None, true).unwrap()
            })
            .collect()
    };
    let (xs, ys) = (make(1), make(2));
    let spec = MetricSpec::new(Metric::MutualKnn);
    let t = Instant::now();
    let dx: Vec<Arc<Derived>> = xs
        .into_par_iter()
        .map(|x| Arc::new(Derived::new(x)))
        .collect();
    let dy: Vec<Arc<Derived>> = ys
        .into_par_iter()
        .map(|y| Arc::new(Derived::new(y)))
        .collect();
    let table = layers::layer_table(&spec, &dx, &dy).unwrap();
    let raw = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let null = stats::draws(
        stats::Resampling::Permutation,
        &spec,
        prh::layers::Reduce::Max,
        (&dx, &dy),
        0,
        0..perms,
    )
    .unwrap();
    let null_time = t.elapsed().as_secs_f64();
    let s = stats::summarize(table.best, &null, 1.0, stats::DEFAULT_ALPHA);
    println!("12 × 12 layers, n = {n}, d = {d}, mutual_knn (k = 10)");
    println!(
        "raw sweep (derive 24 layers + 144 cells): {raw:.3} s; score {:.4}",
        table.best
    );
    println!(
        "null, P = 1000 (each the max over 144 layer pairs): {null_time:.3} s = {:.1}× the raw sweep",
        null_time / raw
    );
    println!(
        "null mean {:.4}, sd {:.4}, p = {:.4}, calibrated {:.4}",
        s.null_mean, s.null_sd, s.p_value, s.calibrated
    );
}
