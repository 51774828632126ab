//! The large-n path (no n × n matrix: tiled neighbour search, kernels in feature space) gives
//! the same numbers as the dense path wherever both run (docs/design.md §13).

use std::sync::Arc;

use crate::common;

use half::f16;
use ndarray::Array2;
use prh::matrix::DType;
use prh::metrics::half::HalfRows;
use prh::metrics::{Derived, Kernel, Metric, MetricSpec, TieBreak, prep};
use prh::rng::Rng;

/// A budget under which no n × n matrix is allowed for these sizes.
const SMALL: usize = 1 << 20;

fn gaussian(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut r = Rng::new(seed);
    Array2::from_shape_fn((n, d), |_| r.normal() as f32)
}

/// Width-8 features of small integers: after normalisation many rows coincide in direction,
/// so neighbours tie at the k boundary often.
fn tied(n: usize, seed: u64) -> Array2<f32> {
    let mut r = Rng::new(seed);
    let mut x = Array2::from_shape_fn((n, 8), |_| [0.0, 0.0, 1.0, 2.0][r.below(4)]);
    for mut row in x.rows_mut() {
        row[r.below(8)] += 1.0;
    }
    x
}

/// f16-stored features, widened as ingest widens them.
fn half_rounded(x: &Array2<f32>) -> Array2<f32> {
    x.mapv(|v| f16::from_f32(v).to_f32())
}

fn both(raw: &Array2<f32>) -> (Arc<Derived>, Arc<Derived>) {
    let x = prep::prepare(raw.view(), prep::clamp_threshold(&[raw.view()], 0.95), true).unwrap();
    let dense = Derived::new(x.clone());
    let large = Derived::within(x, SMALL);
    assert!(dense.dense() && !large.dense());
    (Arc::new(dense), Arc::new(large))
}

/// The large-n path from `raw` held as its f16 values (when every value is one), prepared as
/// [`both`] prepares it.
fn held_as_f16(raw: &Array2<f32>) -> Option<Arc<Derived>> {
    if raw.iter().any(|&v| f16::from_f32(v).to_f32() != v) {
        return None;
    }
    let bytes: Vec<u8> = raw
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let (n, d) = raw.dim();
    let t = prep::clamp_threshold(&[raw.view()], 0.95);
    let rows = HalfRows::from_bytes(DType::F16, n, d, bytes, t, true).unwrap();
    let large = Derived::within_half(rows, SMALL);
    assert!(!large.dense() && !large.holds_f32());
    Some(Arc::new(large))
}

fn specs() -> Vec<MetricSpec> {
    let mut out = Vec::new();
    for m in [
        Metric::MutualKnn,
        Metric::CycleKnn,
        Metric::LcsKnn,
        Metric::EditDistanceKnn,
        Metric::JaccardKnn,
        Metric::Cknna,
        Metric::Cka,
        Metric::UnbiasedCka,
        Metric::Svcca,
        Metric::Procrustes,
        Metric::LinearR2,
        Metric::Cca,
        Metric::Pwcca,
    ] {
        for k in [1, 10, 31] {
            let mut s = MetricSpec::new(m);
            s.k = k;
            s.cca_dim = 6; // the width-8 inputs have 8 columns
            if m == Metric::Cknna && k < 2 {
                continue;
            }
            out.push(s);
            if matches!(m, Metric::MutualKnn | Metric::CycleKnn) {
                s.ties = TieBreak::Expected;
                out.push(s);
            }
            if !m.uses_k() {
                break;
            }
        }
    }
    out
}

