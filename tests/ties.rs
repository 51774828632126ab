//! kNN ties at the k boundary: the count reported with every kNN score, and `--ties expected`,
//! checked against brute-force enumeration of every tie-breaking outcome.

use crate::common;

use common::{Env, ingest_all, write_npy};
use ndarray::Array2;
use prh::metrics::derived::Knn;
use prh::metrics::{Derived, Metric, MetricSpec, TieBreak, Ties};
use prh::rng::Rng;

/// Features in {0, 1, 2}^d with many zeros: inner products are small integers, so neighbours
/// tie often (as ReLU-sparse features of a narrow layer do).
fn sparse_ints(n: usize, d: usize, rng: &mut Rng) -> Array2<f32> {
    let mut x = Array2::from_shape_fn((n, d), |_| match rng.below(5) {
        0..=2 => 0.0,
        3 => 1.0,
        _ => 2.0,
    });
    // No all-zero row (it has no direction).
    for mut row in x.rows_mut() {
        row[rng.below(d)] += 1.0;
    }
    x
}

/// Every r-subset of `items`.
fn subsets(items: &[u32], r: usize) -> Vec<Vec<u32>> {
    if r == 0 {
        return vec![vec![]];
    }
    if items.len() < r {
        return vec![];
    }
    let mut out = subsets(&items[1..], r - 1);
    for s in &mut out {
        s.push(items[0]);
    }
    out.extend(subsets(&items[1..], r));
    out
}

/// Every neighbour list row i can have under some tie-breaking.
fn choices(knn: &Knn, ties: &Ties, i: usize) -> Vec<Vec<u32>> {
    match ties.row(i) {
        None => vec![knn.row(i).to_vec()],
        Some(t) => subsets(&t.group, t.picks)
            .into_iter()
            .map(|mut s| {
                s.extend(&t.sure);
                s.sort_unstable();
                s
            })
            .collect(),
    }
}

/// mutual_knn's row-i overlap and cycle_knn's row-i hit for explicit neighbour sets.
fn overlap(a: &[u32], b: &[u32]) -> usize {
    a.iter().filter(|j| b.contains(j)).count()
}

#[test]
fn expected_scores_equal_the_mean_over_every_tie_breaking() {
    let mut rng = Rng::new(7);
    let k = 2;
    let mut checked_mutual = 0;
    let mut checked_cycle = 0;
    for _ in 0..200 {
        let n = 7;
        let (x, y) = (sparse_ints(n, 3, &mut rng), sparse_ints(n, 3, &mut rng));
        let (dx, dy) = (Derived::new(x), Derived::new(y));
        let (ka, kb, ta, tb) = (dx.knn(k), dy.knn(k), dx.ties(k), dy.ties(k));
        let mut spec = MetricSpec::new(Metric::MutualKnn);
        spec.k = k;
        spec.ties = TieBreak::Expected;
        // mutual_knn: rows are independent, so enumerate each row's (X, Y) choices.
        let mut want = 0.0;
        for i in 0..n {
            let (ca, cb) = (choices(&ka, &ta, i), choices(&kb, &tb, i));
            let mut sum = 0.0;
            for a in &ca {
                for b in &cb {
                    sum += overlap(a, b) as f64;
                }
            }
            want += sum / (ca.len() * cb.len()) as f64;
        }
        want /= (n * k) as f64;
        let got = spec.compute(&dx, &dy).unwrap();
        assert!((got - want).abs() < 1e-12, "mutual: {got} vs {want}");
        checked_mutual += usize::from(!ta.rows.is_empty() || !tb.rows.is_empty());

        // cycle_knn: enumerate every global outcome of the X side (all rows together) and of
        // Y's row i, when small enough.
        let per_row: Vec<Vec<Vec<u32>>> = (0..n).map(|i| choices(&ka, &ta, i)).collect();
        let total: usize = per_row.iter().map(|c| c.len()).product();
        if total > 20_000 || ta.rows.is_empty() {
            continue;
        }
        let mut want = 0.0;
        for i in 0..n {
            let cb = choices(&kb, &tb, i);
            let mut hits = 0.0;
            for code in 0..total {
                let mut c = code;
                let lists: Vec<&Vec<u32>> = per_row
                    .iter()
                    .map(|opts| {
                        let l = &opts[c % opts.len()];
                        c /= opts.len();
                        l
                    })
                    .collect();
                for b in &cb {
                    let hit = b.iter().any(|&j| lists[j as usize].contains(&(i as u32)));
                    hits += f64::from(u8::from(hit));
                }
            }
            want += hits / (total * cb.len()) as f64;
        }
        want /= n as f64;
        spec.metric = Metric::CycleKnn;
        let got = spec.compute(&dx, &dy).unwrap();
        assert!((got - want).abs() < 1e-12, "cycle: {got} vs {want}");
        checked_cycle += 1;
    }
    assert!(
        checked_mutual >= 50 && checked_cycle >= 20,
        "{checked_mutual} {checked_cycle}"
    );
}

