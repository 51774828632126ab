//! Queries on the demo zoo (known quality order): trend signs, matrix shape and order,
//! trajectory order, SQL answers, plots and output formats.

use crate::common;

use common::{Env, noise, write_npy};

fn demo() -> Env {
    let env = Env::new();
    let reg = env.reg();
    env.ok(&["demo", "--dir", reg.to_str().unwrap(), "--no-plots"]);
    env
}

#[test]
fn trend_signs_follow_the_known_quality_order() {
    let env = demo();
    // bpb is lower-is-better: better language models have lower bpb and align more.
    let t = env.json(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
        "--format",
        "json",
    ]);
    assert_eq!(t["n_models"], 6);
    assert!(t["pearson_r"].as_f64().unwrap() < -0.8, "{t}");
    assert!(t["spearman_rho"].as_f64().unwrap() < -0.7, "{t}");
    assert!(t["slope"].as_f64().unwrap() < 0.0);
    assert_eq!(t["higher_is_better"], false);
    let ci = t["r_ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
    for k in [
        "models",
        "pearson_r",
        "pearson_p",
        "spearman_rho",
        "spearman_p",
        "slope",
        "intercept",
        "r_ci95",
        "n_models",
    ] {
        assert!(t.get(k).is_some(), "{k}");
    }
    let m = &t["models"][0];
    for k in ["model", "checkpoint", "alignment", "performance"] {
        assert!(m.get(k).is_some(), "{k}");
    }
    // A higher-is-better score gives a positive correlation.
    let v = env.json(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=vision",
        "--y",
        "modality=language",
        "--perf",
        "accuracy",
        "--format",
        "json",
    ]);
    assert!(v["pearson_r"].as_f64().unwrap() > 0.8, "{v}");
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .contains("better models align more")
    );
    // The table ends with the verdict.
    let table = env.ok(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
    ]);
    assert!(table.contains("raw: better models align more:"), "{table}");
    // One series per y model.
    let per_y = env.json(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
        "--per-y",
        "--format",
        "json",
    ]);
    assert_eq!(per_y["models"].as_array().unwrap().len(), 36);
}

#[test]
fn missing_cells_name_the_align_command_and_compute_fills_them() {
    let env = demo();
    let e = env.fails(&[
        "trend",
        "--metric",
        "cka",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
    ]);
    assert!(
        e.contains("prh align --metric cka --x modality=language --y modality=vision"),
        "{e}"
    );
    let t = env.json(&[
        "trend",
        "--metric",
        "cka",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
        "--compute",
        "--format",
        "json",
    ]);
    assert!(t["pearson_r"].as_f64().unwrap() < 0.0);
}

#[test]
fn calibrated_trend_is_shown_beside_the_raw_one() {
    let env = demo();
    let t = env.json(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
        "--calibrated",
        "--null",
        "30",
        "--format",
        "json",
    ]);
    assert!(t["raw"]["pearson_r"].as_f64().unwrap() < 0.0);
    let cal = &t["calibrated"];
    assert_eq!(cal["n_models"], 6);
    // Calibrated scores are below the raw ones (the null mean is subtracted).
    for (r, c) in t["raw"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cal["models"].as_array().unwrap())
    {
        assert!(c["alignment"].as_f64().unwrap() < r["alignment"].as_f64().unwrap());
    }
}

#[test]
fn within_bins_and_matrix_order_and_shape() {
    let env = demo();
    env.ok(&[
        "align",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=vision",
        "--y",
        "modality=vision",
        "--quiet",
    ]);
    let bins = env.json(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=vision",
        "--within",
        "--perf",
        "accuracy",
        "--bins",
        "2",
        "--format",
        "json",
    ]);
    let b = bins.as_array().unwrap();
    assert_eq!(b.len(), 2);
    assert!(
        b[0]["performance_mean"].as_f64().unwrap() < b[1]["performance_mean"].as_f64().unwrap()
    );
    assert!(
        b[0]["alignment_mean"].as_f64().unwrap() < b[1]["alignment_mean"].as_f64().unwrap(),
        "{bins}"
    );
    let m = env.json(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
        "--format",
        "json",
    ]);
    let rows = m.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "lm-tiny", "lm-small", "lm-base", "lm-large", "lm-xl", "lm-xxl"
        ],
        "worst to best by bpb"
    );
    let cols: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
    assert_eq!(
        cols.len(),
        9,
        "model, reduce, prep and one column per vision model"
    );
    assert!(rows.iter().all(|r| r["reduce"] == "max"));
    assert!(rows.iter().all(|r| r["prep"] == "clamp(q=0.95);l2"));
    // The best pair is the best language model with the best vision model.
    let best = rows[5]["vit-e"].as_f64().unwrap();
    for r in rows {
        for (k, v) in r.as_object().unwrap() {
            if !["model", "reduce", "prep"].contains(&k.as_str()) {
                assert!(v.as_f64().unwrap() <= best);
            }
        }
    }
}

