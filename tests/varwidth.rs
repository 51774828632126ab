//! Variable-width models through the registry: the layout recorded at ingest decides the clamp
//! scope (per layer for per-layer arrays, as the official code), `--clamp-scope` overrides it,
//! the prep key records it, queries serve the cells of the scope asked for, bundles carry it.

use crate::common;

use common::{Env, fixture, ingest_all};
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("varwidth/expected.json")).unwrap()).unwrap()
}

/// Ingests the x features as per-layer .npz arrays and the y features as a platonic-rep .pt
/// list: both per-layer layouts.
fn varwidth_env() -> Env {
    let env = Env::new();
    env.ok(&["init"]);
    ingest_all(
        &env,
        "vw",
        &[
            (fixture("varwidth/x_layers.npz"), "vx", "language"),
            (fixture("varwidth/y_list.pt"), "vy", "vision"),
        ],
    );
    env
}

fn align(env: &Env, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "align",
        "--x",
        "vx",
        "--y",
        "vy",
        "--metric",
        "mutual_knn,cka",
        "--format",
        "json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    env.json(&args).as_array().unwrap().clone()
}

/// The matrix query's single cell for (vx, vy).
fn matrix(env: &Env, metric: &str, extra: &[&str]) -> f64 {
    let mut args = vec![
        "matrix", "--metric", metric, "--x", "vx", "--y", "vy", "--format", "json",
    ];
    args.extend_from_slice(extra);
    let v = env.json(&args);
    v[0]["vy"].as_f64().unwrap_or_else(|| panic!("matrix: {v}"))
}

/// mutual_knn of px against py and pyz, from the matrix query.
fn px_matrix(env: &Env) -> Value {
    env.json(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        "px",
        "--y",
        "py,pyz",
        "--format",
        "json",
    ])
}

fn score(rows: &[Value], metric: &str) -> f64 {
    rows.iter().find(|r| r["metric"] == metric).unwrap()["score"]
        .as_f64()
        .unwrap()
}

#[test]
fn per_layer_features_get_the_official_numbers_and_queries_agree() {
    let env = varwidth_env();
    let exp = expected();
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    let reps = reps.as_array().unwrap();
    assert_eq!(reps.len(), 7);
    assert!(reps.iter().all(|r| r["layout"] == "layers"), "{reps:?}");

    let rows = align(&env, &[]);
    for metric in ["mutual_knn", "cka"] {
        let r = rows.iter().find(|r| r["metric"] == metric).unwrap();
        let e = &exp["metrics"][metric];
        let want = e["value"].as_f64().unwrap();
        let tol = if metric == "cka" { 1e-4 } else { 1e-6 };
        assert!(
            (r["score"].as_f64().unwrap() - want).abs() <= tol,
            "{metric}: {} vs official {want}",
            r["score"]
        );
        assert_eq!(r["best_layers"], e["best_layers"], "{metric}");
        assert_eq!(r["cells_computed"], 12);
    }

    // The keys record the scope and each layer's own threshold: 3 x keys, 4 y keys.
    let mut keys: Vec<String> = common::open(&env)
        .catalog
        .cell_sides()
        .unwrap()
        .into_iter()
        .map(|s| s.prep)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 7, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("clamp(q=0.95,scope=layer,t=0x"))
    );

    // Queries attribute those cells to the checkpoints and give the same numbers.
    for metric in ["mutual_knn", "cka"] {
        assert_eq!(matrix(&env, metric, &[]), score(&rows, metric), "{metric}");
    }
    // Nothing cached at the other scope yet: the query says how to fill it.
    let e = env.fails(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        "vx",
        "--y",
        "vy",
        "--clamp-scope",
        "checkpoint",
    ]);
    assert!(e.contains("--clamp-scope checkpoint"), "{e}");

    // One threshold over the checkpoint, on request: the stacked-tensor numbers, cached apart.
    let forced = align(&env, &["--clamp-scope", "checkpoint"]);
    let (mk, cka) = (score(&forced, "mutual_knn"), score(&forced, "cka"));
    assert!(
        (mk - 0.554).abs() < 5e-4 && (cka - 0.8546).abs() < 5e-4,
        "{mk} {cka}"
    );
    assert!(forced.iter().all(|r| r["cells_computed"] == 12));
    assert_eq!(
        matrix(&env, "mutual_knn", &["--clamp-scope", "checkpoint"]),
        mk
    );
    assert_eq!(matrix(&env, "mutual_knn", &[]), score(&rows, "mutual_knn"));
    assert_eq!(
        matrix(&env, "mutual_knn", &["--clamp-scope", "layer"]),
        score(&rows, "mutual_knn"),
        "layer scope is what auto chose for per-layer arrays"
    );
    let again = align(&env, &[]);
    assert!(again.iter().all(|r| r["cells_cached"] == 12));
}

