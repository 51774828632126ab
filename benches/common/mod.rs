//! Shared by the benches that run the real `prh` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Runs `prh --registry REG ARGS...`, asserting success; returns the seconds it took and its
/// JSON output.
pub fn prh_json(reg: &Path, args: &[&str]) -> (f64, serde_json::Value) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(reg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        t.elapsed().as_secs_f64(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

/// `prh align` of every language model with every vision model for one metric (plus `extra`
/// flags): the seconds it took and the cells it computed.
pub fn align_language_vision(reg: &Path, metric: &str, extra: &[&str]) -> (f64, u64) {
    let mut args = vec![
        "align",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--metric",
        metric,
        "--format",
        "json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let (secs, v) = prh_json(reg, &args);
    (secs, cells_computed(&v))
}

/// Sum of `cells_computed` over an `align --format json` result.
pub fn cells_computed(v: &serde_json::Value) -> u64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells_computed"].as_u64().unwrap())
        .sum()
}

/// Largest peak resident set of any waited-for child process, in KiB.
pub fn peak_child_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    }
}