/// Every metric, and every tie count, on the two paths: the same bits. Inputs that are f16
/// values are also held as such on the large-n path, with the same bits again.
fn same_on_both_paths(x: &Array2<f32>, y: &Array2<f32>, what: &str) -> usize {
    let ((xd, xl), (yd, yl)) = (both(x), both(y));
    let held = held_as_f16(x).zip(held_as_f16(y));
    // The neighbour metrics read only the graph, and linear cka, unbiased_cka, cca and pwcca
    // read the rows a block at a time: for none of them are 16-bit rows widened whole.
    if let Some((xh, yh)) = &held {
        for m in [
            Metric::MutualKnn,
            Metric::Cknna,
            Metric::JaccardKnn,
            Metric::Cka,
            Metric::UnbiasedCka,
            Metric::Cca,
            Metric::Pwcca,
        ] {
            let s = MetricSpec::new(m);
            assert_eq!(
                s.compute(xh, yh).unwrap().to_bits(),
                s.compute(&xd, &yd).unwrap().to_bits(),
                "{what}: {m} from f16 rows"
            );
        }
        assert!(
            !xh.holds_f32() && !yh.holds_f32(),
            "{what}: f16 rows widened whole"
        );
    }
    let mut tied_rows = 0;
    for s in specs() {
        let dense = s.compute(&xd, &yd).unwrap();
        let large = s.compute(&xl, &yl).unwrap();
        assert_eq!(
            dense.to_bits(),
            large.to_bits(),
            "{what}: {} ({}): dense {dense} vs large-n {large}",
            s.metric,
            s.params_key()
        );
        let (td, tl) = (s.tied_rows(&xd, &yd), s.tied_rows(&xl, &yl));
        assert_eq!(td, tl, "{what}: {} tie count", s.metric);
        if let Some((xh, yh)) = &held {
            let half = s.compute(xh, yh).unwrap();
            assert_eq!(
                dense.to_bits(),
                half.to_bits(),
                "{what}: {} from f16 rows",
                s.metric
            );
            assert_eq!(
                td,
                s.tied_rows(xh, yh),
                "{what}: {} tie count from f16 rows",
                s.metric
            );
        }
        tied_rows += td.unwrap_or(0);
    }
    // A permuted y (the null) and a resample with repeats (the bootstrap) on both paths.
    let n = x.nrows();
    let mut r = Rng::new(n as u64);
    let perm: Vec<u32> = r.permutation(n).into_iter().map(|i| i as u32).collect();
    let boot: Vec<u32> = (0..n).map(|_| r.below(n) as u32).collect();
    for idx in [perm, boot] {
        let idx = Arc::new(idx);
        let (pd, pl) = (
            Derived::reindexed(&yd, idx.clone()),
            Derived::reindexed(&yl, idx.clone()),
        );
        let (xd2, xl2) = (
            Derived::reindexed(&xd, idx.clone()),
            Derived::reindexed(&xl, idx),
        );
        for m in [Metric::MutualKnn, Metric::Cknna, Metric::UnbiasedCka] {
            let s = MetricSpec::new(m);
            let dense = s.compute(&xd2, &pd).unwrap();
            let large = s.compute(&xl2, &pl).unwrap();
            assert_eq!(dense.to_bits(), large.to_bits(), "{what}: reindexed {m}");
        }
    }
    tied_rows
}

#[test]
fn the_large_n_path_equals_the_dense_path_on_every_metric() {
    // 9,000: more than one block of columns in the tiled search.
    for (i, &n) in [257usize, 1024, 4096, 9000].iter().enumerate() {
        let s = 10 * i as u64;
        let (x, y) = (gaussian(n, 48, s), gaussian(n, 24, s + 1));
        // y partly follows x, so scores are far from chance and rankings matter.
        let y = &y + &x.slice(ndarray::s![.., ..24]).mapv(|v| 0.8 * v);
        same_on_both_paths(&x, &y, &format!("gaussian n={n}"));
        same_on_both_paths(&half_rounded(&x), &half_rounded(&y), &format!("f16 n={n}"));
        let ties = same_on_both_paths(&tied(n, s + 2), &tied(n, s + 3), &format!("ties n={n}"));
        assert!(
            ties > n / 4,
            "the width-8 inputs must tie ({ties} tied rows)"
        );
    }
}