#[test]
fn one_content_two_layouts_two_scopes_and_a_bundle_carries_layouts() {
    let env = varwidth_env();
    // pipeline_y as a stacked n × L × d tensor (py) and as one array per layer (pyz): the
    // same blobs, clamped over the checkpoint for py and per layer for pyz.
    ingest_all(
        &env,
        "ref",
        &[
            (fixture("reference/pipeline_x.npy"), "px", "language"),
            (fixture("reference/pipeline_y.npy"), "py", "vision"),
            (fixture("reference/pipeline_y.npz"), "pyz", "vision"),
        ],
    );
    let layout = |m: &str| -> Vec<Value> {
        let reps = env.json(&["ls", "reps", "--model", m, "--format", "json"]);
        reps.as_array()
            .unwrap()
            .iter()
            .map(|r| r["layout"].clone())
            .collect()
    };
    assert_eq!(layout("py"), vec![Value::from("stacked"); 4]);
    assert_eq!(layout("pyz"), vec![Value::from("layers"); 4]);
    let hashes = |m: &str| -> Vec<Value> {
        let reps = env.json(&["ls", "reps", "--model", m, "--format", "json"]);
        reps.as_array()
            .unwrap()
            .iter()
            .map(|r| r["hash"].clone())
            .collect()
    };
    assert_eq!(hashes("py"), hashes("pyz"), "same content, same blobs");

    let v = env.json(&[
        "align",
        "--x",
        "px",
        "--y",
        "py,pyz",
        "--metric",
        "mutual_knn",
        "--format",
        "json",
        "--quiet",
    ]);
    let by_y = |m: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["y_model"] == m)
            .unwrap()["score"]
            .as_f64()
            .unwrap()
    };
    let official = prh_expected_pipeline_mutual_knn();
    assert!(
        (by_y("py") - official).abs() <= 1e-6,
        "stacked: {} vs {official}",
        by_y("py")
    );
    assert!(
        (by_y("pyz") - by_y("py")).abs() > 1e-4,
        "per-layer clamp differs here"
    );
    // The query keeps them apart although they share every blob.
    let m = px_matrix(&env);
    assert_eq!(m[0]["py"].as_f64().unwrap(), by_y("py"));
    assert_eq!(m[0]["pyz"].as_f64().unwrap(), by_y("pyz"));
    // The y-side prep keys of py's mutual_knn cells: one over the checkpoint, four per layer.
    let reg = common::open(&env);
    let py: std::collections::HashSet<String> = reg
        .catalog
        .reps(&prh::catalog::RepFilter {
            model: Some("py".into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.hash.to_hex())
        .collect();
    let mut preps: Vec<String> = reg
        .catalog
        .cell_rows(prh::catalog::CellTable::Served)
        .unwrap()
        .into_iter()
        .filter(|c| c.metric == "mutual_knn" && py.contains(&c.hash_y))
        .map(|c| c.prep_y)
        .collect();
    preps.sort();
    preps.dedup();
    let per_layer = preps.iter().filter(|p| p.contains("scope=layer")).count();
    assert_eq!((preps.len() - per_layer, per_layer), (1, 4), "{preps:?}");

    // A bundle carries the layouts; the importer recomputes every threshold from the blobs and
    // serves the same numbers for both scopes.
    let rows = align(&env, &[]);
    let bundle = env.path("vw.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["init"]);
    other.ok(&["import", bundle.to_str().unwrap(), "--trust-cells"]);
    assert_eq!(
        env.json(&["ls", "reps", "--format", "json"]),
        other.json(&["ls", "reps", "--format", "json"])
    );
    assert_eq!(
        matrix(&other, "mutual_knn", &[]),
        score(&rows, "mutual_knn")
    );
    let m2 = px_matrix(&other);
    assert_eq!(m, m2);
    let again = align(&other, &[]);
    assert!(again.iter().all(|r| r["cells_computed"] == 0), "{again:?}");
}

fn prh_expected_pipeline_mutual_knn() -> f64 {
    let e: Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/expected.json")).unwrap())
            .unwrap();
    e["pipeline"]["mutual_knn"]["best"].as_f64().unwrap()
}

#[test]
fn checkpoints_without_a_recorded_layout_keep_one_threshold_until_ingested_again() {
    let env = varwidth_env();
    // As a registry from before layouts were recorded (schema 5, migrated) has them.
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    assert_eq!(
        db.execute("UPDATE representations SET layout = NULL", [])
            .unwrap(),
        7
    );
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    assert!(
        reps.as_array()
            .unwrap()
            .iter()
            .all(|r| r["layout"].is_null())
    );
    let old = align(&env, &[]);
    assert!((score(&old, "mutual_knn") - 0.554).abs() < 5e-4, "{old:?}");
    let out = env.ok(&[
        "ingest",
        fixture("varwidth/x_layers.npz").to_str().unwrap(),
        "--model",
        "vx",
        "--dataset",
        "vw",
    ]);
    assert!(
        out.contains("recorded the layout of 3 layers") && !out.contains("nothing new"),
        "{out}"
    );
    env.ok(&[
        "ingest",
        fixture("varwidth/y_list.pt").to_str().unwrap(),
        "--model",
        "vy",
        "--dataset",
        "vw",
    ]);
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    assert!(
        reps.as_array()
            .unwrap()
            .iter()
            .all(|r| r["layout"] == "layers")
    );
    let now = align(&env, &[]);
    let want = expected()["metrics"]["mutual_knn"]["value"]
        .as_f64()
        .unwrap();
    assert!((score(&now, "mutual_knn") - want).abs() <= 1e-6, "{now:?}");
}
