//! `prh align` and `prh log`: official numbers through the registry, the cache, resumption after
//! a kill, and concurrent processes.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{Env, fixture, pipeline_env};
use prh::demo::{ZooModel, ZooSpec};
use serde_json::Value;

fn align(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec![
        "align", "--x", "x", "--y", "y", "--format", "json", "--quiet",
    ];
    args.extend_from_slice(extra);
    env.json(&args)
}

#[test]
fn align_reproduces_the_official_pipeline_and_second_run_is_all_cached() {
    let env = pipeline_env();
    let exp: Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/expected.json")).unwrap())
            .unwrap();
    for metric in ["mutual_knn", "cycle_knn", "cka", "unbiased_cka", "cknna"] {
        let e = &exp["pipeline"][metric];
        let v = align(&env, &["--metric", metric]);
        let r = &v[0];
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = vec![
            "x_model",
            "y_model",
            "x_checkpoint",
            "y_checkpoint",
            "metric",
            "reduce",
            "prep",
            "score",
            "best_layers",
            "cells_computed",
            "cells_cached",
        ];
        assert_eq!(r["reduce"], "max");
        assert_eq!(r["prep"], "clamp(q=0.95);l2");
        if metric != "cka" && metric != "unbiased_cka" {
            want.insert(9, "ties");
            // Continuous heavy-tailed features: no two neighbours equally similar.
            assert_eq!(r["ties"], 0, "{metric}");
        }
        assert_eq!(keys, want);
        let tol = if metric.ends_with("knn") { 1e-6 } else { 1e-4 };
        assert!(
            (r["score"].as_f64().unwrap() - e["best"].as_f64().unwrap()).abs() <= tol,
            "{metric}: {} vs {}",
            r["score"],
            e["best"]
        );
        assert_eq!(r["best_layers"], e["best_layers"], "{metric}");
        assert_eq!(r["cells_computed"], 20);
        assert_eq!(r["cells_cached"], 0);
        let again = align(&env, &["--metric", metric]);
        assert_eq!(again[0]["cells_computed"], 0);
        assert_eq!(again[0]["cells_cached"], 20);
        assert_eq!(again[0]["score"], r["score"]);
    }
}

#[test]
fn cache_keys_separate_params_prep_and_metric_versions() {
    let env = pipeline_env();
    align(&env, &["--metric", "mutual_knn"]);
    let k5 = align(&env, &["--metric", "mutual_knn", "--k", "5"]);
    assert_eq!(k5[0]["cells_computed"], 20, "another k is another cell");
    let raw = align(&env, &["--metric", "mutual_knn", "--no-prep"]);
    assert_eq!(raw[0]["cells_computed"], 20, "another prep is another cell");
    // A cached row from an older metric version is never reused.
    // (Cells name their key by ids derived from it: the old version gets its own id.)
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    let (now, old) = (
        prh::catalog::metric_id(
            "mutual_knn",
            prh::metrics::Metric::MutualKnn.version().into(),
            "k=10",
        ),
        prh::catalog::metric_id("mutual_knn", 0, "k=10"),
    );
    db.execute(
        "INSERT INTO cell_metrics (id, metric, version, params) VALUES (?1, 'mutual_knn', 0, 'k=10')",
        [old],
    )
    .unwrap();
    let changed = db
        .execute(
            "UPDATE cells SET m = ?2, value = 99 WHERE m = ?1
               AND x IN (SELECT id FROM cell_sides WHERE prep LIKE 'clamp%')",
            [now, old],
        )
        .unwrap();
    assert_eq!(changed, 20);
    let v = align(&env, &["--metric", "mutual_knn"]);
    assert_eq!(v[0]["cells_computed"], 20);
    assert!(v[0]["score"].as_f64().unwrap() < 1.0);
    let rows: i64 = db
        .query_row("SELECT count(*) FROM cells", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 80, "old rows are kept (until gc), new ones added");
}

