//! `--reduce max|mean|last|layers=I,J`: the model-pair score as an aggregate of the layer-pair
//! table, from the same cached cells, in every output, with nulls recomputing the aggregate.

use crate::common;

use common::{Env, fixture, pipeline_env};
use serde_json::Value;

fn expected_table(metric: &str) -> Vec<Vec<f64>> {
    let e: Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/expected.json")).unwrap())
            .unwrap();
    e["pipeline"][metric]["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn align(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec![
        "align",
        "--x",
        "x",
        "--y",
        "y",
        "--metric",
        "mutual_knn",
        "--format",
        "json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    env.json(&args)[0].clone()
}

#[test]
fn every_reduction_comes_from_the_same_cached_cells() {
    let env = pipeline_env();
    let t = expected_table("mutual_knn");
    let mean = t.iter().flatten().sum::<f64>() / 20.0;
    let max = align(&env, &[]);
    assert_eq!(max["reduce"], "max");
    assert_eq!(max["cells_computed"], 20);
    for (reduce, want, layers) in [
        ("mean", mean, Value::Null),
        ("last", t[4][3], serde_json::json!([4, 3])),
        ("layers=1,2", t[1][2], serde_json::json!([1, 2])),
    ] {
        let r = align(&env, &["--reduce", reduce]);
        assert_eq!(r["reduce"], reduce);
        assert_eq!(r["cells_computed"], 0, "{reduce}: served from the cache");
        assert!(
            (r["score"].as_f64().unwrap() - want).abs() <= 1e-6,
            "{reduce}: {} vs {want}",
            r["score"]
        );
        assert_eq!(
            r.get("best_layers").cloned().unwrap_or(Value::Null),
            layers,
            "{reduce}"
        );
        // The queries aggregate the cached cells the same way and say so.
        let m = env.json(&[
            "matrix",
            "--metric",
            "mutual_knn",
            "--x",
            "x",
            "--y",
            "y",
            "--reduce",
            reduce,
            "--format",
            "json",
        ]);
        assert_eq!(m[0]["reduce"], reduce);
        assert!((m[0]["y"].as_f64().unwrap() - r["score"].as_f64().unwrap()).abs() < 1e-12);
    }
    // compare: the same aggregates straight from the files.
    let c = env.json(&[
        "compare",
        fixture("reference/pipeline_x.npy").to_str().unwrap(),
        fixture("reference/pipeline_y.npy").to_str().unwrap(),
        "--metric",
        "mutual_knn",
        "--reduce",
        "last",
        "--format",
        "json",
    ]);
    assert_eq!(c["reduce"], "last");
    assert!((c["value"].as_f64().unwrap() - t[4][3]).abs() <= 1e-6);
    assert_eq!(c["best_layers"], serde_json::json!([4, 3]));

    let reduce = |r: &str| {
        env.prh(&[
            "align",
            "--x",
            "x",
            "--y",
            "y",
            "--metric",
            "mutual_knn",
            "--reduce",
            r,
        ])
    };
    let e = reduce("layers=5,0");
    assert_eq!(e.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("5 × 4 layers"), "{msg}");
    let e = reduce("median");
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("max, mean, last or layers=I,J"));
}

#[test]
fn the_null_recomputes_the_same_aggregate_per_permutation() {
    let env = pipeline_env();
    let max = align(&env, &["--null", "30"]);
    let mean = align(&env, &["--null", "30", "--reduce", "mean"]);
    let pair = align(&env, &["--null", "30", "--reduce", "layers=2,1"]);
    let m = |v: &Value| v["null_mean"].as_f64().unwrap();
    // Per permutation the mean over layer pairs is at most their max, and one pair's null is
    // that pair's alone: three different samples.
    assert!(m(&mean) < m(&max), "{} {}", m(&mean), m(&max));
    assert!(m(&pair) <= m(&max) && m(&pair) != m(&mean));
    for v in [&max, &mean, &pair] {
        assert!(v["p_value"].as_f64().unwrap() < 0.05, "{v}");
    }
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    let params: Vec<String> = db
        .prepare("SELECT params FROM null_samples ORDER BY params")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        params,
        ["k=10", "k=10;reduce=layers=2,1", "k=10;reduce=mean"]
    );
    // A second run serves the cached sample.
    let again = align(&env, &["--null", "30", "--reduce", "layers=2,1"]);
    assert_eq!(again["null_mean"], pair["null_mean"]);
}
