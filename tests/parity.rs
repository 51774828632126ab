//! Parity with the official platonic-rep metrics.py on `fixtures/reference/` (values produced
//! by the official code; see fixtures/reference/README.md). Tolerances as docs/design.md §4 says.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use prh::formats;
use prh::layers;
use prh::metrics::{Derived, Kernel, Layout, Metric, MetricSpec, Prep};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/reference")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap()
}

fn layers(name: &str) -> Vec<Array2<f32>> {
    let f = formats::open(&fixture(name)).unwrap();
    (0..f.layers.len()).map(|i| f.layer(i).to_f32()).collect()
}

fn pair(case: &str) -> (Derived, Derived) {
    let a = layers(&format!("{case}_a.npy")).remove(0);
    let b = layers(&format!("{case}_b.npy")).remove(0);
    // Inputs are already row-normalised; the official metrics take them as given.
    (Derived::new(a), Derived::new(b))
}

fn tolerance(metric: &str) -> f64 {
    match metric {
        "mutual_knn" | "cycle_knn" | "lcs_knn" | "edit_distance_knn" => 1e-6,
        "svcca" => 1e-3,
        _ => 1e-4,
    }
}

fn spec_for(metric: &str, emulate_pymp: bool) -> MetricSpec {
    let (m, kernel) = match metric {
        "cka_rbf" => (Metric::Cka, Kernel::Rbf { sigma: 1.0 }),
        other => (other.parse().unwrap(), Kernel::Linear),
    };
    let mut s = MetricSpec::new(m);
    s.kernel = kernel;
    s.emulate_pymp = emulate_pymp;
    s
}

#[test]
fn every_pair_value_matches_the_official_code() {
    let exp = expected();
    for case in ["random", "related"] {
        let (a, b) = pair(case);
        let metrics = exp["pairs"][case].as_object().unwrap();
        assert_eq!(metrics.len(), 9, "expected.json lists 9 metric variants");
        for (name, entry) in metrics {
            let want = entry["value"].as_f64().unwrap();
            // The official lcs/edit values were produced with pymp installed (see README).
            let emulate = matches!(name.as_str(), "lcs_knn" | "edit_distance_knn");
            let got = spec_for(name, emulate).compute(&a, &b).unwrap();
            assert!(
                (got - want).abs() <= tolerance(name),
                "{case}/{name}: got {got}, official {want}"
            );
        }
    }
}

#[test]
fn lcs_and_edit_over_all_rows_match_the_straightforward_loop() {
    let all: Value =
        serde_json::from_slice(&std::fs::read(fixture("lcs_edit_all_rows.json")).unwrap()).unwrap();
    for case in ["random", "related"] {
        let (a, b) = pair(case);
        for name in ["lcs_knn", "edit_distance_knn"] {
            let want = all[case][name].as_f64().unwrap();
            let got = spec_for(name, false).compute(&a, &b).unwrap();
            assert!((got - want).abs() <= 1e-9, "{case}/{name}: {got} vs {want}");
        }
    }
}