#[test]
fn cells_of_one_clamp_convention_are_never_served_for_the_other() {
    // platonic-rep's two clamp conventions (fixtures/conventions): each sweep computes its own
    // cells, says which convention they are under, and queries keep them apart.
    let env = pipeline_env();
    let exp: Value =
        serde_json::from_slice(&std::fs::read(fixture("conventions/expected.json")).unwrap())
            .unwrap();
    let official = |rule: &str, metric: &str| {
        exp["cases"]["pipeline"]["scores"][rule][metric]["value"]
            .as_f64()
            .unwrap()
    };
    for metric in ["mutual_knn", "cka"] {
        let exact = align(&env, &["--metric", metric]);
        let mean = align(&env, &["--metric", metric, "--clamp-rule", "sample-mean"]);
        for (v, rule, prep) in [
            (&exact, "exact", "clamp(q=0.95);l2"),
            (&mean, "sample-mean", "clamp(q=0.95,rule=sample-mean);l2"),
        ] {
            assert_eq!(v[0]["cells_computed"], 20, "{metric} {rule}: {v}");
            assert_eq!(v[0]["prep"], prep);
            let got = v[0]["score"].as_f64().unwrap();
            assert!(
                (got - official(rule, metric)).abs() <= 1e-4,
                "{metric} {rule}: {got}"
            );
            let again = if rule == "exact" {
                align(&env, &["--metric", metric])
            } else {
                align(&env, &["--metric", metric, "--clamp-rule", rule])
            };
            assert_eq!(again[0]["cells_computed"], 0);
            assert_eq!(again[0]["score"], v[0]["score"]);
        }
    }
    // mutual_knn: 0.164000 exact, 0.164667 sample-mean; the matrix and the query table agree.
    let matrix = |extra: &[&str]| {
        let mut args = vec![
            "matrix",
            "--metric",
            "mutual_knn",
            "--x",
            "x",
            "--y",
            "y",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let row = env.json(&args)[0].clone();
        (
            row["y"].as_f64().unwrap(),
            row["prep"].as_str().unwrap().to_string(),
        )
    };
    let (m, prep) = matrix(&[]);
    assert!((m - official("exact", "mutual_knn")).abs() <= 1e-6);
    assert_eq!(
        prep, "clamp(q=0.95);l2",
        "a matrix row names its preparation"
    );
    let (m, prep) = matrix(&["--clamp-rule", "sample-mean"]);
    assert!(
        (m - official("sample-mean", "mutual_knn")).abs() <= 1e-6,
        "{m}"
    );
    assert_eq!(prep, "clamp(q=0.95,rule=sample-mean);l2");
    let preps = env.ok(&[
        "query",
        "SELECT DISTINCT prep FROM alignment WHERE metric = 'mutual_knn' ORDER BY prep",
        "--format",
        "csv",
    ]);
    assert_eq!(
        preps.lines().collect::<Vec<_>>(),
        [
            "prep",
            "clamp(q=0.95);l2",
            // Quoted: CSV, and the kind holds a comma.
            "\"clamp(q=0.95,rule=sample-mean);l2\""
        ]
    );
}

#[test]
fn log_ingests_and_scores_against_named_models() {
    let env = pipeline_env();
    let v = env.json(&[
        "log",
        fixture("reference/pipeline_x.pt").to_str().unwrap(),
        "--model",
        "x-pt",
        "--checkpoint",
        "step-2000",
        "--dataset",
        "ref",
        "--modality",
        "language",
        "--against",
        "y",
        "--metric",
        "mutual_knn",
        "--score",
        "bpb=0.93",
        "--format",
        "json",
        "--quiet",
    ]);
    assert_eq!(v[0]["x_model"], "x-pt");
    assert_eq!(v[0]["x_checkpoint"], "step-2000");
    assert_eq!(v[0]["best_layers"], serde_json::json!([2, 1]));
    // x was never aligned here, so every cell is new.
    assert_eq!(v[0]["cells_computed"], 20);
    let scores = env.json(&["ls", "scores", "--model", "x-pt", "--format", "json"]);
    assert!(
        scores
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "bpb" && s["value"] == 0.93)
    );
}

