//! Ingest throughput of a 1 GiB float32 .npy (n × L × d) against `cp` of the same file on the
//! same disk. Run: `cargo bench --bench ingest` (set PRH_BENCH_DIR to choose the disk; default
//! the system temp dir; PRH_BENCH_GIB to change the size).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use prh::registry::{IngestRequest, Registry};

mod common;
use common::size;

fn main() {
    let base = std::env::var_os("PRH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let gib: f64 = std::env::var("PRH_BENCH_GIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let dir = tempfile::tempdir_in(&base).unwrap();
    common::announce("ingest");
    let (n, d): (usize, usize) = size((1024, 4096), (64, 64));
    let layers = size(
        ((gib * (1u64 << 30) as f64) / (n * d * 4) as f64).round() as usize,
        4,
    );
    let src = dir.path().join("feats.npy");
    write_big_npy(&src, n, layers, d);
    let bytes = std::fs::metadata(&src).unwrap().len();
    println!(
        "file: {} ({} × {} × {} f32, {:.3} GiB) in {}",
        src.display(),
        n,
        layers,
        d,
        bytes as f64 / (1u64 << 30) as f64,
        base.display()
    );
    // Warm the page cache the same way for both.
    let _ = std::fs::read(&src).map(|v| v.len());

    let cp_dst = dir.path().join("copy.npy");
    let t = Instant::now();
    assert!(
        Command::new("cp")
            .arg(&src)
            .arg(&cp_dst)
            .status()
            .unwrap()
            .success()
    );
    let cp = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert!(
        Command::new("sync")
            .arg(&cp_dst)
            .status()
            .unwrap()
            .success()
    );
    let cp_sync = cp + t.elapsed().as_secs_f64();
    std::fs::remove_file(&cp_dst).unwrap();

    let mut reg = Registry::init(&dir.path().join("reg")).unwrap();
    let req = IngestRequest {
        model: "big".into(),
        dataset: "bench".into(),
        modality: Some("language".into()),
        pool: "avg".into(),
        ..Default::default()
    };
    let t = Instant::now();
    let report = reg.ingest(&src, &req).unwrap();
    let ingest = t.elapsed().as_secs_f64();
    assert_eq!(report.layers.len(), layers);

    let t = Instant::now();
    let again = reg.ingest(&src, &req).unwrap();
    let reingest = t.elapsed().as_secs_f64();
    assert!(again.unchanged());

    let gbs = |s: f64| bytes as f64 / s / 1e9;
    println!("cp:              {cp:.3} s  ({:.2} GB/s)", gbs(cp));
    println!(
        "cp + sync:       {cp_sync:.3} s  ({:.2} GB/s)",
        gbs(cp_sync)
    );
    println!(
        "prh ingest:      {ingest:.3} s  ({:.2} GB/s; hash + NaN check + write + fsync + catalog)",
        gbs(ingest)
    );
    println!("prh re-ingest:   {reingest:.3} s  (same file again: hashed, nothing written)");
    println!("ratio ingest/cp:        {:.2}", ingest / cp);
    println!("ratio ingest/(cp+sync): {:.2}", ingest / cp_sync);
}

fn write_big_npy(path: &Path, n: usize, l: usize, d: usize) {
    use std::io::Write;
    let header = prh::formats::npy::encode_f32(&[n, l, d], &[]);
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    f.write_all(&header).unwrap();
    let mut rng = prh::rng::Rng::new(42);
    let row: Vec<u8> = (0..l * d)
        .flat_map(|_| (rng.normal() as f32).to_le_bytes())
        .collect();
    for i in 0..n {
        // Vary rows cheaply so layers differ: rotate the base row.
        let s = (i * 4 * 7) % row.len();
        f.write_all(&row[s..]).unwrap();
        f.write_all(&row[..s]).unwrap();
    }
    f.flush().unwrap();
}
