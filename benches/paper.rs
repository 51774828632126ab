//! The paper's language–vision sweep on one machine: 12 language × 17 vision models, 24 layers
//! each, d = 1024, n = 1024, f16 blobs; mutual_knn (k = 10) and unbiased_cka, cold and warm,
//! peak RSS with the default memory budget and with `--mem-mib 1024`, cells per second. Runs
//! the real `prh` binary.
//! With `PRH_PLATONIC_REP=/path/to/a/checkout/of/platonic-rep`, it also times the official code
//! itself (its `compute_score` loop and metrics, torch on the CPU, in a virtualenv made under the
//! target directory from PyPI; benches/official/loop.py) on the first model pair, mutual_knn and
//! unbiased_cka, against prh's cold per-cell times.
//! Run: `cargo bench --bench paper` (about 1.4 GB of blobs in a temporary directory;
//! `PRH_BENCH_BASELINE=/path/to/old/prh` times that binary too, on a copy, step by step;
//! `PRH_BENCH_DIR=DIR` builds the registry in DIR/reg and keeps it, e.g. to profile a sweep).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{align_language_vision, size, subjects};

use prh::formats::npy;
use prh::registry::{IngestRequest, Registry};
use prh::rng::Rng;

/// Samples (64 in a smoke run).
fn n() -> usize {
    size(1024, 64)
}
/// Layers per model (3 in a smoke run).
fn layers() -> usize {
    size(24, 3)
}
/// Width (32 in a smoke run).
fn d() -> usize {
    size(1024, 32)
}
/// Dimensions of the shared latent (4 in a smoke run).
fn latent() -> usize {
    size(16, 4)
}