#[test]
fn trajectory_follows_training_steps() {
    let env = demo();
    let t = env.json(&[
        "trajectory",
        "--model",
        "lm-large",
        "--against",
        "vit-h",
        "--metric",
        "mutual_knn",
        "--compute",
        "--format",
        "json",
    ]);
    let pts = t.as_array().unwrap();
    let steps: Vec<i64> = pts.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [2500, 5000, 7500, 10000]);
    let scores: Vec<f64> = pts.iter().map(|p| p["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] < w[1]),
        "alignment grows with training: {scores:?}"
    );
}

#[test]
fn sql_answers_match_hand_computed_values() {
    let env = demo();
    let v = env.json(&[
        "query",
        "SELECT count(*) AS n FROM reps",
        "--format",
        "json",
    ]);
    assert_eq!(v[0]["n"], 90);
    let v = env.json(&[
        "query",
        "SELECT name FROM models WHERE modality = 'vision' ORDER BY name",
        "--format",
        "json",
    ]);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["vit-b", "vit-e", "vit-g", "vit-h", "vit-l", "vit-s"]
    );
    let a = env.json(&[
        "align",
        "--metric",
        "mutual_knn",
        "--x",
        "lm-large",
        "--y",
        "vit-h",
        "--format",
        "json",
        "--quiet",
    ]);
    let q = env.json(&[
        "query",
        "SELECT score, x_layer, y_layer, cells FROM alignment WHERE metric = 'mutual_knn' AND x_model = 'lm-large' AND y_model = 'vit-h' AND x_checkpoint = 'final'",
        "--format",
        "json",
    ]);
    assert_eq!(q[0]["score"], a[0]["score"]);
    assert_eq!(q[0]["x_layer"], a[0]["best_layers"][0]);
    assert_eq!(q[0]["y_layer"], a[0]["best_layers"][1]);
    assert_eq!(q[0]["cells"], 36);
    // Max over the layer-pair cells equals the model-pair score.
    let c = env.json(&[
        "query",
        "SELECT max(c.value) AS best FROM cells c JOIN reps x ON x.rep = c.x_rep JOIN reps y ON y.rep = c.y_rep WHERE c.metric = 'mutual_knn' AND x.model = 'lm-large' AND x.checkpoint = 'final' AND y.model = 'vit-h'",
        "--format",
        "json",
    ]);
    assert_eq!(c[0]["best"], a[0]["score"]);
    let e = env.fails(&["query", "SELECT nope FROM models"]);
    assert!(e.contains("query"), "{e}");
}

#[test]
fn plots_and_file_formats() {
    let env = demo();
    let svg = env.path("trend.svg");
    let png = env.path("matrix.png");
    let traj = env.path("traj.svg");
    env.ok(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--perf",
        "bpb",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    env.ok(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--plot",
        png.to_str().unwrap(),
    ]);
    env.ok(&[
        "trajectory",
        "--model",
        "lm-large",
        "--against",
        "vit-h,vit-s",
        "--metric",
        "mutual_knn",
        "--compute",
        "--plot",
        traj.to_str().unwrap(),
    ]);
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(
        s.contains("<svg") && s.contains("lm-large") && s.contains("r = "),
        "svg lacks content"
    );
    let p = std::fs::read(&png).unwrap();
    assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
    assert!(p.len() > 10_000);
    assert!(std::fs::read_to_string(&traj).unwrap().contains("vit-s"));
    let pq = env.path("models.parquet");
    env.ok(&[
        "query",
        "SELECT * FROM models",
        "--format",
        "parquet",
        "--out",
        pq.to_str().unwrap(),
    ]);
    let b = std::fs::read(&pq).unwrap();
    assert_eq!(&b[..4], b"PAR1");
    let csv = env.path("m.csv");
    env.ok(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--format",
        "csv",
        "--out",
        csv.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 7);
    assert!(text.starts_with("model,"));
    let e = env.fails(&["query", "SELECT * FROM models", "--format", "parquet"]);
    assert!(e.contains("--out"), "{e}");
}

