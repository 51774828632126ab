//! prh's numbers against values computed independently of prh: `fixtures/independent/`
//! (numpy, scipy and scikit-learn, from each metric's published definition, by `make.py`
//! there) for every metric and option `prh compare` exposes, on single layers and through the
//! official multi-layer pipeline; the official code's own values for the same options where it
//! defines the metric; and its pymp-affected lcs/edit values through the command line's
//! `--emulate-pymp`.

use crate::common;

use std::path::PathBuf;

use common::fixture;
use serde_json::Value;

fn load(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(path)).unwrap()).unwrap()
}

fn input(name: &str) -> PathBuf {
    fixture(&format!("reference/{name}"))
}

/// How far prh may be from the reference. kNN metrics are ratios of counts: exact unless the
/// neighbour order differs. The rest differ by float32 Gram rounding (measured at most 1.8e-7,
/// linear_r2) and, for svcca, scikit-learn's iterative CCA (measured 1e-8).
fn tolerance(metric: &str) -> f64 {
    match metric {
        "mutual_knn" | "cycle_knn" | "lcs_knn" | "edit_distance_knn" | "jaccard_knn" => 1e-9,
        "svcca" => 1e-5,
        _ => 1e-6,
    }
}

/// `prh compare A B --metric M` with the case's options, as JSON.
fn compare(case: &Value, extra: &[&str]) -> Value {
    let mut args: Vec<String> = vec![
        "compare".into(),
        input(case["a"].as_str().unwrap()).display().to_string(),
        input(case["b"].as_str().unwrap()).display().to_string(),
        "--metric".into(),
        case["metric"].as_str().unwrap().into(),
        "--format".into(),
        "json".into(),
    ];
    for (k, v) in case["options"].as_object().unwrap() {
        args.push(format!("--{}", k.replace('_', "-")));
        args.push(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_prh"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "prh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn label(case: &Value) -> String {
    format!("{} {} {}", case["a"], case["metric"], case["options"])
}

#[test]
fn every_metric_and_option_matches_an_independent_implementation() {
    let exp = load("independent/expected.json");
    let cases = exp["pairs"].as_array().unwrap();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    let mut checked_official = 0;
    for case in cases {
        // The pair inputs are already row-normalised: the metrics take them as given.
        let got = compare(case, &["--no-prep"])["value"].as_f64().unwrap();
        let want = case["value"].as_f64().unwrap();
        let metric = case["metric"].as_str().unwrap();
        if (got - want).abs() > tolerance(metric) {
            wrong.push(format!("{}: prh {got}, reference {want}", label(case)));
        }
        // The official code's own value, where it defines the metric (float64 arithmetic;
        // its kNN ratios are float32, so within 1e-6).
        if let Some(official) = case["official"].as_f64() {
            checked_official += 1;
            if (got - official).abs() > 1e-6 {
                wrong.push(format!("{}: prh {got}, official {official}", label(case)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(checked_official, 32, "official values in the fixture");
}

#[test]
fn multi_layer_tables_and_best_layers_match_an_independent_implementation() {
    let exp = load("independent/expected.json");
    let mut wrong = Vec::new();
    for case in exp["pipeline"].as_array().unwrap() {
        let metric = case["metric"].as_str().unwrap();
        let tol = tolerance(metric);
        // Default preparation: the official clamp over the whole tensor, rows normalised.
        let got = compare(case, &["--table"]);
        let (value, want) = (
            got["value"].as_f64().unwrap(),
            case["best"].as_f64().unwrap(),
        );
        if (value - want).abs() > tol {
            wrong.push(format!("{}: best {value} vs {want}", label(case)));
        }
        if got["best_layers"] != case["best_layers"] {
            wrong.push(format!(
                "{}: best layers {} vs {}",
                label(case),
                got["best_layers"],
                case["best_layers"]
            ));
        }
        let (gt, wt) = (&got["table"], &case["table"]);
        for (i, row) in wt.as_array().unwrap().iter().enumerate() {
            for (j, w) in row.as_array().unwrap().iter().enumerate() {
                let (g, w) = (gt[i][j].as_f64().unwrap(), w.as_f64().unwrap());
                if (g - w).abs() > tol {
                    wrong.push(format!("{} [{i},{j}]: {g} vs {w}", label(case)));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn emulate_pymp_on_the_command_line_gives_the_official_lcs_and_edit_values() {
    let official = load("reference/expected.json");
    let all_rows = load("reference/lcs_edit_all_rows.json");
    for case in ["random", "related"] {
        for metric in ["lcs_knn", "edit_distance_knn"] {
            let c = serde_json::json!({
                "a": format!("{case}_a.npy"),
                "b": format!("{case}_b.npy"),
                "metric": metric,
                "options": {},
            });
            let pymp = compare(&c, &["--no-prep", "--emulate-pymp"])["value"]
                .as_f64()
                .unwrap();
            let want = official["pairs"][case][metric]["value"].as_f64().unwrap();
            assert!(
                (pymp - want).abs() <= 1e-6,
                "{case}/{metric}: {pymp} vs official {want}"
            );
            let all = compare(&c, &["--no-prep"])["value"].as_f64().unwrap();
            let want = all_rows[case][metric].as_f64().unwrap();
            assert!(
                (all - want).abs() <= 1e-9,
                "{case}/{metric}: {all} vs {want}"
            );
            assert!((all - pymp).abs() > 1e-3, "the flag changes nothing");
        }
    }
}
