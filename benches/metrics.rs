//! Metric speed on this machine. Run: `cargo bench --bench metrics`.
//! 1. One Gram matrix, n = 1024, d = 4096, f32: seconds and GFLOP/s counted as 2·n²·d.
//! 2. Every metric on one pair (n = 1024, d = 4096): derive both sides, then the pair cost.
//! 3. A 24 × 24 layer-pair best-layer search for mutual_knn (n = 1024, d = 1024): prh's
//!    derive-once path against recomputing both neighbour sets for every layer pair as the
//!    official loop does (same Gram and kNN code), and their ratio.

mod common;
use common::size;

use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use prh::layers;
use prh::metrics::{ALL, Derived, Metric, MetricSpec, derived, graph, knn, prep};
use prh::rng::Rng;
use rayon::prelude::*;

fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut r = Rng::new(seed);
    Array2::from_shape_fn((n, d), |_| r.normal() as f32)
}

fn prepared(n: usize, d: usize, seed: u64) -> Array2<f32> {
    prep::prepare(random(n, d, seed).view(), None, true).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    common::announce("metrics");
    let threads = rayon::current_num_threads();
    println!("rayon threads: {threads}");
    // 1. Gram.
    let (n, d) = size((1024, 4096), (96, 48));
    let x = prepared(n, d, 1);
    let _ = derived::gram(&x); // warm up
    let times: Vec<f64> = (0..size(7, 1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(derived::gram(&x));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let t = median(times);
    let flops = 2.0 * (n * n * d) as f64;
    println!(
        "gram n={n} d={d}: {:.4} s median of 7, {:.1} GFLOP/s (counted as 2·n²·d)",
        t,
        flops / t / 1e9
    );

    // 2. Every metric on one pair.
    let y = prepared(n, d, 2);
    println!(
        "\nevery metric, one pair n={n} d={d} (first: derive both sides + pair; then pair only)"
    );
    for &m in ALL {
        let spec = MetricSpec::new(m);
        let t = Instant::now();
        let (a, b) = (Derived::new(x.clone()), Derived::new(y.clone()));
        let v = spec.compute(&a, &b).unwrap();
        let first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let v2 = spec.compute(&a, &b).unwrap();
        let again = t.elapsed().as_secs_f64();
        assert_eq!(v, v2);
        println!(
            "  {:<18} first {:>8.4} s   pair only {:>8.5} s   value {v:.4}",
            m.name(),
            first,
            again
        );
    }

    // 3. 24 x 24 layer search.
    let (n, d, layers) = size((1024, 1024, 24), (96, 32, 3));
    let xs: Vec<Array2<f32>> = (0..layers)
        .map(|l| prepared(n, d, 100 + l as u64))
        .collect();
    let ys: Vec<Array2<f32>> = (0..layers)
        .map(|l| prepared(n, d, 200 + l as u64))
        .collect();
    let spec = MetricSpec::new(Metric::MutualKnn);
    let t = Instant::now();
    let g = derived::gram(&xs[0]);
    let tg = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _ = graph::knn_from_gram(&xs[0], &g, 10, None);
    let tk = t.elapsed().as_secs_f64();
    println!("\none gram n={n} d={d}: {tg:.4} s; one kNN selection (k=10): {tk:.4} s");
    // Each path 3 times, medians reported (this machine is noisy).
    let mut prh_times = Vec::new();
    let mut gram_times = Vec::new();
    let mut table = None;
    for _ in 0..3 {
        // Prepared matrices are moved into the derived data, as a sweep does; copy them first.
        let (cx, cy) = (xs.clone(), ys.clone());
        let t = Instant::now();
        let dx: Vec<Arc<Derived>> = cx
            .into_par_iter()
            .map(|x| Arc::new(Derived::new(x)))
            .collect();
        let dy: Vec<Arc<Derived>> = cy
            .into_par_iter()
            .map(|y| Arc::new(Derived::new(y)))
            .collect();
        gram_times.push(t.elapsed().as_secs_f64());
        table = Some(layers::layer_table(&spec, &dx, &dy).unwrap());
        prh_times.push(t.elapsed().as_secs_f64());
    }
    let table = table.unwrap();
    let (prh_time, t_derive) = (median(prh_times), median(gram_times));
    println!("  (of which Gram matrices: {t_derive:.3} s)");
    // As the official loop: both Gram matrices and neighbour sets per layer pair (run in
    // parallel over pairs, so both paths use both cores the same way).
    let pairs: Vec<(usize, usize)> = (0..layers)
        .flat_map(|i| (0..layers).map(move |j| (i, j)))
        .collect();
    let mut naive_times = Vec::new();
    let mut best = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        best = pairs
            .par_iter()
            .map(|&(i, j)| {
                let ka = graph::knn_from_gram(&xs[i], &derived::gram(&xs[i]), 10, None).0;
                let kb = graph::knn_from_gram(&ys[j], &derived::gram(&ys[j]), 10, None).0;
                knn::mutual_knn(&ka, &kb, n)
            })
            .reduce(|| f64::NEG_INFINITY, f64::max);
        naive_times.push(t.elapsed().as_secs_f64());
    }
    let naive = median(naive_times);
    assert!((best - table.best).abs() < 1e-12);
    println!(
        "\n24 × 24 layer search, mutual_knn, n={n} d={d} (median of 3):\n  prh (derive once):        {prh_time:.3} s\n  recompute per layer pair: {naive:.3} s\n  speed-up: {:.1}×",
        naive / prh_time
    );
}