#[test]
fn full_pipeline_matches_clamp_tables_and_best_layers() {
    let exp = expected();
    let p = &exp["pipeline"];
    let (dx, tx) =
        layers::derive_checkpoint(&layers("pipeline_x.npy"), Prep::OFFICIAL, Layout::Stacked)
            .unwrap();
    let (dy, ty) =
        layers::derive_checkpoint(&layers("pipeline_y.npy"), Prep::OFFICIAL, Layout::Stacked)
            .unwrap();
    assert_eq!(tx[0].unwrap() as f64, p["clamp_x"].as_f64().unwrap());
    assert_eq!(ty[0].unwrap() as f64, p["clamp_y"].as_f64().unwrap());
    for metric in ["mutual_knn", "cycle_knn", "cka", "unbiased_cka", "cknna"] {
        let e = &p[metric];
        let mut spec = MetricSpec::new(metric.parse().unwrap());
        if let Some(k) = e["topk"].as_u64() {
            spec.k = k as usize;
        }
        let t = layers::layer_table(&spec, &dx, &dy).unwrap();
        let tol = tolerance(metric);
        let want_table = e["table"].as_array().unwrap();
        assert_eq!(t.table.len(), want_table.len());
        for (i, row) in want_table.iter().enumerate() {
            for (j, w) in row.as_array().unwrap().iter().enumerate() {
                let w = w.as_f64().unwrap();
                assert!(
                    (t.table[i][j] - w).abs() <= tol,
                    "{metric} [{i},{j}]: got {}, official {w}",
                    t.table[i][j]
                );
            }
        }
        assert!(
            (t.best - e["best"].as_f64().unwrap()).abs() <= tol,
            "{metric} best"
        );
        let bl: Vec<usize> = e["best_layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.best_layers.to_vec(), bl, "{metric} best layers");
    }
}

/// The variable-width fixtures' expected values (official code, list inputs).
fn varwidth_expected() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/varwidth/expected.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn varwidth(name: &str) -> (Vec<Array2<f32>>, prh::metrics::Layout) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/varwidth")
        .join(name);
    let f = formats::open(&p).unwrap();
    let layers = (0..f.layers.len()).map(|i| f.layer(i).to_f32()).collect();
    (layers, f.layout)
}

/// The best score and its [x, y] layers as the official `compute_alignment(x, y)` finds them:
/// it calls `compute_score(y, x)`, so the metric sees (y layer, x layer), which matters for the
/// asymmetric cycle_knn only.
fn as_compute_alignment(
    spec: &MetricSpec,
    dx: &[std::sync::Arc<Derived>],
    dy: &[std::sync::Arc<Derived>],
) -> (f64, Vec<usize>) {
    let mut t = layers::layer_table(spec, dy, dx).unwrap();
    t.best_layers.reverse();
    (t.best, t.best_layers.to_vec())
}

