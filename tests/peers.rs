//! The parity matrix's "reproduces" cells (docs/reference.md, "Parity with other
//! implementations"): prh's number with the options the matrix names against what each
//! peer's own code returned for the same inputs (fixtures/peers, made by its make.py), and the
//! documented identity where prh and a peer define a metric differently.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/peers")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

/// `prh compare` of input pair `pair` for `metric` with `flags`.
fn prh(pair: &str, metric: &str, flags: &[&str]) -> f64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("compare")
        .arg(dir().join(format!("{pair}_x.npy")))
        .arg(dir().join(format!("{pair}_y.npy")))
        .args(["--metric", metric, "--format", "json"])
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{metric} {flags:?} on {pair}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["value"].as_f64().unwrap()
}

const NO_PREP: &[&str] = &["--no-prep"];
/// Rows scaled to unit norm, nothing clamped.
const UNIT_ROWS: &[&str] = &["--clamp-q", "1"];
const ALL_PAIRS: &[&str] = &["raw", "unit_rows", "standardised", "wide"];

/// (peer, the peer's metric, the input pairs, prh's metric, prh's flags, tolerance).
type Cell = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [&'static str],
    f64,
);

const REPRODUCED: &[Cell] = &[
    (
        "aristotelian",
        "mutual_knn",
        ALL_PAIRS,
        "mutual_knn",
        NO_PREP,
        1e-6,
    ),
    (
        "aristotelian",
        "cycle_knn",
        ALL_PAIRS,
        "cycle_knn",
        NO_PREP,
        1e-6,
    ),
    (
        "aristotelian",
        "cka_linear",
        ALL_PAIRS,
        "cka",
        NO_PREP,
        1e-6,
    ),
    (
        "aristotelian",
        "rv_coefficient",
        ALL_PAIRS,
        "cka",
        NO_PREP,
        1e-6,
    ),
    (
        "aristotelian",
        "cka_unbiased",
        ALL_PAIRS,
        "unbiased_cka",
        NO_PREP,
        1e-4,
    ),
    (
        "aristotelian",
        "cka_rbf",
        ALL_PAIRS,
        "cka",
        &["--no-prep", "--kernel", "rbf", "--sigma", "median"],
        1e-6,
    ),
    (
        "aristotelian",
        "cknna(unbiased=True)",
        ALL_PAIRS,
        "cknna",
        NO_PREP,
        1e-6,
    ),
    // Euclidean distances rank as cosine distances on rows of unit norm.
    ("aristotelian", "rsa", &["unit_rows"], "rsa", NO_PREP, 1e-6),
    // prh (as platonic-rep) standardises columns first; on standardised columns both agree.
    (
        "aristotelian",
        "svcca",
        &["standardised"],
        "svcca",
        NO_PREP,
        1e-5,
    ),
    ("aristotelian", "cca", ALL_PAIRS, "cca", NO_PREP, 1e-4),
    ("aristotelian", "pwcca", ALL_PAIRS, "pwcca", NO_PREP, 1e-5),
    ("platonic_universe", "cka", ALL_PAIRS, "cka", NO_PREP, 1e-6),
    (
        "platonic_universe",
        "mknn",
        ALL_PAIRS,
        "mutual_knn",
        UNIT_ROWS,
        1e-9,
    ),
    (
        "platonic_universe",
        "jaccard",
        ALL_PAIRS,
        "jaccard_knn",
        UNIT_ROWS,
        1e-9,
    ),
    ("platonic_universe", "rsa", ALL_PAIRS, "rsa", NO_PREP, 1e-6),
    // Euclidean distances rank as cosine distances on rows of unit norm.
    (
        "rsatoolbox",
        "euclidean+spearman",
        &["unit_rows"],
        "rsa",
        NO_PREP,
        1e-6,
    ),
];

#[test]
fn every_cell_the_parity_matrix_says_prh_reproduces_is_reproduced() {
    let e = expected();
    let mut worst: Vec<String> = Vec::new();
    for &(peer, theirs, pairs, metric, flags, tol) in REPRODUCED {
        let mut max = 0f64;
        for &pair in pairs {
            let want = e["pairs"][pair][peer][theirs]
                .as_f64()
                .unwrap_or_else(|| panic!("no {peer} {theirs} for {pair} in expected.json"));
            let got = prh(pair, metric, flags);
            let d = (got - want).abs();
            assert!(
                d <= tol,
                "{peer}'s {theirs} on {pair}: {want}, prh {metric} {flags:?}: {got} (off by {d:.2e}, allowed {tol:.0e})"
            );
            max = max.max(d);
        }
        worst.push(format!(
            "{peer} {theirs} = prh {metric} {flags:?}: max |Δ| {max:.1e}"
        ));
    }
    // The measured differences the parity matrix quotes (`-- --nocapture`).
    println!("{}", worst.join("\n"));
}

