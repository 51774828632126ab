//! `prh serve` under load and in the browser: a registry of 100 language × 100 vision models
//! (10,000 cached model pairs), then
//! - API latency: 50 concurrent clients on loopback, 20 requests each per endpoint (1,000
//!   requests), p50 / p99 / max per endpoint;
//! - the 100 × 100 matrix page in headless Chromium: navigation start to load event, and to
//!   the 10,000 heatmap cells in the DOM (target: under 1 s).
//!
//! Run: `cargo bench --bench serve` (release build; needs chromium + chromedriver, which the
//! bench installs with apt-get when run as root).

#[path = "../tests/common/browser.rs"]
mod browser;
#[path = "../tests/common/http.rs"]
mod http;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::size;

const BIN: &str = env!("CARGO_BIN_EXE_prh");
const N: usize = 64;

fn prh(reg: &Path, args: &[&str]) {
    let o = Command::new(BIN)
        .arg("--registry")
        .arg(reg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "prh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One n × d f32 .npy whose rows share a signal of strength `q` with every other model's.
fn features(path: &Path, seed: u64, q: f32) {
    let d = 16;
    let mut rng = prh::rng::Rng::new(seed);
    let mut shared = prh::rng::Rng::new(7);
    let data: Vec<f32> = (0..N * d)
        .map(|_| q * shared.normal() as f32 + (1.0 - q) * rng.normal() as f32)
        .collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({N}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    common::announce("serve");
    let (models, clients, per_client) = (size(100, 4), size(50, 2), size(20, 2));
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("reg");
    let t = Instant::now();
    prh(&reg, &["init"]);
    prh(&reg, &["dataset", "add", "bench", "--n", &N.to_string()]);
    for (i, modality) in
        (0..2 * models).map(|i| (i, if i < models { "language" } else { "vision" }))
    {
        let name = format!("{}{:03}", &modality[..4], i % models);
        let f = dir.path().join(format!("{name}.npy"));
        let q = (i % models) as f32 / models as f32 * 0.8;
        features(&f, i as u64 + 1, q);
        let score = format!("quality={q}");
        prh(
            &reg,
            &[
                "ingest",
                f.to_str().unwrap(),
                "--model",
                &name,
                "--dataset",
                "bench",
                "--modality",
                modality,
                "--score",
                &score,
            ],
        );
    }
    prh(
        &reg,
        &[
            "align",
            "--metric",
            "mutual_knn",
            "--x",
            "modality=language",
            "--y",
            "modality=vision",
            "-q",
        ],
    );
    println!(
        "registry: {models} × {models} models, {} model pairs cached in {:.1} s",
        models * models,
        t.elapsed().as_secs_f64()
    );

    let server = http::Server::start(Path::new(BIN), &reg, &[]);
    let q = "metric=mutual_knn&x=modality%3Dlanguage&y=modality%3Dvision&perf=quality";
    let endpoints = [
        ("version", "/api/version".to_string()),
        ("overview", "/api/overview".to_string()),
        ("model page", format!("/model/lang{:03}", models * 42 / 100)),
        ("trend", format!("/api/trend?{q}")),
        ("matrix", format!("/api/matrix?{q}")),
    ];
    println!("API latency, one client alone, 20 requests each (loopback):");
    for (name, target) in &endpoints {
        let mut all: Vec<Duration> = (0..per_client)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(http::get(server.addr, target).status, 200);
                t.elapsed()
            })
            .collect();
        all.sort();
        println!(
            "  {name:<16} p50 {:7.1} ms  max {:7.1} ms",
            percentile(&all, 0.50).as_secs_f64() * 1e3,
            all.last().unwrap().as_secs_f64() * 1e3
        );
    }
    println!("API latency, {clients} concurrent clients × {per_client} requests (loopback):");
    for (name, target) in &endpoints {
        let wall = Instant::now();
        let mut all: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(|| {
                        (0..per_client)
                            .map(|_| {
                                let t = Instant::now();
                                let r = http::get(server.addr, target);
                                assert_eq!(r.status, 200, "{target}: {}", r.text());
                                t.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        all.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {name:<16} p50 {:7.1} ms  p99 {:7.1} ms  max {:7.1} ms  ({} requests in {:.2} s)",
            ms(percentile(&all, 0.50)),
            ms(percentile(&all, 0.99)),
            ms(*all.last().unwrap()),
            all.len(),
            wall.elapsed().as_secs_f64()
        );
    }

    let b = browser::Browser::start();
    let url = format!("http://{}/matrix?{q}", server.addr);
    b.goto(&url); // warm: the first page load also starts the browser's renderer
    println!("matrix page, {models} × {models} models, headless Chromium:");
    for run in 1..=3 {
        let t = Instant::now();
        b.goto(&url);
        b.wait(&format!(
            "return document.readyState === 'complete' && document.querySelectorAll('rect.cell').length === {}",
            models * models
        ));
        let wall = t.elapsed();
        let nav = b.js(
            "const n = performance.getEntriesByType('navigation')[0]; return [n.responseEnd, n.domContentLoadedEventEnd, n.loadEventEnd]",
        );
        let f = |i: usize| nav[i].as_f64().unwrap();
        println!(
            "  run {run}: response {:.0} ms, DOM ready {:.0} ms, load event {:.0} ms; navigate → {} cells in DOM {:.0} ms (WebDriver round trips included)",
            f(0),
            f(1),
            f(2),
            models * models,
            wall.as_secs_f64() * 1e3
        );
    }
    assert!(b.errors().is_empty());
}
