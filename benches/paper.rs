//! The paper's language–vision sweep on one machine: 12 language × 17 vision models, 24 layers
//! each, d = 1024, n = 1024, f16 blobs; mutual_knn (k = 10) and unbiased_cka, cold and warm,
//! peak RSS with the default memory budget and with `--mem-mib 1024`, cells per second, and
//! the official loop's cost per cell (both neighbour sets recomputed for every layer pair) on
//! one model pair of the same shape. Runs the real `prh` binary.
//! Run: `cargo bench --bench paper` (about 1.4 GB of blobs in a temporary directory;
//! `PRH_BENCH_BASELINE=/path/to/old/prh` times that binary too, on a copy, step by step;
//! `PRH_BENCH_DIR=DIR` builds the registry in DIR/reg and keeps it, e.g. to profile a sweep).

use std::sync::Arc;
use std::time::Instant;

mod common;
use common::{align_language_vision, subjects};

use prh::formats::npy;
use prh::metrics::{Derived, Metric, MetricSpec, Prep, prep};
use prh::registry::{IngestRequest, Registry};
use prh::rng::Rng;

const N: usize = 1024;
const LAYERS: usize = 24;
const D: usize = 1024;
const LATENT: usize = 16;

/// One model's features, n × LAYERS × D: a latent shared by all models (weight growing with
/// the model's quality and peaking at 70% depth) through the model's own projection, plus
/// noise. Cheap to generate (one n × LATENT × D product per model), unlike the demo zoo.
fn features(shared: &[f32], model: u64, quality: f64) -> Vec<f32> {
    let mut r = Rng::new(0x9a9e ^ model.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let proj: Vec<f32> = (0..LATENT * D).map(|_| r.normal() as f32 * 0.25).collect();
    let mut signal = vec![0f32; N * D];
    for i in 0..N {
        for t in 0..LATENT {
            let z = shared[i * LATENT + t];
            let row = &proj[t * D..(t + 1) * D];
            for (o, p) in signal[i * D..(i + 1) * D].iter_mut().zip(row) {
                *o += z * p;
            }
        }
    }
    let mut out = vec![0f32; N * LAYERS * D];
    for l in 0..LAYERS {
        let depth = l as f64 / (LAYERS - 1) as f64;
        let w = (quality * (-(depth - 0.7).powi(2) / 0.15).exp()) as f32;
        for i in 0..N {
            let at = (i * LAYERS + l) * D;
            for j in 0..D {
                // Uniform noise in [-1, 1) from 24 random bits.
                let u = (r.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                out[at + j] = w * signal[i * D + j] + (1.0 - w) * u;
            }
        }
    }
    out
}

fn main() {
    // PRH_BENCH_DIR keeps the zoo's registry (DIR/reg) for profiling; else a temporary one.
    let temp = tempfile::tempdir().unwrap();
    let work = std::env::var_os("PRH_BENCH_DIR").map_or(temp.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&work).unwrap();
    let reg_path = work.join("reg");
    let mut reg = Registry::init(&reg_path).unwrap();
    let mut shared_rng = Rng::new(7);
    let shared: Vec<f32> = (0..N * LATENT)
        .map(|_| shared_rng.normal() as f32)
        .collect();
    let t = Instant::now();
    let models: Vec<(String, &str, f64)> = (0..12)
        .map(|i| (format!("lm{i:02}"), "language", 0.1 + 0.07 * i as f64))
        .chain((0..17).map(|i| (format!("vit{i:02}"), "vision", 0.1 + 0.05 * i as f64)))
        .collect();
    let mut first_pair: Vec<Vec<f32>> = Vec::new();
    for (k, (name, modality, quality)) in models.iter().enumerate() {
        let feats = features(&shared, k as u64, *quality);
        let path = work.join(format!("{name}.npy"));
        std::fs::write(&path, npy::encode_f16(&[N, LAYERS, D], &feats)).unwrap();
        reg.ingest(
            &path,
            &IngestRequest {
                model: name.clone(),
                dataset: "paper".into(),
                modality: Some(modality.to_string()),
                pool: "avg".into(),
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        if k == 0 || k == 12 {
            // Layers 0 and 12 of lm00 and vit00 (f16-rounded, as stored) for the official loop.
            let rounded: Vec<f32> = feats
                .iter()
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect();
            first_pair.push(rounded);
        }
    }
    drop(reg);
    println!(
        "zoo: 12 language × 17 vision models × {LAYERS} layers, n = {N}, d = {D}, f16 (generated and ingested in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    // Each step runs for every subject (this build, and a baseline binary when
    // PRH_BENCH_BASELINE names one) before the next step, so both see the same machine.
    let subjects = subjects(&reg_path);
    // The bounded run goes first (k = 5: nothing cached yet).
    for s in &subjects {
        let (secs, cells, rss) =
            align_language_vision(s, "mutual_knn", &["--k", "5", "--mem-mib", "1024"]);
        println!(
            "[{}] cold mutual_knn (k = 5) with --mem-mib 1024: {secs:.1} s, {cells} cells ({:.0} cells/s), peak RSS {:.0} MiB",
            s.label,
            cells as f64 / secs,
            rss as f64 / 1024.0
        );
    }
    let mut colds = Vec::new();
    for s in &subjects {
        let (secs, cells, rss) = align_language_vision(s, "mutual_knn", &[]);
        println!(
            "[{}] cold mutual_knn (default budget, 4096 MiB): {secs:.1} s, {cells} cells ({:.0} cells/s), peak RSS {:.0} MiB",
            s.label,
            cells as f64 / secs,
            rss as f64 / 1024.0
        );
        colds.push((secs, cells));
    }
    for round in 1..=3 {
        for s in &subjects {
            let (secs, cells, _) = align_language_vision(s, "mutual_knn", &[]);
            println!(
                "[{}] warm mutual_knn (run {round}): {secs:.2} s, {cells} cells computed",
                s.label
            );
        }
    }
    for s in &subjects {
        let (secs, cells, rss) = align_language_vision(s, "unbiased_cka", &[]);
        println!(
            "[{}] cold unbiased_cka: {secs:.1} s, {cells} cells ({:.0} cells/s), peak RSS {:.0} MiB",
            s.label,
            cells as f64 / secs,
            rss as f64 / 1024.0
        );
    }
    let (cold, cells) = colds[0];

    // The official loop: for each layer pair, prepare both layers and recompute both neighbour
    // sets (two Gram matrices), as measure_alignment.compute_score does.
    let layer = |feats: &[f32], l: usize| {
        ndarray::Array2::from_shape_fn((N, D), |(i, j)| feats[(i * LAYERS + l) * D + j])
    };
    let spec = MetricSpec::new(Metric::MutualKnn);
    let pairs = [(0, 0), (6, 12), (12, 18), (23, 23)];
    let t = Instant::now();
    for &(i, j) in &pairs {
        let x = layer(&first_pair[0], i);
        let y = layer(&first_pair[1], j);
        let prepare = |m: &ndarray::Array2<f32>| {
            let t = prep::clamp_threshold(&[m.view()], 0.95);
            Arc::new(Derived::new(
                prep::prepare(m.view(), t, Prep::OFFICIAL.normalize).unwrap(),
            ))
        };
        let (dx, dy) = (prepare(&x), prepare(&y));
        spec.compute(&dx, &dy).unwrap();
    }
    let official = t.elapsed().as_secs_f64() / pairs.len() as f64;
    let ours = cold / cells as f64;
    println!(
        "official loop: {:.1} ms per cell (both neighbour sets recomputed) vs prh's cold sweep {:.3} ms per cell: {:.0}× (the official loop would take {:.0} min for these {cells} cells)",
        official * 1e3,
        ours * 1e3,
        official / ours,
        official * cells as f64 / 60.0
    );
}