/// The centred features and their Frobenius norm.
fn centred_norm(path: &Path) -> f64 {
    let layers = prh::formats::open(path).unwrap().finite_layers().unwrap();
    let x = &layers[0];
    let n = x.nrows() as f64;
    x.columns()
        .into_iter()
        .map(|c| {
            let m = c.iter().map(|&v| v as f64).sum::<f64>() / n;
            c.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

#[test]
fn aristotelians_procrustes_is_prhs_through_the_documented_identity() {
    // Aristotelian's procrustes is 1 − ‖Xc − Yc·Q‖_F / ‖Yc‖_F on unscaled centred features;
    // prh's is ‖X̃ᵀỸ‖_* on centred features scaled to unit norm. With a = ‖Xc‖, b = ‖Yc‖
    // and p prh's value, theirs = 1 − √(a² + b² − 2·a·b·p) / b. Different numbers, one
    // alignment: the identity holds on every pair, so prh's number converts exactly.
    let e = expected();
    for &pair in ALL_PAIRS {
        let p = prh(pair, "procrustes", NO_PREP);
        let a = centred_norm(&dir().join(format!("{pair}_x.npy")));
        let b = centred_norm(&dir().join(format!("{pair}_y.npy")));
        let converted = 1.0 - (a * a + b * b - 2.0 * a * b * p).max(0.0).sqrt() / b;
        let theirs = e["pairs"][pair]["aristotelian"]["procrustes"]
            .as_f64()
            .unwrap();
        assert!(
            (converted - theirs).abs() < 1e-5,
            "{pair}: Aristotelian {theirs}, prh {p} converted {converted}"
        );
        assert!((p - theirs).abs() > 0.1, "the two definitions differ");
    }
}

#[test]
fn netreps_angular_procrustes_distance_is_the_arccos_of_prhs_procrustes() {
    let e = expected();
    for &pair in ALL_PAIRS {
        let p = prh(pair, "procrustes", NO_PREP);
        let theirs = e["pairs"][pair]["netrep"]["LinearMetric(alpha=1,angular)"]
            .as_f64()
            .unwrap();
        assert!(
            (p.min(1.0).acos() - theirs).abs() < 1e-6,
            "{pair}: netrep {theirs}, arccos of prh's {p} = {}",
            p.min(1.0).acos()
        );
    }
}

#[test]
fn rsatoolboxs_correlation_rdm_is_prhs_rsa_on_rows_centred() {
    // The correlation distance of two rows is the cosine distance of the rows centred on
    // their own means, so rsatoolbox's `correlation` RDM compared by Spearman is prh's rsa of
    // the row-centred features.
    let e = expected();
    let tmp = tempfile::tempdir().unwrap();
    for &pair in ALL_PAIRS {
        let mut paths = Vec::new();
        for side in ["x", "y"] {
            let src = dir().join(format!("{pair}_{side}.npy"));
            let x = &prh::formats::open(&src).unwrap().finite_layers().unwrap()[0];
            let centred: Vec<f32> = x
                .rows()
                .into_iter()
                .flat_map(|r| {
                    let m = r.iter().map(|&v| v as f64).sum::<f64>() / r.len() as f64;
                    r.iter()
                        .map(move |&v| (v as f64 - m) as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            let p = tmp.path().join(format!("{pair}_{side}.npy"));
            crate::common::write_npy(&p, &[x.nrows(), x.ncols()], &centred);
            paths.push(p);
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prh"))
            .arg("compare")
            .args(&paths)
            .args(["--metric", "rsa", "--no-prep", "--format", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = serde_json::from_slice::<Value>(&out.stdout).unwrap()["value"]
            .as_f64()
            .unwrap();
        let theirs = e["pairs"][pair]["rsatoolbox"]["correlation+spearman"]
            .as_f64()
            .unwrap();
        assert!(
            (got - theirs).abs() < 1e-6,
            "{pair}: rsatoolbox {theirs}, prh rsa of row-centred features {got}"
        );
    }
}
