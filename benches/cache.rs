//! The metric cache at scale: a catalog holding about a million cached cells (1,740 model pairs
//! of 24 × 24 layer pairs, mutual_knn with the official preparation's prep keys). Reports the
//! time to store them (one transaction per pair, as a cold sweep does), the catalog's size on
//! disk per cell, and the time to find every pair's cells again (what a warm sweep asks of the
//! catalog: one lookup per pair).
//! Run: `cargo bench --bench cache`.

use std::time::Instant;

use prh::catalog::{Catalog, CellSide, MetricKey, NewCell, SqliteCatalog, side_ids};
use prh::store::BlobHash;

const LAYERS: usize = 24;
const X_MODELS: usize = 60;
const Y_MODELS: usize = 29;

/// A model's layers: distinct blob hashes, the prep key of its checkpoint's threshold, and
/// their cache side ids.
fn model(seed: usize) -> (Vec<BlobHash>, Vec<String>, Vec<i64>) {
    let hashes: Vec<BlobHash> = (0..LAYERS)
        .map(|l| BlobHash(*blake3::hash(format!("model {seed} layer {l}").as_bytes()).as_bytes()))
        .collect();
    let t = 1.0f32 + seed as f32 / 100.0;
    let prep = format!("clamp(q=0.95,t=0x{:08x});l2", t.to_bits());
    let preps = vec![prep; LAYERS];
    let ids = side_ids(&hashes, &preps);
    (hashes, preps, ids)
}

fn side(m: &(Vec<BlobHash>, Vec<String>, Vec<i64>)) -> CellSide<'_> {
    CellSide {
        hashes: &m.0,
        preps: &m.1,
        ids: &m.2,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut cat = SqliteCatalog::create(&path).unwrap();
    let key = MetricKey {
        metric: "mutual_knn",
        version: 1,
        params: "k=10".into(),
        symmetric: true,
    };
    let xs: Vec<_> = (0..X_MODELS).map(model).collect();
    let ys: Vec<_> = (0..Y_MODELS).map(|i| model(1000 + i)).collect();
    let cells: Vec<NewCell> = (0..LAYERS)
        .flat_map(|i| (0..LAYERS).map(move |j| (0, i, j, (i * LAYERS + j) as f64 / 1e3, 1e-4)))
        .collect();
    let t = Instant::now();
    for x in &xs {
        for y in &ys {
            cat.store_cells(std::slice::from_ref(&key), side(x), side(y), &cells)
                .unwrap();
        }
    }
    let store = t.elapsed().as_secs_f64();
    let n = X_MODELS * Y_MODELS * LAYERS * LAYERS;
    // Closing the last connection checkpoints the write-ahead log into catalog.db.
    drop(cat);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let cat = SqliteCatalog::open(&path).unwrap();
    let t = Instant::now();
    let mut found = 0;
    for x in &xs {
        for y in &ys {
            found += cat.cached_cells(&key, side(x), side(y)).unwrap().len();
        }
    }
    let lookup = t.elapsed().as_secs_f64();
    assert_eq!(found, n, "every stored cell found again");
    println!(
        "cache: {n} cells stored in {store:.2} s ({:.0} cells/s, {} pairs)",
        n as f64 / store,
        X_MODELS * Y_MODELS
    );
    println!(
        "cache: catalog.db {:.1} MB = {:.1} bytes per cell",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    println!(
        "cache: found all {n} cells again in {lookup:.3} s ({:.0} µs per pair)",
        lookup * 1e6 / (X_MODELS * Y_MODELS) as f64
    );
}