#[test]
fn without_ties_the_expectation_is_the_plain_score() {
    let mut rng = Rng::new(3);
    let x = Array2::from_shape_fn((120, 16), |_| rng.normal() as f32);
    let y = Array2::from_shape_fn((120, 16), |_| rng.normal() as f32);
    let (dx, dy) = (Derived::new(x), Derived::new(y));
    for metric in [Metric::MutualKnn, Metric::CycleKnn] {
        let plain = MetricSpec::new(metric);
        let mut expected = plain;
        expected.ties = TieBreak::Expected;
        assert_eq!(plain.tied_rows(&dx, &dy), Some(0));
        assert_eq!(
            plain.compute(&dx, &dy).unwrap(),
            expected.compute(&dx, &dy).unwrap()
        );
        assert_eq!(expected.params_key(), "k=10,ties=expected");
    }
    let mut lcs = MetricSpec::new(Metric::LcsKnn);
    lcs.ties = TieBreak::Expected;
    let e = lcs.compute(&dx, &dy).unwrap_err().to_string();
    assert!(e.contains("mutual_knn and cycle_knn"), "{e}");
}

/// A width-8 ReLU layer of a random MLP on 512 inputs: sparse, so many neighbours tie.
fn relu_features(seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let (n, d_in, d) = (512, 4, 8);
    let w: Vec<f32> = (0..d_in * d).map(|_| rng.normal() as f32).collect();
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let x: Vec<f32> = (0..d_in).map(|_| rng.normal() as f32).collect();
        for o in 0..d {
            let v: f32 = (0..d_in).map(|i| x[i] * w[i * d + o]).sum();
            // Quantised as a low-precision export would be.
            out.push((v.max(0.0) * 4.0).round() / 4.0 + if o == 0 { 0.25 } else { 0.0 });
        }
    }
    out
}

#[test]
fn ties_are_reported_and_the_expected_score_is_cached_apart() {
    let env = Env::new();
    env.ok(&["init"]);
    let mut files = Vec::new();
    for (name, modality, seed) in [("mlp_a", "language", 11), ("mlp_b", "vision", 12)] {
        let p = env.path(&format!("{name}.npy"));
        write_npy(&p, &[512, 8], &relu_features(seed));
        files.push((p, name, modality));
    }
    ingest_all(&env, "d", &files);
    let (a, b) = (env.path("mlp_a.npy"), env.path("mlp_b.npy"));
    let cmp = |metric: &str, extra: &[&str]| {
        let mut args = vec![
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--metric",
            metric,
            "--k",
            "5",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        env.json(&args)
    };
    let lower = cmp("mutual_knn", &[]);
    let expected = cmp("mutual_knn", &["--ties", "expected"]);
    let ties = lower["ties"].as_u64().unwrap();
    assert!(ties > 25, "a sparse width-8 layer ties often: {ties}");
    assert_eq!(expected["ties"], lower["ties"]);
    assert_eq!(expected["params"]["ties"], "expected");
    let (l, e) = (
        lower["value"].as_f64().unwrap(),
        expected["value"].as_f64().unwrap(),
    );
    assert!((l - e).abs() > 1e-4, "lower index {l} vs expected {e}");
    let cycle = |extra: &[&str]| cmp("cycle_knn", extra)["value"].as_f64().unwrap();
    assert!((cycle(&[]) - cycle(&["--ties", "expected"])).abs() > 1e-4);
    // The figures the README quotes (`cargo test --test integration ties:: -- --nocapture` prints them; the reference doc quotes them).
    println!("k = 5: {ties} rows tie; mutual_knn {l:.6} (lower index) vs {e:.6} (expected)");
    let k10 = |metric: &str, extra: &[&str]| {
        let mut args = vec!["--k", "10"];
        args.extend_from_slice(extra);
        let mut c = vec![
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--metric",
            metric,
            "--format",
            "json",
        ];
        c.extend_from_slice(&args);
        env.json(&c)
    };
    let (c_lower, c_exp) = (
        k10("cycle_knn", &[]),
        k10("cycle_knn", &["--ties", "expected"]),
    );
    let (cl, ce) = (
        c_lower["value"].as_f64().unwrap(),
        c_exp["value"].as_f64().unwrap(),
    );
    println!(
        "k = 10: {} rows tie; cycle_knn {cl:.6} (lower index) vs {ce:.6} (expected)",
        c_lower["ties"]
    );
    assert!((cl - ce).abs() > 1e-4, "k = 10: {cl} vs {ce}");

    let align = |extra: &[&str]| {
        let mut args = vec![
            "align",
            "--x",
            "mlp_a",
            "--y",
            "mlp_b",
            "--metric",
            "mutual_knn",
            "--k",
            "5",
            "--format",
            "json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        env.json(&args)[0].clone()
    };
    let r = align(&[]);
    assert_eq!(r["ties"], lower["ties"]);
    assert_eq!(r["score"].as_f64().unwrap(), l);
    let r = align(&["--ties", "expected"]);
    assert_eq!(r["cells_computed"], 1, "another tie rule is another cell");
    assert_eq!(r["score"].as_f64().unwrap(), e);
    // A warm run reads the tie count from the catalog; a lost count is recomputed.
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    assert_eq!(db.execute("DELETE FROM knn_ties", []).unwrap(), 2);
    let again = align(&["--ties", "expected"]);
    assert_eq!(again["cells_cached"], 1);
    assert_eq!(again["ties"], lower["ties"]);
}
