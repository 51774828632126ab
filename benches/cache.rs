//! The metric cache at scale: a catalog holding about a million cached cells (1,740 model pairs
//! of 24 × 24 layer pairs, mutual_knn with the official preparation's prep keys). Reports the
//! time to store them (one transaction per pair, as a cold sweep does), the catalog's size on
//! disk per cell, and the time to find every pair's cells again (what a warm sweep asks of the
//! catalog: one lookup per pair).
//! Run: `cargo bench --bench cache`.

mod common;
use common::CacheZoo;
use prh::catalog::SqliteCatalog;

fn main() {
    common::announce("cache");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut cat = SqliteCatalog::create(&path).unwrap();
    let zoo = CacheZoo::new();
    let store = zoo.store(&mut cat);
    let n = zoo.n();
    // Closing the last connection checkpoints the write-ahead log into catalog.db.
    drop(cat);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let cat = SqliteCatalog::open(&path).unwrap();
    let lookup = zoo.find(&cat);
    println!(
        "cache: {n} cells stored in {store:.2} s ({:.0} cells/s, {} pairs)",
        n as f64 / store,
        zoo.pairs()
    );
    println!(
        "cache: catalog.db {:.1} MB = {:.1} bytes per cell",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    println!(
        "cache: found all {n} cells again in {lookup:.3} s ({:.0} µs per pair)",
        lookup * 1e6 / (zoo.pairs()) as f64
    );
}