#[test]
fn metrics_without_a_bounded_memory_form_are_refused_in_one_line() {
    let (_, x) = both(&gaussian(600, 16, 1));
    let (_, y) = both(&gaussian(600, 16, 2));
    let mut rbf = MetricSpec::new(Metric::Cka);
    rbf.kernel = Kernel::Rbf { sigma: 1.0 };
    for s in [rbf, MetricSpec::new(Metric::Rsa)] {
        let e = s.compute(&x, &y).unwrap_err();
        let line = e.to_string();
        assert_eq!(e.kind(), prh::error::ErrorKind::Unsupported, "{line}");
        assert!(!line.contains('\n'), "{line}");
        for part in [
            s.metric.name(),
            "n = 600",
            "(3 MiB for two)",
            "budget of 1 MiB",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line:?}");
        }
        assert!(e.hint_text().unwrap().contains("--mem-mib"));
        // The block form refuses the same way.
        let e = s
            .compute_block(std::slice::from_ref(&x), std::slice::from_ref(&y))
            .map(|r| r.unwrap_err().to_string());
        if let Some(block) = e {
            assert_eq!(block, line);
        }
    }
}

/// A registry with two models (2 layers, n × 2 × 16, the second partly following the first).
fn registry(n: usize) -> common::Env {
    registry_of(n, 2, 16)
}

/// [`registry`] with models of n × layers × d.
fn registry_of(n: usize, layers: usize, d: usize) -> common::Env {
    registry_stored(n, layers, d, prh::formats::npy::encode_f32)
}

/// [`registry_of`] with the features written by `encode` (e.g. as f16).
fn registry_stored(
    n: usize,
    layers: usize,
    d: usize,
    encode: fn(&[usize], &[f32]) -> Vec<u8>,
) -> common::Env {
    let env = common::Env::new();
    let len = n * layers * d;
    let x = common::noise(len, 1);
    let y: Vec<f32> = common::noise(len, 2)
        .iter()
        .zip(&x)
        .map(|(v, u)| v + u)
        .collect();
    env.ok(&["init"]);
    let (px, py) = (env.path("x.npy"), env.path("y.npy"));
    std::fs::write(&px, encode(&[n, layers, d], &x)).unwrap();
    std::fs::write(&py, encode(&[n, layers, d], &y)).unwrap();
    common::ingest_all(&env, "d", &[(px, "x", "language"), (py, "y", "vision")]);
    env
}

const METRICS: &str = "mutual_knn,cycle_knn,cknna,cka,unbiased_cka,procrustes";

/// `prh align --x x --y y --metric METRIC EXTRA… --format json --quiet` on `env`.
fn align(env: &common::Env, metric: &str, extra: &[&str]) -> serde_json::Value {
    env.json(&align_args(
        metric,
        &[extra, &["--format", "json", "--quiet"]].concat(),
    ))
}

/// `align --x x --y y --metric METRIC EXTRA…`.
fn align_args<'a>(metric: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let head = ["align", "--x", "x", "--y", "y", "--metric", metric];
    [&head[..], extra].concat()
}

#[test]
fn align_gives_the_same_scores_whatever_the_memory_budget() {
    let n = 2048; // a Gram matrix of 16 MiB: over what --mem-mib 16 allows
    let (a, b) = (registry(n), registry(n));
    let dense = align(&a, METRICS, &[]);
    let large = align(&b, METRICS, &["--mem-mib", "16"]);
    assert_eq!(dense.as_array().unwrap().len(), 6);
    for (d, l) in dense
        .as_array()
        .unwrap()
        .iter()
        .zip(large.as_array().unwrap())
    {
        assert_eq!(d["metric"], l["metric"]);
        assert_eq!(d["score"], l["score"], "{}", d["metric"]);
        assert_eq!(d["best_layers"], l["best_layers"], "{}", d["metric"]);
    }
    // rsa needs two n × n matrices: refused in one line under the small budget, not crashed.
    let err = b.fails_with(5, &align_args("rsa", &["--mem-mib", "16"]));
    assert!(
        err.contains("rsa at n = 2048") && err.contains("16 MiB"),
        "{err}"
    );
}

/// Peak address space allowed to `prh align` below: far less than one n × n Gram matrix.
const CAP_BYTES: u64 = 3 << 30;