/// Two checkpoints share one layer (a frozen layer during fine-tuning) but differ elsewhere, so
/// their checkpoint-wide clamp thresholds differ and the shared blob has cells under both. The
/// query tables used to attribute both sets of cells to both checkpoints (6 cells where there
/// are 4, and the other checkpoint's maximum served).
#[test]
fn a_layer_shared_by_checkpoints_with_different_thresholds_is_scored_per_checkpoint() {
    let env = Env::new();
    env.ok(&["init"]);
    let n = 100;
    let shared = noise(n * 16, 1);
    let layer = |seed: u64, scale: f32| -> Vec<f32> {
        noise(n * 16, seed).iter().map(|v| v * scale).collect()
    };
    let stack = |a: &[f32], b: &[f32]| -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                a[i * 16..(i + 1) * 16]
                    .iter()
                    .chain(&b[i * 16..(i + 1) * 16])
            })
            .copied()
            .collect()
    };
    for (ck, step, other) in [("c1", "1", layer(2, 1.0)), ("c2", "2", layer(3, 50.0))] {
        let p = env.path(&format!("{ck}.npy"));
        write_npy(&p, &[n, 2, 16], &stack(&shared, &other));
        env.ok(&[
            "ingest",
            p.to_str().unwrap(),
            "--model",
            "m",
            "--checkpoint",
            ck,
            "--step",
            step,
            "--dataset",
            "d",
            "--modality",
            "language",
        ]);
    }
    let y = env.path("y.npy");
    write_npy(&y, &[n, 2, 16], &noise(n * 32, 4));
    env.ok(&[
        "ingest",
        y.to_str().unwrap(),
        "--model",
        "v",
        "--dataset",
        "d",
        "--modality",
        "vision",
    ]);
    let aligned = env.json(&[
        "align",
        "--metric",
        "mutual_knn",
        "--x",
        "m",
        "--y",
        "v",
        "--all-checkpoints",
        "--format",
        "json",
    ]);
    let check = |env: &Env| {
        let q = env.json(&[
            "query",
            "SELECT x_checkpoint, score, cells, complete FROM alignment
             WHERE metric = 'mutual_knn' AND x_model = 'm' ORDER BY x_checkpoint",
            "--format",
            "json",
        ]);
        let rows = q.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{q}");
        for (r, a) in rows.iter().zip(aligned.as_array().unwrap()) {
            assert_eq!(r["x_checkpoint"], a["x_checkpoint"]);
            assert_eq!(r["cells"], 4, "{q}");
            assert_eq!(r["complete"], true, "{q}");
            assert_eq!(r["score"], a["score"], "query {q} vs align {aligned}");
        }
    };
    check(&env);
    // The same after moving the registry: thresholds are recomputed from the blobs at import.
    let bundle = env.path("b.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["init"]);
    other.ok(&["import", bundle.to_str().unwrap(), "--trust-cells"]);
    check(&other);
}

#[test]
fn a_matrix_of_q_values_is_benjamini_hochberg_over_its_pairs_p_values() {
    let env = demo();
    const GRID: [&str; 7] = [
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--quiet",
    ];
    let m = |values: &str| {
        let args = [
            &["matrix"][..],
            &GRID[..6],
            &["--values", values, "--null", "50"],
        ];
        env.json(&[&args.concat()[..], &["--format", "json"]].concat())
    };
    let (p, q) = (m("p_value"), m("q_value"));
    let cells = |v: &serde_json::Value| -> Vec<(String, String, f64)> {
        let mut out = Vec::new();
        for r in v.as_array().unwrap() {
            for (k, x) in r.as_object().unwrap() {
                if !["model", "reduce", "prep", "values"].contains(&k.as_str()) {
                    out.push((
                        r["model"].as_str().unwrap().into(),
                        k.clone(),
                        x.as_f64().unwrap(),
                    ));
                }
            }
        }
        out
    };
    let (ps, qs) = (cells(&p), cells(&q));
    assert_eq!(ps.len(), 36);
    // By hand: q_i = min over j with p_j ≥ p_i of p_j · m / rank_j, capped at 1.
    let mut sorted: Vec<f64> = ps.iter().map(|c| c.2).collect();
    sorted.sort_by(f64::total_cmp);
    let m_ = sorted.len() as f64;
    for ((xm, ym, pv), (xq, yq, qv)) in ps.iter().zip(&qs) {
        assert_eq!((xm, ym), (xq, yq));
        let want = sorted
            .iter()
            .enumerate()
            .filter(|(_, s)| **s >= *pv)
            .map(|(i, s)| s * m_ / (i + 1) as f64)
            .fold(1.0f64, f64::min);
        assert!(
            (qv - want).abs() < 1e-12,
            "{xm} × {ym}: q {qv}, by hand {want}"
        );
    }
    // The same q-values `prh align --null` gives its pairs, and a null is needed.
    let a = env.json(&[&["align"][..], &GRID, &["--null", "50", "--format", "json"]].concat());
    for r in a.as_array().unwrap() {
        let (xm, ym) = (
            r["x_model"].as_str().unwrap(),
            r["y_model"].as_str().unwrap(),
        );
        let cell = qs.iter().find(|c| c.0 == xm && c.1 == ym).unwrap();
        assert_eq!(r["q_value"].as_f64().unwrap(), cell.2, "{xm} × {ym}");
    }
    let e = env.fails_with(
        2,
        &[&["matrix"][..], &GRID[..6], &["--values", "q_value"]].concat(),
    );
    assert!(e.contains("needs a permutation null"), "{e}");
}
