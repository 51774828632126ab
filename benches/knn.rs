//! Exact k-nearest-neighbour graph of one representation at large n (docs/design.md §9):
//! prh's tiled, certified search (no n × n matrix) against its dense path at the largest n
//! that path is given here, and — under `cargo bench` — against faiss-cpu's exact
//! `IndexFlatIP` on the same normalised rows with the same thread count (PyPI `faiss-cpu` in a
//! virtualenv made under the target directory; benches/peers/faiss_knn.py), neighbours
//! compared row by row. Peak RSS of the tiled search is measured from a reset high-water mark.
//! Run: `cargo bench --bench knn` (n = 100,000, d = 256, k = 10; about 10 minutes on 2 cores).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{announce, size, smoke};

use ndarray::{Array2, s};
use prh::formats::npy;
use prh::metrics::{Derived, derived, graph, prep};
use prh::rng::Rng;

/// Features with structure (a 32-dimensional latent through a random projection, plus noise),
/// clamped and row-normalised as prh prepares them.
fn features(n: usize, d: usize) -> Array2<f32> {
    let mut r = Rng::new(0x6b6e6e);
    let latent = 32;
    let proj: Vec<f32> = (0..latent * d).map(|_| r.normal() as f32).collect();
    let mut x = Array2::<f32>::zeros((n, d));
    let mut z = vec![0f32; latent];
    for mut row in x.rows_mut() {
        z.iter_mut().for_each(|v| *v = r.normal() as f32);
        for (j, o) in row.iter_mut().enumerate() {
            let s: f32 = (0..latent).map(|t| z[t] * proj[t * d + j]).sum();
            *o = s + 2.0 * r.normal() as f32;
        }
    }
    let t = prep::clamp_threshold(&[x.view()], 0.95);
    prep::prepare(x.view(), t, true).unwrap()
}

/// This process's peak resident set since the last [`reset_peak`], in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Resets the peak resident set to the current one (Linux ≥ 4.0).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

fn main() {
    announce("knn");
    let (n, d, k) = (size(100_000, 3_000), size(256, 32), 10);
    let threads = rayon::current_num_threads();
    let x = features(n, d);
    let input_mib = (n * d * 4) as f64 / f64::from(1 << 20);

    // 1. prh, tiled (what a sweep runs above the budget).
    reset_peak();
    let before = peak_mib();
    let t = Instant::now();
    let tile = graph::tile_rows(n, derived::TILE_BYTES);
    let (knn, ties) = graph::knn_tiled(&x, k, None, tile, &|_| {});
    let tiled = t.elapsed().as_secs_f64();
    let peak = peak_mib();
    let gflops = 2.0 * (n as f64).powi(2) * d as f64 / tiled / 1e9;
    println!(
        "prh tiled kNN graph, n={n} d={d} k={k}, {threads} threads: {tiled:.2} s ({gflops:.0} GFLOP/s of the n×n product), peak RSS {peak:.0} MiB (input {input_mib:.0} MiB; +{:.0} MiB during the search), {} tied rows",
        peak - before,
        ties.rows.len()
    );
    assert!(
        peak - before <= 1024.0,
        "the search must stay within input + 1 GiB"
    );

    // 2. The dense path at the largest n it is given here: the same lists, and its time.
    let nd = size(20_000, 1_000).min(n);
    let xd = x.slice(s![..nd, ..]).to_owned();
    reset_peak();
    let t = Instant::now();
    let dense = Derived::new(xd.clone());
    let dk = dense.knn(k);
    let dense_s = t.elapsed().as_secs_f64();
    let dense_peak = peak_mib();
    let t = Instant::now();
    let (tk, _) = graph::knn_tiled(
        &xd,
        k,
        None,
        graph::tile_rows(nd, derived::TILE_BYTES),
        &|_| {},
    );
    let tiled_s = t.elapsed().as_secs_f64();
    assert_eq!(
        dk.ordered, tk.ordered,
        "dense and tiled lists differ at n={nd}"
    );
    assert_eq!(dk.sims, tk.sims);
    println!(
        "  at n={nd}: dense path (Gram + selection) {dense_s:.2} s, peak RSS {dense_peak:.0} MiB; tiled {tiled_s:.2} s; identical lists and similarities"
    );
    drop(dense);

    // 3. faiss-cpu, exact, same rows, same threads (cargo bench only: it needs PyPI).
    if smoke() {
        return;
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faiss-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        ok(Command::new(venv.join("bin/pip")).args(["install", "-q", "faiss-cpu", "numpy"]));
    }
    let dir = tempfile::tempdir().unwrap();
    let (xp, ip) = (dir.path().join("x.npy"), dir.path().join("idx.npy"));
    std::fs::write(&xp, npy::encode_f32(&[n, d], x.as_slice().unwrap())).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/faiss_knn.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&xp)
        .arg(k.to_string())
        .arg(threads.to_string())
        .arg(&ip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let faiss_s = v["seconds"].as_f64().unwrap();
    // Indices below 2^24 are exact in f32, which prh's .npy reader takes.
    let theirs = prh::formats::open(&ip).unwrap().layer(0).to_f32();
    // Neighbour sets compared row by row (faiss orders equal scores its own way; rows tied at
    // the k boundary may differ legitimately).
    let mut same = 0;
    for i in 0..n {
        let mut a: Vec<i64> = knn.row(i).iter().map(|&j| j as i64).collect();
        let mut b: Vec<i64> = theirs.row(i).iter().map(|&j| j as i64).collect();
        a.sort_unstable();
        b.sort_unstable();
        same += usize::from(a == b);
    }
    println!(
        "faiss-cpu {} IndexFlatIP (exact), {threads} threads: {faiss_s:.2} s; prh / faiss = {:.2}; rows with the same neighbour set: {same} of {n}",
        v["faiss"].as_str().unwrap_or("?"),
        tiled / faiss_s
    );
}