/// `prh align --x x --y y <extra>` under the address-space cap.
fn capped(env: &common::Env, extra: &[&str]) -> std::process::Output {
    std::process::Command::new("prlimit")
        .arg(format!("--as={CAP_BYTES}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(env.reg())
        .args(["align", "--x", "x", "--y", "y", "--quiet"])
        .args(extra)
        .output()
        .expect("prlimit (util-linux) runs")
}

#[test]
fn a_run_whose_gram_matrix_exceeds_the_address_space_cap_completes() {
    let n = 40_000; // one f32 Gram matrix: 6.4 GB, twice the cap
    let env = registry(n);
    let out = capped(
        &env,
        &[
            "--metric",
            "mutual_knn,cknna,unbiased_cka",
            "--format",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chance = 10.0 / (n - 1) as f64;
    let mk = v[0]["score"].as_f64().unwrap();
    assert!(
        mk > 20.0 * chance,
        "the related models align far above chance: {v}"
    );
    // rbf cka at this n: one line (and its hint), exit 5 (unsupported), no abort.
    let out = capped(&env, &["--metric", "cka", "--kernel", "rbf"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert_eq!(
        err.lines().filter(|l| !l.starts_with("hint:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("cka at n = 40000"), "{err}");
}

fn knn_graphs(env: &common::Env) -> usize {
    common::open(env).catalog.knn_graph_keys().unwrap().len()
}

#[test]
fn knn_graphs_are_stored_once_reused_by_other_metrics_verified_and_left_out_of_bundles() {
    let n = 2048;
    let (fresh, env) = (registry(n), registry(n));
    let small = ["--mem-mib", "16"];
    // The first kNN metric computes the 4 graphs (2 layers × 2 models) and stores them.
    let first = align(&env, "mutual_knn", &small);
    assert_eq!(first[0]["graphs_computed"], 4, "{first}");
    assert_eq!(knn_graphs(&env), 4);
    // A second metric computes none and gives what a registry without stored graphs gives.
    let second = align(&env, "cknna", &small);
    assert_eq!(second[0]["graphs_computed"], 0, "{second}");
    assert_eq!(
        second[0]["score"],
        align(&fresh, "cknna", &small)[0]["score"]
    );
    // A null run reads them too (its scores equal the fresh registry's).
    let null = ["--null", "20", "--mem-mib", "16"];
    assert_eq!(
        align(&env, "cycle_knn", &null)[0]["null_mean"],
        align(&fresh, "cycle_knn", &null)[0]["null_mean"]
    );
    // A smaller k reads the stored graphs for k = 10 (the first k of each list, ties read off
    // exactly): none searched, the scores of a registry that searched for k = 4.
    let k4 = ["--mem-mib", "16", "--k", "4"];
    let smaller = align(&env, "mutual_knn", &k4);
    assert_eq!(smaller[0]["graphs_computed"], 0, "{smaller}");
    let searched = align(&registry(n), "mutual_knn", &k4);
    assert_eq!(searched[0]["graphs_computed"], 4, "{searched}");
    assert_eq!(
        (&smaller[0]["score"], &smaller[0]["ties"]),
        (&searched[0]["score"], &searched[0]["ties"])
    );
    assert_eq!(knn_graphs(&env), 4, "nothing stored for k = 4");
    // Dense runs store none and say nothing of graphs.
    let dense = align(&env, "jaccard_knn", &[]);
    assert!(dense[0].get("graphs_computed").is_none(), "{dense}");

    // verify reads every graph back; a damaged one is reported, then recomputed and replaced.
    let v = env.json(&["verify", "--format", "json"]);
    assert_eq!(v["graphs_checked"], 4, "{v}");
    let reg = common::open(&env);
    let (h, prep, k) = reg.catalog.knn_graph_keys().unwrap().remove(0);
    let mut bytes = reg.catalog.knn_graph(&h, &prep, k).unwrap().unwrap();
    bytes[100] ^= 0x10;
    reg.catalog.put_knn_graph(&h, &prep, k, &bytes).unwrap();
    drop(reg);
    let out = env.prh(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{text}");
    assert!(
        text.contains("kNN graph of blob") && text.contains("damaged"),
        "{text}"
    );
    let again = align(&env, "lcs_knn", &small);
    assert_eq!(again[0]["graphs_computed"], 1, "{again}");
    let o = env.prh(&["verify"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // A bundle carries no graphs; the importer computes its own.
    let bundle = env.path("b.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = common::Env::new();
    other.ok(&["init"]);
    other.ok(&["import", bundle.to_str().unwrap()]);
    assert_eq!(knn_graphs(&other), 0);
    // The same registry before any sweep exports to within 200 KB of it; its 4 graphs are
    // 4 × 2048 × 10 × 12 bytes = 983,040 bytes.
    let plain = registry(n);
    let base = plain.path("b.prh");
    plain.ok(&["export", base.to_str().unwrap()]);
    let (with, without) = (
        std::fs::metadata(&bundle).unwrap().len(),
        std::fs::metadata(&base).unwrap().len(),
    );
    assert!(
        with < without + 200_000,
        "bundle {with} bytes vs {without} without graphs"
    );
}

/// Progress messages of a sweep, recorded.
#[derive(Default)]
struct Messages(std::sync::Mutex<Vec<String>>);

impl prh::sweep::Progress for Messages {
    fn message(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
}

#[test]
fn the_graph_search_reports_its_progress_and_eta() {
    let env = registry(2048);
    let mut reg = common::open(&env);
    let req = prh::sweep::SweepRequest {
        x: prh::sweep::Selector::Names(vec!["x".into()]),
        y: prh::sweep::Selector::Names(vec!["y".into()]),
        dataset: None,
        pool: None,
        all_checkpoints: false,
        x_checkpoint: None,
        specs: vec![MetricSpec::new(Metric::MutualKnn)],
        prep: prh::metrics::Prep::OFFICIAL,
        mem_budget: 16 << 20,
        null: 0,
        bootstrap: 0,
        seed: 0,
        alpha: prh::stats::DEFAULT_ALPHA,
        reduce: prh::layers::Reduce::Max,
    };
    let seen = Messages::default();
    prh::sweep::sweep(&mut reg, &req, &seen).unwrap();
    let seen = seen.0.into_inner().unwrap();
    for g in 1..=4 {
        let done = format!("x × y: kNN graph {g}/4 (n = 2048): 100%, ETA 0 s");
        assert!(seen.contains(&done), "no {done:?} in {seen:?}");
    }
    // Read back the second time: no search, no graph progress.
    let again = Messages::default();
    let mut req = req;
    req.specs = vec![MetricSpec::new(Metric::Cknna)];
    prh::sweep::sweep(&mut reg, &req, &again).unwrap();
    let again = again.0.into_inner().unwrap();
    assert!(!again.iter().any(|m| m.contains("kNN graph")), "{again:?}");
}

/// One representation's graph split into row blocks over two workers: at n = 2,048 on the
/// large-n path (--mem-mib 16), `--graph-rows 512` enters each of the 4 graphs as 4 blocks of
/// rows (16 units, claimed before the pair); the parts are merged into graphs byte-identical
/// to a one-process search's, none is left behind, and the scores are the same.
#[test]
fn a_graph_split_into_row_blocks_over_two_workers_equals_one_process_search() {
    let n = 2048;
    let (one, two) = (registry(n), registry(n));
    let want = align(&one, "mutual_knn,cknna", &["--mem-mib", "16"]);
    let split = ["--mem-mib", "16", "--workers", "2", "--graph-rows", "512"];
    let got = align(&two, "mutual_knn,cknna", &split);
    for (a, b) in want.as_array().unwrap().iter().zip(got.as_array().unwrap()) {
        assert_eq!(
            (&a["metric"], &a["score"], &a["ties"]),
            (&b["metric"], &b["score"], &b["ties"])
        );
    }
    let (r1, r2) = (common::open(&one), common::open(&two));
    let keys = r1.catalog.knn_graph_keys().unwrap();
    assert_eq!(keys.len(), 4);
    for (h, p, k) in &keys {
        let a = r1.catalog.knn_graph(h, p, *k).unwrap().unwrap();
        let b = r2.catalog.knn_graph(h, p, *k).unwrap();
        assert!(b.as_ref() == Some(&a), "graph of {h} differs or is missing");
        assert!(r2.catalog.knn_graph_parts(h, p, *k).unwrap().is_empty());
    }
    let (_, units) = r2.catalog.sweep_rows().unwrap();
    let blocks: Vec<_> = units
        .iter()
        .filter(|u| u.label.contains("kNN graph rows"))
        .collect();
    assert_eq!(blocks.len(), 16, "{units:?}");
    assert!(units.iter().all(|u| u.state == "done"), "{units:?}");
    assert!(
        blocks
            .iter()
            .any(|u| u.label.contains("rows 1536–2048 of 2048")),
        "{blocks:?}"
    );
    // Blocks come first: every pair unit started after the last block finished.
    let last_block = blocks.iter().filter_map(|u| u.finished_ms).max().unwrap();
    let pairs: Vec<_> = units.iter().filter(|u| u.cells > 0).collect();
    assert!(!pairs.is_empty());
    assert!(
        pairs.iter().all(|u| u.started_ms.unwrap() >= last_block),
        "{units:?}"
    );
    // `prh status` counts the blocks' progress in rows (they have no cells).
    let status = two.json(&["status", "--format", "json"]);
    let s = &status[0];
    assert_eq!(
        (&s["graph_rows"], &s["graph_rows_done"]),
        (&8192.into(), &8192.into()),
        "{s}"
    );
    assert!(s["graph_rows_per_second"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["graph_eta_seconds"].as_f64(), Some(0.0), "{s}");
    assert!(two.ok(&["status"]).contains("8192/8192"));
    let mut by: Vec<&str> = blocks.iter().filter_map(|u| u.worker.as_deref()).collect();
    by.sort_unstable();
    by.dedup();
    eprintln!("graph blocks done by {} worker(s): {by:?}", by.len());
}

/// Features stored as f16 are held at 16 bits on the large-n path, in one process and in a
/// worker's graph block: the scores and ties are those of the dense path (which widens them
/// once), and the split graphs are byte-identical to one process's.
#[test]
fn f16_features_held_at_16_bits_give_the_dense_paths_scores_whole_or_split() {
    let n = 2048;
    let f16 = prh::formats::npy::encode_f16;
    let (dense, one, two) = (
        registry_stored(n, 2, 16, f16),
        registry_stored(n, 2, 16, f16),
        registry_stored(n, 2, 16, f16),
    );
    let metrics = "mutual_knn,cycle_knn,cknna,unbiased_cka";
    let want = align(&dense, metrics, &[]);
    let large = align(&one, metrics, &["--mem-mib", "16"]);
    let split = ["--mem-mib", "16", "--workers", "2", "--graph-rows", "512"];
    let got = align(&two, metrics, &split);
    assert_eq!(want.as_array().unwrap().len(), 4);
    for ((a, b), c) in want
        .as_array()
        .unwrap()
        .iter()
        .zip(large.as_array().unwrap())
        .zip(got.as_array().unwrap())
    {
        let fields = |v: &serde_json::Value| {
            (
                v["metric"].clone(),
                v["score"].clone(),
                v["ties"].clone(),
                v["best_layers"].clone(),
            )
        };
        assert_eq!(fields(a), fields(b), "dense vs large-n");
        assert_eq!(fields(a), fields(c), "dense vs split");
    }
    assert_eq!(knn_graphs(&dense), 0, "the dense path stores no graph");
    let (r1, r2) = (common::open(&one), common::open(&two));
    let keys = r1.catalog.knn_graph_keys().unwrap();
    assert_eq!(keys.len(), 4);
    for (h, p, k) in &keys {
        let a = r1.catalog.knn_graph(h, p, *k).unwrap().unwrap();
        assert!(
            r2.catalog.knn_graph(h, p, *k).unwrap() == Some(a),
            "graph of {h}"
        );
        // What the sweep derived from this layer: its 16-bit values, not an f32 copy.
        let (t, normalize) = prep::from_key(p).unwrap();
        let blob = r1.store.get(h).unwrap();
        let layer = Derived::from_blob(blob, t, normalize, 16 << 20).unwrap();
        assert!(!layer.dense() && !layer.holds_f32() && layer.d() == 16);
    }
}

/// A worker told to stop (SIGTERM, no grace) in the middle of a graph block leaves the search
/// within one task of rows, gives the block back and stores no part; a second worker then does
/// every block and the pair. Before, the block ran to its end after the signal and was
/// finished (here about 5 s of one thread with f32 proposals; the signal comes after 0.5 s).
#[test]
fn a_worker_stopped_mid_graph_block_gives_it_back_and_stores_no_part() {
    let env = registry_of(40_000, 1, 256);
    let split = ["--mem-mib", "64", "--workers", "0", "--graph-rows", "20000"];
    let said = env.ok(&align_args("mutual_knn", &split));
    let id = common::sweep_id(&said);
    let worker = |name: &str, log: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_prh"))
            .arg("--registry")
            .arg(env.reg())
            .args([
                "worker",
                "--sweep",
                &id.to_string(),
                "--once",
                "--grace",
                "0",
            ])
            .args(["--name", name])
            .env("RAYON_NUM_THREADS", "1")
            .env("PRH_KNN_GEMM", "f32")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let units = || common::open(&env).catalog.sweep_rows().unwrap().1;
    let a_log = env.path("a.log");
    let mut a = worker("A", &a_log);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let held = loop {
        if let Some(u) = units()
            .into_iter()
            .find(|u| u.worker.as_deref() == Some("A"))
        {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "A claimed nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        held.label.contains("kNN graph rows 0–20224 of 40000"),
        "{held:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(a.wait().unwrap().success());
    let said = std::fs::read_to_string(&a_log).unwrap();
    assert!(
        said.contains(&format!("unit {} of sweep {id} given back", held.idx)),
        "{said}"
    );
    let after = units().into_iter().find(|u| u.idx == held.idx).unwrap();
    assert_eq!((after.state.as_str(), after.attempts), ("pending", 1));
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    let parts: i64 = db
        .query_row("SELECT count(*) FROM knn_graph_parts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(parts, 0, "a part of an unfinished block was stored");
    drop(db);
    let b_log = env.path("b.log");
    let mut b = worker("B", &b_log);
    assert!(b.wait().unwrap().success());
    assert!(units().iter().all(|u| u.state == "done"), "{:?}", units());
    let reg = common::open(&env);
    let keys = reg.catalog.knn_graph_keys().unwrap();
    assert_eq!(keys.len(), 2);
    for (h, p, k) in &keys {
        assert!(reg.catalog.knn_graph_parts(h, p, *k).unwrap().is_empty());
    }
}

/// Parts left by a sweep planned with other blocks (here rows 256–512, beside the new blocks
/// 0–512 and 512–1100) do not keep the new parts from being merged: the graph is the one a
/// single search gives, and every part is dropped.
#[test]
fn stale_parts_of_other_blocks_do_not_keep_a_graph_from_being_merged() {
    use prh::metrics::graph;
    let env = common::Env::new();
    env.ok(&["init"]);
    let reg = common::open(&env);
    let (n, k) = (1100, 5);
    let x = ndarray::Array2::from_shape_vec((n, 8), common::noise(n * 8, 9)).unwrap();
    let h = prh::store::BlobHash(*blake3::hash(b"a layer").as_bytes());
    for (a, b) in [(256, 512), (0, 512), (512, 1100)] {
        let part = graph::knn_rows(
            graph::Source::of(x.view()),
            k,
            None,
            graph::Gemm::best(),
            a..b,
            &|_| {},
            &|| false,
        );
        let bytes = graph::encode_part(n, k, a..b, part.unwrap());
        let rows = (a as i64, b as i64);
        reg.catalog
            .put_knn_graph_part(&h, "l2", k, rows, &bytes)
            .unwrap();
    }
    let (knn, ties) = prh::sweep::merge_parts(&reg, &h, "l2", k, n)
        .unwrap()
        .expect("merged");
    let (want, want_ties) = graph::knn_tiled(&x, k, None, &|_| {});
    assert_eq!((knn.ordered, knn.sims), (want.ordered, want.sims));
    assert_eq!(ties.rows, want_ties.rows);
    assert!(reg.catalog.knn_graph(&h, "l2", k).unwrap().is_some());
    assert!(reg.catalog.knn_graph_parts(&h, "l2", k).unwrap().is_empty());
}
