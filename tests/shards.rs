//! Shards without a shared database: `prh align … --shard I/N --out part-I.prh` computes its
//! part of a sweep from a registry it only reads; `prh import part-*.prh` merges the parts,
//! serving the cells of shards this registry sealed and treating any other bundle as foreign;
//! the union equals one process. (On a Slurm array: tests/slurm.rs.)

use crate::common;
use crate::hostile::edit_bundle;
use crate::workers::demo;

use std::path::{Path, PathBuf};

use common::Env;
use serde_json::Value;

/// The sweep every shard test runs: the demo's language × vision models, every checkpoint,
/// two metrics.
pub(crate) const SWEEP: [&str; 9] = [
    "align",
    "--x",
    "modality=language",
    "--y",
    "modality=vision",
    "--metric",
    "mutual_knn,cka",
    "--all-checkpoints",
    "--quiet",
];

fn with(extra: &[&str]) -> Vec<String> {
    SWEEP.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(env: &Env, args: &[String]) -> String {
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every file of the registry directory with its content hash, sorted.
fn contents(reg: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![reg.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, blake3::hash(&bytes).to_hex().to_string()));
            }
        }
    }
    out.sort();
    out
}

/// One row of the sweep: x model, x checkpoint, y model, metric, score.
pub(crate) type Score = (String, String, String, String, f64);

/// The sweep's scores in `env`, in order, and the cells it computed now.
pub(crate) fn scores(env: &Env) -> (Vec<Score>, u64) {
    let v: Value = serde_json::from_str(&run(env, &with(&["--format", "json"]))).unwrap();
    let rows = v.as_array().unwrap();
    let computed = rows
        .iter()
        .map(|r| r["cells_computed"].as_u64().unwrap())
        .sum();
    let s = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (
                s("x_model"),
                s("x_checkpoint"),
                s("y_model"),
                s("metric"),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect();
    (s, computed)
}

#[test]
fn four_shards_that_only_read_the_registry_add_up_to_one_process() {
    let env = demo(vec![], &[]);
    let solo = demo(vec![], &[]);
    let (want, computed_solo) = scores(&solo);
    assert!(computed_solo > 0);
    // The first shard makes the registry's key; after it, shards write nothing to the
    // registry at all.
    let parts = env.path("parts");
    std::fs::create_dir(&parts).unwrap();
    let scratch = env.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let part = |i: usize| parts.join(format!("part-{i}.prh"));
    let shard = |i: usize| -> Value {
        let out = run(
            &env,
            &with(&[
                "--shard",
                &format!("{i}/4"),
                "--out",
                part(i).to_str().unwrap(),
                "--scratch",
                scratch.to_str().unwrap(),
                "--format",
                "json",
            ]),
        );
        serde_json::from_str(&out).unwrap()
    };
    let before = contents(&env.reg());
    let first = shard(0);
    let after_first = contents(&env.reg());
    let key: Vec<_> = after_first
        .iter()
        .filter(|f| !before.contains(f))
        .map(|f| f.0.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        key,
        ["shard.key"],
        "the first shard wrote more than its key"
    );
    let reports: Vec<Value> = std::iter::once(first).chain((1..4).map(shard)).collect();
    assert_eq!(
        contents(&env.reg()),
        after_first,
        "a shard wrote to the registry"
    );
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "a shard left its working copy behind"
    );
    // The pairs spread evenly (the demo's pairs are all the same size), each pair in one shard.
    let pairs = reports[0]["pairs"].as_u64().unwrap();
    let here: Vec<u64> = reports
        .iter()
        .map(|r| r["pairs_here"].as_u64().unwrap())
        .collect();
    assert_eq!(here.iter().sum::<u64>(), pairs, "{reports:?}");
    assert!(
        here.iter().max().unwrap() - here.iter().min().unwrap() <= 1,
        "{here:?}"
    );
    let computed: u64 = reports
        .iter()
        .map(|r| r["cells_computed"].as_u64().unwrap())
        .sum();
    assert_eq!(computed, computed_solo, "{reports:?}");
    assert!(reports.iter().all(|r| r["sweep"] == reports[0]["sweep"]));

    // A shard altered after it was written (one cell's value, the manifest's catalog hash made
    // to match) is refused whole; a shard of another registry is a foreign bundle: its cells
    // are sampled and held apart, not served.
    let forged = env.path("forged.prh");
    edit_bundle(
        &part(0),
        &forged,
        "UPDATE cells SET value = value + 0.25 WHERE value = (SELECT max(value) FROM cells)",
    );
    let e = env.fails(&["import", forged.to_str().unwrap()]);
    assert!(e.contains("seal does not match"), "{e}");
    let foreign = solo.path("foreign.prh");
    run(
        &solo,
        &with(&["--shard", "1/4", "--out", foreign.to_str().unwrap()]),
    );
    let fresh = demo(vec![], &[]);
    let r = fresh.json(&["import", foreign.to_str().unwrap(), "--format", "json"]);
    assert_eq!(r["shard"]["own"], false, "{r}");
    // Only the cells recomputed here (the check's sample) are served.
    assert!(
        r["cells_new"].as_u64().unwrap() <= r["cells_checked"].as_u64().unwrap(),
        "a foreign shard's cells were served: {r}"
    );
    assert!(r["cells_quarantined"].as_u64().unwrap() > 0, "{r}");

    // The four parts merge in one command; their cells are served as they are (nothing
    // recomputed at import), and the sweep then computes nothing and equals one process.
    let mut args = vec!["import".to_string()];
    args.extend((0..4).map(|i| part(i).display().to_string()));
    args.extend(["--format".into(), "json".into()]);
    let imported: Value = serde_json::from_str(&run(&env, &args)).unwrap();
    let imported = imported.as_array().unwrap();
    assert_eq!(imported.len(), 4);
    for (i, r) in imported.iter().enumerate() {
        assert_eq!(r["shard"]["shard"], format!("{i}/4"), "{r}");
        assert_eq!(r["shard"]["own"], true, "{r}");
        assert_eq!(r["cells_checked"], 0, "{r}");
        assert_eq!(r["cells_quarantined"], 0, "{r}");
    }
    let served: u64 = imported
        .iter()
        .map(|r| r["cells_new"].as_u64().unwrap())
        .sum();
    assert_eq!(served, computed_solo);
    let (got, computed_after) = scores(&env);
    assert_eq!(computed_after, 0, "cells were computed after the import");
    assert_eq!(got, want);
    env.ok(&["verify"]);
}

#[test]
fn a_shard_is_refused_plainly_when_its_arguments_cannot_work() {
    let env = demo(vec![], &[]);
    let out = env.path("p.prh");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (with(&["--shard", "4/4", "--out", o]), "I must be below N"),
        (with(&["--shard", "1/4"]), "--out"),
        (
            with(&["--shard", "0/2", "--out", o, "--workers", "2"]),
            "cannot be used with",
        ),
    ] {
        let e = env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // A part is never overwritten.
    std::fs::write(&out, b"earlier").unwrap();
    let e = env.fails(
        &with(&["--shard", "0/2", "--out", o])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(e.contains("never overwrites"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier");
}
