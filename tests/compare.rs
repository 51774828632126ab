//! `prh compare`: one-shot alignment of two files, official numbers, clear errors.

use crate::common;

use common::{Env, fixture, noise, write_npy};
use serde_json::Value;

fn refp(name: &str) -> String {
    fixture(&format!("reference/{name}"))
        .to_str()
        .unwrap()
        .to_string()
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("reference/expected.json")).unwrap()).unwrap()
}

#[test]
fn multi_layer_files_report_the_official_best_pair_and_table() {
    let env = Env::new();
    let exp = expected();
    // The reference clamps pipeline_y as one n × L × d tensor; the per-layer containers of the
    // same features get that scope on request (their default, per layer, is tested below).
    for (x, y) in [
        ("pipeline_x.npy", "pipeline_y.npy"),
        ("pipeline_x.pt", "pipeline_y.safetensors"),
        ("pipeline_x.npy", "pipeline_y_list.pt"),
    ] {
        let v = env.json(&[
            "compare",
            &refp(x),
            &refp(y),
            "--metric",
            "mutual_knn",
            "--table",
            "--clamp-scope",
            "checkpoint",
            "--format",
            "json",
        ]);
        let e = &exp["pipeline"]["mutual_knn"];
        assert_eq!(v["metric"], "mutual_knn");
        assert_eq!(v["params"]["k"], 10);
        assert!(
            (v["value"].as_f64().unwrap() - e["best"].as_f64().unwrap()).abs() < 1e-6,
            "{x} {y}"
        );
        assert_eq!(v["best_layers"], e["best_layers"]);
        assert_eq!(v["table"].as_array().unwrap().len(), 5);
        assert_eq!(v["table"][0].as_array().unwrap().len(), 4);
    }
    // By default per-layer arrays are clamped layer by layer, as the official code does a list:
    // every per-layer container agrees, and differs from the stacked tensor here.
    let auto = |y: &str| {
        let v = env.json(&[
            "compare",
            &refp("pipeline_x.npy"),
            &refp(y),
            "--metric",
            "mutual_knn",
            "--format",
            "json",
        ]);
        v["value"].as_f64().unwrap()
    };
    let stacked = auto("pipeline_y.npy");
    let listed = auto("pipeline_y_list.pt");
    assert_eq!(listed, auto("pipeline_y.safetensors"));
    assert_eq!(listed, auto("pipeline_y.npz"));
    assert!((listed - stacked).abs() > 1e-4, "{listed} vs {stacked}");
}

#[test]
fn several_metrics_share_one_run_and_no_prep_uses_rows_as_given() {
    let env = Env::new();
    let exp = expected();
    let v = env.json(&[
        "compare",
        &refp("related_a.npy"),
        &refp("related_b.npy"),
        "--metric",
        "mutual_knn,cka,svcca",
        "--metric",
        "cka",
        "--kernel",
        "rbf",
        "--no-prep",
        "--format",
        "json",
    ]);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    let want = |m: &str| exp["pairs"]["related"][m]["value"].as_f64().unwrap();
    assert!((arr[0]["value"].as_f64().unwrap() - want("mutual_knn")).abs() < 1e-6);
    assert!((arr[1]["value"].as_f64().unwrap() - want("cka_rbf")).abs() < 1e-4);
    assert_eq!(arr[1]["params"]["kernel"], "rbf");
    assert!((arr[2]["value"].as_f64().unwrap() - want("svcca")).abs() < 1e-3);
    assert!(
        arr[0].get("best_layers").is_none(),
        "single-layer files have no best_layers"
    );
    let csv = env.ok(&[
        "compare",
        &refp("related_a.npy"),
        &refp("related_b.npy"),
        "--metric",
        "rsa,procrustes,jaccard_knn,linear_r2",
        "--format",
        "csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    // Every field of every row: `ties` comes with the kNN metric only.
    assert_eq!(lines[0], "metric,params,reduce,value,ties");
    assert!(lines[1].starts_with("rsa,,max,") && lines[1].ends_with(','));
    assert!(lines[3].starts_with("jaccard_knn,k=10,max,") && lines[3].ends_with(",0"));
    assert_eq!(lines.len(), 5);
}

#[test]
fn bad_inputs_are_clear_errors_never_nan() {
    let env = Env::new();
    // Mismatched n.
    let e = env.fails(&[
        "compare",
        &refp("random_a.npy"),
        &refp("related_b.npy"),
        "--metric",
        "cka",
    ]);
    assert!(e.contains("n = 118") && e.contains("n = 263"), "{e}");
    // n < k + 1.
    let e = env.fails(&[
        "compare",
        &refp("random_a.npy"),
        &refp("random_b.npy"),
        "--metric",
        "mutual_knn",
        "--k",
        "118",
    ]);
    assert!(e.contains("too few for k = 118"), "{e}");
    // cknna with k < 2.
    let e = env.fails(&[
        "compare",
        &refp("random_a.npy"),
        &refp("random_b.npy"),
        "--metric",
        "cknna",
        "--k",
        "1",
    ]);
    assert!(e.contains("k ≥ 2"), "{e}");
    // Zero-variance column for svcca.
    let a = env.path("const.npy");
    let mut d = noise(40 * 12, 1);
    for i in 0..40 {
        d[i * 12 + 3] = 0.5;
    }
    write_npy(&a, &[40, 12], &d);
    let b = env.path("b.npy");
    write_npy(&b, &[40, 12], &noise(40 * 12, 2));
    let e = env.fails(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--metric",
        "svcca",
        "--no-prep",
    ]);
    assert!(e.contains("column 3 has zero variance"), "{e}");
    // All-zero row.
    let z = env.path("zero.npy");
    let mut d = noise(40 * 12, 3);
    for v in &mut d[5 * 12..6 * 12] {
        *v = 0.0;
    }
    write_npy(&z, &[40, 12], &d);
    let e = env.fails(&[
        "compare",
        z.to_str().unwrap(),
        b.to_str().unwrap(),
        "--metric",
        "mutual_knn",
    ]);
    assert!(e.contains("row 5 is all zeros"), "{e}");
    // NaN.
    let nan = env.path("nan.npy");
    let mut d = noise(40 * 12, 4);
    d[13] = f32::NAN;
    write_npy(&nan, &[40, 12], &d);
    let e = env.fails(&[
        "compare",
        nan.to_str().unwrap(),
        b.to_str().unwrap(),
        "--metric",
        "cka",
    ]);
    assert!(e.contains("NaN or Inf") && e.contains("nan.npy"), "{e}");
    // Unknown metric.
    let e = env.fails_with(
        2,
        &[
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--metric",
            "cosine",
        ],
    );
    // A usage error (exit 2) listing the metrics there are.
    assert!(
        e.contains("invalid value 'cosine'") && e.contains("mutual_knn"),
        "{e}"
    );
}
