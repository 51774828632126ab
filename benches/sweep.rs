//! A zoo sweep end to end: 4 language × 4 vision models, n = 1024, 12 layers each,
//! d = 768–1024, mutual_knn (k = 10). Reports the cold sweep (every cell computed), the warm
//! sweep (everything cached: catalog queries only) and the cold run's peak RSS, then cold cka
//! and unbiased_cka sweeps of the same zoo, running the real `prh` binary.
//! Run: `cargo bench --bench sweep` (`PRH_BENCH_BASELINE=/path/to/old/prh` times that binary too,
//! step by step beside this build).

use std::time::Instant;

mod common;
use common::{align_language_vision, subjects};

use prh::registry::Registry;

fn main() {
    common::announce("sweep");
    let dir = tempfile::tempdir().unwrap();
    let zoo = common::sweep_zoo();
    let t = Instant::now();
    let files = zoo.write_files(&dir.path().join("inputs")).unwrap();
    let reg_path = dir.path().join("reg");
    let mut reg = Registry::init(&reg_path).unwrap();
    common::ingest_zoo(&mut reg, &files);
    drop(reg);
    println!(
        "zoo: 8 models × 12 layers, n = 1024, d = 768–1024 (generated and ingested in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    // Each step runs for every subject (this build, and a baseline binary when
    // PRH_BENCH_BASELINE names one) before the next step, so both see the same machine.
    let subjects = subjects(&reg_path);
    // Bounded memory first: k = 5 so that nothing is cached yet, derived data capped at 256 MiB.
    for s in &subjects {
        let (secs, _, rss) =
            align_language_vision(s, "mutual_knn", &["--k", "5", "--mem-mib", "256"]);
        println!(
            "[{}] cold sweep with --mem-mib 256 (k = 5): {secs:.2} s, peak RSS {:.0} MiB",
            s.label,
            rss as f64 / 1024.0
        );
    }
    let mut cold = Vec::new();
    for s in &subjects {
        let (secs, cells, rss) = align_language_vision(s, "mutual_knn", &[]);
        println!(
            "[{}] cold sweep: {secs:.2} s, {cells} cells computed (16 model pairs × 144 layer pairs), peak RSS {:.0} MiB",
            s.label,
            rss as f64 / 1024.0
        );
        cold.push(secs);
    }
    for s in &subjects {
        let (secs, cells, _) = align_language_vision(s, "mutual_knn", &[]);
        println!(
            "[{}] warm sweep: {secs:.3} s, {cells} cells computed (all from the cache)",
            s.label
        );
    }
    for metric in ["cka", "unbiased_cka"] {
        for (s, cold) in subjects.iter().zip(&cold) {
            let (secs, cells, _) = align_language_vision(s, metric, &[]);
            println!(
                "[{}] cold {metric} sweep: {secs:.2} s, {cells} cells ({:.2} ms per cell), {:.2}× the mutual_knn sweep",
                s.label,
                secs * 1e3 / cells as f64,
                secs / cold
            );
        }
    }
}