/// One model's features, n × layers × d: a latent shared by all models (weight growing with
/// the model's quality and peaking at 70% depth) through the model's own projection, plus
/// noise. Cheap to generate (one n × latent × d product per model), unlike the demo zoo.
fn features(shared: &[f32], model: u64, quality: f64) -> Vec<f32> {
    let mut r = Rng::new(0x9a9e ^ model.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let proj: Vec<f32> = (0..latent() * d())
        .map(|_| r.normal() as f32 * 0.25)
        .collect();
    let mut signal = vec![0f32; n() * d()];
    for i in 0..n() {
        for t in 0..latent() {
            let z = shared[i * latent() + t];
            let row = &proj[t * d()..(t + 1) * d()];
            for (o, p) in signal[i * d()..(i + 1) * d()].iter_mut().zip(row) {
                *o += z * p;
            }
        }
    }
    let mut out = vec![0f32; n() * layers() * d()];
    for l in 0..layers() {
        let depth = l as f64 / (layers() - 1) as f64;
        let w = (quality * (-(depth - 0.7).powi(2) / 0.15).exp()) as f32;
        for i in 0..n() {
            let at = (i * layers() + l) * d();
            for j in 0..d() {
                // Uniform noise in [-1, 1) from 24 random bits.
                let u = (r.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                out[at + j] = w * signal[i * d() + j] + (1.0 - w) * u;
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
    let shared: Vec<f32> = (0..n() * latent())
        .map(|_| shared_rng.normal() as f32)
        .collect();
    common::announce("paper");
    let t = Instant::now();
    let (lm, vit) = (size(12, 2), size(17, 2));
    let models: Vec<(String, &str, f64)> = (0..lm)
        .map(|i| (format!("lm{i:02}"), "language", 0.1 + 0.07 * i as f64))
        .chain((0..vit).map(|i| (format!("vit{i:02}"), "vision", 0.1 + 0.05 * i as f64)))
        .collect();
    let mut first_pair: Vec<Vec<f32>> = Vec::new();
    for (k, (name, modality, quality)) in models.iter().enumerate() {
        let feats = features(&shared, k as u64, *quality);
        let path = work.join(format!("{name}.npy"));
        std::fs::write(&path, npy::encode_f16(&[n(), layers(), d()], &feats)).unwrap();
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
        if k == 0 || k == lm {
            // lm00 and vit00 (f16-rounded, as stored) for the per-layer-pair loop.
            let rounded: Vec<f32> = feats
                .iter()
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect();
            first_pair.push(rounded);
        }
    }
    drop(reg);
    println!(
        "zoo: {lm} language × {vit} vision models × {} layers, n = {}, d = {}, f16 (generated and ingested in {:.1} s)",
        layers(),
        n(),
        d(),
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
    let mut cka_colds = Vec::new();
    for s in &subjects {
        let (secs, cells, rss) = align_language_vision(s, "unbiased_cka", &[]);
        cka_colds.push((secs, cells));
        println!(
            "[{}] cold unbiased_cka: {secs:.1} s, {cells} cells ({:.0} cells/s), peak RSS {:.0} MiB",
            s.label,
            cells as f64 / secs,
            rss as f64 / 1024.0
        );
    }
    let (cold, cells) = colds[0];

    // The official code itself, when PRH_PLATONIC_REP names a checkout of platonic-rep.
    match std::env::var_os("PRH_PLATONIC_REP") {
        Some(checkout) => {
            let per_cell = [("mutual_knn", cold / cells as f64), {
                let (secs, cells) = cka_colds[0];
                ("unbiased_cka", secs / cells as f64)
            }];
            official_code(Path::new(&checkout), &work, &first_pair, &per_cell);
        }
        None => println!(
            "(set PRH_PLATONIC_REP=/path/to/a/checkout/of/platonic-rep to time the official code on the first model pair)"
        ),
    }
}

/// Times the official platonic-rep loop (its own `compute_score` and metrics, in a virtualenv
/// with torch from PyPI made under the target directory) on the first language × vision pair,
/// for each metric, against prh's cold per-cell time `ours` for it.
fn official_code(checkout: &Path, work: &Path, pair: &[Vec<f32>], ours: &[(&str, f64)]) {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("official-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "torch",
            "torchaudio",
            "numpy",
            "scikit-learn",
            "tqdm",
        ]));
    }
    let files: Vec<_> = ["x", "y"]
        .iter()
        .zip(pair)
        .map(|(name, feats)| {
            let p = work.join(format!("official_{name}.npy"));
            std::fs::write(&p, npy::encode_f32(&[n(), layers(), d()], feats)).unwrap();
            p
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/official/loop.py");
    for (metric, ours) in ours {
        let out = Command::new(&python)
            .arg(&script)
            .arg(checkout)
            .args(&files)
            .arg(metric)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
        let per = v["seconds"].as_f64().unwrap() / v["cells"].as_f64().unwrap();
        // The same pair through prh: the official number (kNN metrics to the count, the CKA
        // family within 1e-4) and its layers.
        let (_, mine, _) = common::prh_measured(
            Path::new(env!("CARGO_BIN_EXE_prh")),
            work,
            &[
                "compare",
                files[0].to_str().unwrap(),
                files[1].to_str().unwrap(),
                "--metric",
                metric,
                "--format",
                "json",
            ],
        );
        let tol = if metric.ends_with("knn") { 1e-6 } else { 1e-4 };
        assert!(
            (mine["value"].as_f64().unwrap() - v["best"].as_f64().unwrap()).abs() <= tol,
            "{metric}: prh {} vs the official code {}",
            mine["value"],
            v["best"]
        );
        println!(
            "official platonic-rep code ({}, torch {}, {} threads, CPU): {metric} {:.1} ms per cell over one model pair's {} layer pairs ({:.1} s; best {:.4} at {}) vs prh's cold sweep {:.3} ms per cell: {:.0}×",
            checkout.display(),
            v["torch"].as_str().unwrap_or("?"),
            v["threads"],
            per * 1e3,
            v["cells"],
            v["seconds"].as_f64().unwrap(),
            v["best"].as_f64().unwrap(),
            v["best_layers"],
            ours * 1e3,
            per / ours
        );
    }
}

fn run(c: &mut Command) {
    let st = c.status().unwrap();
    assert!(st.success(), "{c:?} failed");
}