/// A zoo big enough that a sweep takes a noticeable time.
fn big_zoo(env: &Env) {
    let mut models = Vec::new();
    for (i, (name, modality)) in [
        ("a1", "language"),
        ("a2", "language"),
        ("b1", "vision"),
        ("b2", "vision"),
    ]
    .into_iter()
    .enumerate()
    {
        models.push(ZooModel {
            name: name.into(),
            modality,
            family: "t",
            quality: 0.2 + 0.2 * i as f64,
            layers: 10,
            d: 96,
            checkpoint: "final".into(),
            step: 1,
            score: ("acc", i as f64, true),
        });
    }
    let zoo = ZooSpec {
        n: 700,
        latent_dim: 8,
        seed: 3,
        models,
    };
    let files = zoo.write_files(&env.path("inputs")).unwrap();
    for (m, path) in files {
        env.ok(&[
            "ingest",
            path.to_str().unwrap(),
            "--model",
            &m.name,
            "--dataset",
            "z",
            "--modality",
            m.modality,
        ]);
    }
}

fn align_cmd(env: &Env) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prh"));
    c.arg("--registry").arg(env.reg()).args([
        "align",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--metric",
        "cknna,rsa,cka",
        "--format",
        "json",
        "--quiet",
    ]);
    c
}

fn scores(v: &Value) -> Vec<(String, String, String, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["x_model"].as_str().unwrap().to_string(),
                r["y_model"].as_str().unwrap().to_string(),
                r["metric"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn killed_sweeps_keep_finished_work_and_resume() {
    let env = Env::new();
    env.ok(&["init"]);
    big_zoo(&env);
    let total = 4 * 10 * 10 * 3;
    // Kill (SIGKILL) as soon as the first model pair's cells are committed, three times.
    let count = || common::cached_cells(&env) as usize;
    let mut partial_seen = 0;
    for _ in 0..3 {
        let before = count();
        let mut child = align_cmd(&env).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while count() == before && std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(common::open(&env).catalog.integrity_check().unwrap(), None);
        let n = count();
        assert!(n <= total);
        // Whole model pairs only: cells are committed 3 metrics x 10 x 10 at a time.
        assert_eq!(n % 300, 0, "a half-written pair: {n} cells");
        if n > before && n < total {
            partial_seen += 1;
        }
        assert_eq!(std::fs::read_dir(env.reg().join("tmp")).unwrap().count(), 0);
        let v = env.prh(&["verify", "--recompute", "5"]);
        assert!(
            v.status.success(),
            "verify after a kill: {}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
    assert!(partial_seen >= 1, "no kill landed mid-sweep");
    let out = align_cmd(&env).output().unwrap();
    assert!(out.status.success());
    let resumed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let computed: u64 = resumed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells_computed"].as_u64().unwrap())
        .sum();
    let cached: u64 = resumed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells_cached"].as_u64().unwrap())
        .sum();
    assert_eq!((computed + cached) as usize, total);
    // A clean registry computes the same numbers.
    let fresh = Env::new();
    fresh.ok(&["init"]);
    big_zoo(&fresh);
    let clean: Value = serde_json::from_slice(&align_cmd(&fresh).output().unwrap().stdout).unwrap();
    assert_eq!(scores(&resumed), scores(&clean));
    assert!(
        cached > 0,
        "the resumed sweep reused the killed runs' cells"
    );
}

#[test]
fn two_sweeps_at_once_both_finish_without_lock_errors() {
    let env = Env::new();
    env.ok(&["init"]);
    big_zoo(&env);
    let a = align_cmd(&env).spawn_output();
    let b = align_cmd(&env).spawn_output();
    let (oa, ob) = (a.join().unwrap(), b.join().unwrap());
    for o in [&oa, &ob] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let va: Value = serde_json::from_slice(&oa.stdout).unwrap();
    let vb: Value = serde_json::from_slice(&ob.stdout).unwrap();
    assert_eq!(scores(&va), scores(&vb));
    // Both computed cells: they ran at once (one after the other, the second finds all cached).
    let computed = common::cells_computed;
    assert!(
        computed(&va) > 0 && computed(&vb) > 0,
        "one sweep found everything cached: they did not overlap ({} and {} cells computed)",
        computed(&va),
        computed(&vb)
    );
    assert_eq!(
        common::cached_cells(&env),
        4 * 10 * 10 * 3,
        "every cell once: no duplicates, none lost"
    );
}

trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<std::process::Output>;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

#[test]
fn null_and_bootstrap_fields_are_added_cached_and_extended() {
    let env = pipeline_env();
    let plain = align(&env, &["--metric", "mutual_knn"]);
    assert!(
        plain[0].get("p_value").is_none(),
        "statistics only when asked"
    );
    let v = align(
        &env,
        &[
            "--metric",
            "mutual_knn",
            "--null",
            "60",
            "--bootstrap",
            "20",
            "--seed",
            "3",
        ],
    );
    let r = &v[0];
    for f in [
        "null_mean",
        "null_sd",
        "p_value",
        "z",
        "tau",
        "calibrated",
        "chance_adjusted",
        "ci95",
    ] {
        assert!(r.get(f).is_some(), "missing {f}: {r}");
    }
    let score = r["score"].as_f64().unwrap();
    // The published calibration: τ below the score it beats, calibrated from τ, the
    // chance-adjusted score from the null mean.
    let (tau, mean) = (r["tau"].as_f64().unwrap(), r["null_mean"].as_f64().unwrap());
    assert!(tau < score && tau > mean, "{r}");
    let cal = r["calibrated"].as_f64().unwrap();
    assert!((cal - (score - tau) / (1.0 - tau)).abs() < 1e-12, "{r}");
    let adj = r["chance_adjusted"].as_f64().unwrap();
    assert!((adj - (score - mean) / (1.0 - mean)).abs() < 1e-12, "{r}");
    // A looser level lowers τ and raises the calibrated score; the draws are the cached ones.
    let loose = align(
        &env,
        &[
            "--metric",
            "mutual_knn",
            "--null",
            "60",
            "--seed",
            "3",
            "--alpha",
            "0.5",
        ],
    );
    assert!(loose[0]["tau"].as_f64().unwrap() < tau);
    assert!(loose[0]["calibrated"].as_f64().unwrap() > cal);
    assert_eq!(loose[0]["null_mean"], r["null_mean"]);
    let ci = r["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
    // The pipeline pair shares structure: the best layer pair beats every permutation.
    assert_eq!(r["p_value"].as_f64().unwrap(), 1.0 / 61.0);
    assert!(r["null_mean"].as_f64().unwrap() < score);
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    let len = |kind: &str| -> i64 {
        db.query_row(
            "SELECT length(vals) / 8 FROM null_samples WHERE kind = ?1",
            [kind],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(len("permutation"), 60);
    assert_eq!(len("bootstrap"), 20);
    // Same request again: identical numbers from the cache.
    let again = align(
        &env,
        &[
            "--metric",
            "mutual_knn",
            "--null",
            "60",
            "--bootstrap",
            "20",
            "--seed",
            "3",
        ],
    );
    assert_eq!(again[0]["null_mean"], r["null_mean"]);
    assert_eq!(again[0]["ci95"], r["ci95"]);
    // A larger P extends the stored sample; the first 60 draws are the same ones.
    let more = align(
        &env,
        &["--metric", "mutual_knn", "--null", "90", "--seed", "3"],
    );
    assert_eq!(len("permutation"), 90);
    assert_eq!(more[0]["p_value"].as_f64().unwrap(), 1.0 / 91.0);
    let fresh = pipeline_env();
    let direct = align(
        &fresh,
        &["--metric", "mutual_knn", "--null", "90", "--seed", "3"],
    );
    assert_eq!(direct[0]["null_mean"], more[0]["null_mean"]);
    // compare offers the same statistics without a registry.
    let c = env.json(&[
        "compare",
        fixture("reference/pipeline_x.npy").to_str().unwrap(),
        fixture("reference/pipeline_y.npy").to_str().unwrap(),
        "--metric",
        "mutual_knn",
        "--null",
        "90",
        "--seed",
        "3",
        "--format",
        "json",
    ]);
    assert_eq!(c["null_mean"], more[0]["null_mean"]);
    assert_eq!(c["p_value"], more[0]["p_value"]);
    assert_eq!(c["tau"], more[0]["tau"]);
    assert_eq!(c["calibrated"], more[0]["calibrated"]);
}