/// An official entry's value and best layers ([x, y]).
fn official(e: &Value) -> (f64, Vec<usize>) {
    let layers = e["best_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    (e["value"].as_f64().unwrap(), layers)
}

#[test]
fn per_layer_arrays_are_clamped_each_at_its_own_threshold_as_the_official_code() {
    use prh::metrics::{ClampScope, Layout};
    let exp = varwidth_expected();
    for (fx, fy) in [
        ("x_layers.npz", "y_layers.npz"),
        ("x_list.pt", "y_list.pt"),
        ("x_layers.npz", "y_list.pt"),
    ] {
        let (lx, layout_x) = varwidth(fx);
        let (ly, layout_y) = varwidth(fy);
        assert_eq!((layout_x, layout_y), (Layout::Layers, Layout::Layers));
        let widths: Vec<usize> = lx.iter().map(|l| l.ncols()).collect();
        assert_eq!(widths, [16, 48, 96]);
        let (dx, tx) = layers::derive_checkpoint(&lx, Prep::OFFICIAL, layout_x).unwrap();
        let (dy, _) = layers::derive_checkpoint(&ly, Prep::OFFICIAL, layout_y).unwrap();
        assert!(tx[0] != tx[2], "each layer has its own threshold: {tx:?}");
        for metric in ["mutual_knn", "cycle_knn", "cka", "unbiased_cka", "cknna"] {
            let e = &exp["metrics"][metric];
            let mut spec = MetricSpec::new(metric.parse().unwrap());
            if let Some(k) = e["topk"].as_u64() {
                spec.k = k as usize;
            }
            let (got, got_layers) = as_compute_alignment(&spec, &dx, &dy);
            let (want, best) = official(e);
            assert!(
                (got - want).abs() <= tolerance(metric),
                "{fx} × {fy} {metric}: got {got}, official {want}"
            );
            assert_eq!(got_layers, best, "{metric}");
        }
    }
    // Forcing one threshold over the checkpoint gives the (different) stacked-tensor numbers.
    let checkpoint = Prep {
        scope: ClampScope::Checkpoint,
        ..Prep::OFFICIAL
    };
    let (lx, _) = varwidth("x_layers.npz");
    let (ly, _) = varwidth("y_layers.npz");
    let (dx, tx) = layers::derive_checkpoint(&lx, checkpoint, Layout::Layers).unwrap();
    let (dy, _) = layers::derive_checkpoint(&ly, checkpoint, Layout::Layers).unwrap();
    assert!(tx.iter().all(|t| *t == tx[0]));
    for (metric, official, stacked) in [("mutual_knn", 0.5475, 0.554), ("cka", 0.8526, 0.8546)] {
        let spec = MetricSpec::new(metric.parse().unwrap());
        let got = layers::layer_table(&spec, &dx, &dy).unwrap().best;
        assert!(
            (got - stacked).abs() < 5e-4,
            "{metric} over the checkpoint: {got}"
        );
        assert!(
            (got - official).abs() > 1e-3,
            "{metric}: scopes must differ here"
        );
    }
}

/// The features of a `fixtures/` file as prh reads them: its layers and their layout.
fn fixture_layers(rel: &str) -> (Vec<Array2<f32>>, Layout) {
    let f = formats::open(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(rel),
    )
    .unwrap();
    let layers = (0..f.layers.len()).map(|i| f.layer(i).to_f32()).collect();
    (layers, f.layout)
}

#[test]
fn both_clamp_conventions_of_platonic_rep_give_its_numbers() {
    // platonic-rep's remove_outliers(exact=True) (compute_alignment, platonic.Alignment) and
    // exact=False (measure_alignment.py's command line without --precise), by the official
    // code on the stacked pipeline pair, the variable-width pair and the real zoo's 12 pairs
    // (fixtures/conventions). The two differ by far more than the tolerance, so each rule is
    // shown to be the one that gives its numbers.
    use prh::metrics::ClampRule;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/conventions/expected.json");
    let exp: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut checked = 0;
    let mut apart = 0.0f64;
    for (case, v) in exp["cases"].as_object().unwrap() {
        let (lx, layout_x) = fixture_layers(v["x"].as_str().unwrap());
        let (ly, layout_y) = fixture_layers(v["y"].as_str().unwrap());
        for (rule, name) in [
            (ClampRule::Exact, "exact"),
            (ClampRule::SampleMean, "sample-mean"),
        ] {
            let prep = Prep {
                rule,
                ..Prep::OFFICIAL
            };
            let (dx, tx) = layers::derive_checkpoint(&lx, prep, layout_x).unwrap();
            let (dy, ty) = layers::derive_checkpoint(&ly, prep, layout_y).unwrap();
            if let Some(t) = v["thresholds"].get(name) {
                // One threshold per tensor (stacked) or per list entry (per-layer arrays).
                for (ours, theirs) in [(&tx, &t[0]), (&ty, &t[1])] {
                    let theirs: Vec<f64> = match theirs.as_array() {
                        Some(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
                        None => vec![theirs.as_f64().unwrap(); ours.len()],
                    };
                    for (o, t) in ours.iter().zip(&theirs) {
                        let o = o.unwrap() as f64;
                        assert!(
                            (o - t).abs() <= 1e-6 * t,
                            "{case} {name}: threshold {o} vs {t}"
                        );
                    }
                }
            }
            for (metric, e) in v["scores"][name].as_object().unwrap() {
                let mut spec = MetricSpec::new(metric.parse().unwrap());
                spec.k = exp["topk"].as_u64().unwrap() as usize;
                let (got, got_layers) = as_compute_alignment(&spec, &dx, &dy);
                let (want, best) = official(e);
                assert!(
                    (got - want).abs() <= 1e-4,
                    "{case} {name} {metric}: prh {got}, official {want}"
                );
                assert_eq!(got_layers, best, "{case} {name} {metric}");
                let other = if name == "exact" {
                    "sample-mean"
                } else {
                    "exact"
                };
                let theirs = v["scores"][other][metric]["value"].as_f64().unwrap();
                apart = apart.max((want - theirs).abs());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * (5 + 5 + 12));
    assert!(apart > 1e-2, "the conventions differ by at most {apart}");
}
