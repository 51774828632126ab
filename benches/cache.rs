//! The metric cache at scale: a catalog holding about a million cached cells (1,740 model pairs
//! of 24 × 24 layer pairs, mutual_knn with the official preparation's prep keys). Reports the
//! time to store them (one transaction per pair, as a cold sweep does), the catalog's size on
//! disk per cell, and the time to find every pair's cells again (what a warm sweep asks of the
//! catalog: one lookup per pair).
//! Run: `cargo bench --bench cache`.

use std::time::Instant;

mod common;
use common::cache_zoo;
use prh::catalog::{Catalog, SqliteCatalog};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut cat = SqliteCatalog::create(&path).unwrap();
    let (key, xs, ys, cells) = cache_zoo();
    let t = Instant::now();
    for x in &xs {
        for y in &ys {
            cat.store_cells(std::slice::from_ref(&key), x.side(), y.side(), &cells)
                .unwrap();
        }
    }
    let store = t.elapsed().as_secs_f64();
    let n = xs.len() * ys.len() * cells.len();
    // Closing the last connection checkpoints the write-ahead log into catalog.db.
    drop(cat);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let cat = SqliteCatalog::open(&path).unwrap();
    let t = Instant::now();
    let mut found = 0;
    for x in &xs {
        for y in &ys {
            found += cat.cached_cells(&key, x.side(), y.side()).unwrap().len();
        }
    }
    let lookup = t.elapsed().as_secs_f64();
    assert_eq!(found, n, "every stored cell found again");
    println!(
        "cache: {n} cells stored in {store:.2} s ({:.0} cells/s, {} pairs)",
        n as f64 / store,
        xs.len() * ys.len()
    );
    println!(
        "cache: catalog.db {:.1} MB = {:.1} bytes per cell",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    println!(
        "cache: found all {n} cells again in {lookup:.3} s ({:.0} µs per pair)",
        lookup * 1e6 / (xs.len() * ys.len()) as f64
    );
}
