//! Sweeps split over workers: `prh align --workers N` gives what `prh align` gives, on SQLite
//! and on PostgreSQL; `prh status` reports the units; a worker killed with SIGKILL mid-unit
//! loses its lease and another worker redoes the unit, with every cell stored once; one stopped
//! (SIGSTOP) past its lease leaves the unit to its successor when it resumes.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use common::http::Process;
use common::postgres::Cluster;
use serde_json::Value;

const X: &str = "modality=language";
const Y: &str = "modality=vision";

/// The demo zoo in a registry made by `init` (extra `prh init` arguments).
pub(crate) fn demo(envs: Vec<(String, String)>, init: &[&str]) -> Env {
    let mut env = Env::new();
    env.envs = envs;
    let mut args = vec!["init"];
    args.extend_from_slice(init);
    env.ok(&args);
    let reg = env.reg();
    env.ok(&["demo", "--dir", reg.to_str().unwrap(), "--no-plots"]);
    env
}

/// Each pair's score and best layers, in order (what a sweep reports, without how much of it
/// was computed now).
fn scores(v: &Value) -> Vec<(String, String, String, String, f64, Value)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["x_model"].as_str().unwrap().to_string(),
                r["x_checkpoint"].as_str().unwrap().to_string(),
                r["y_model"].as_str().unwrap().to_string(),
                r["y_checkpoint"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap(),
                r["best_layers"].clone(),
            )
        })
        .collect()
}

fn align_args(workers: Option<&str>) -> Vec<&str> {
    let mut a = vec![
        "align",
        "--x",
        X,
        "--y",
        Y,
        "--metric",
        "cka",
        "--all-checkpoints",
        "--format",
        "json",
        "--quiet",
    ];
    if let Some(n) = workers {
        a.extend(["--workers", n]);
    }
    a
}

/// `align --workers 2` against `align` on two copies of the demo: the same scores, every unit
/// done once, the status report consistent. With `blocks`, `--unit-cells` splits each pair
/// (the demo's: 6 × 6 layers, 36 cells) into that many units of x layers.
fn workers_match_a_plain_sweep(a: &Env, b: &Env, blocks: Option<(&str, u64)>) {
    let plain = a.json(&align_args(None));
    let mut args = align_args(Some("2"));
    if let Some((cells, _)) = blocks {
        args.extend(["--unit-cells", cells]);
    }
    let split = b.json(&args);
    assert_eq!(scores(&split), scores(&plain));
    let computed = common::cells_computed;
    assert!(computed(&plain) > 0);
    assert_eq!(computed(&split), 0, "the workers filled every cell first");
    let st = b.json(&["status", "--format", "json"]);
    let s = &st[0];
    let pairs = plain.as_array().unwrap().len() as u64;
    let units = pairs * blocks.map_or(1, |b| b.1);
    assert_eq!(s["units"], units, "{st}");
    assert_eq!(s["done"], units, "{st}");
    assert_eq!(s["pending"], 0);
    assert_eq!(s["running"], 0);
    assert_eq!(s["cells_done"].as_u64().unwrap(), computed(&plain), "{st}");
    assert_eq!(s["cells"], s["cells_done"]);
    assert!(s["cells_per_second"].as_f64().unwrap() > 0.0, "{st}");
    assert_eq!(s["eta_seconds"].as_f64().unwrap(), 0.0);
    // Both workers took units (or the split proved nothing), and their shares add up.
    let shares = s["workers"].as_array().unwrap();
    assert_eq!(shares.len(), 2, "{st}");
    assert!(
        shares.iter().all(|w| w["units_done"].as_u64().unwrap() > 0),
        "{st}"
    );
    let shared: u64 = shares
        .iter()
        .map(|w| w["units_done"].as_u64().unwrap())
        .sum();
    assert_eq!(shared, units, "{st}");
    let count = "SELECT count(*) AS n FROM cells WHERE metric = 'cka'";
    assert_eq!(
        b.ok(&["query", count, "--format", "csv"]),
        a.ok(&["query", count, "--format", "csv"])
    );
    // Nothing left to split: a second run enters no sweep.
    b.ok(&align_args(Some("2")));
    assert_eq!(
        b.json(&["status", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn align_with_workers_gives_the_same_scores_on_sqlite() {
    workers_match_a_plain_sweep(&demo(vec![], &[]), &demo(vec![], &[]), None);
}

#[test]
fn align_with_workers_gives_the_same_scores_on_postgres() {
    let pg = Cluster::start();
    let a = demo(pg.env(), &["--catalog", &pg.database("plain")]);
    let b = demo(pg.env(), &["--catalog", &pg.database("split")]);
    // Each pair split into three units of two x layers, so that workers share pairs.
    workers_match_a_plain_sweep(&a, &b, Some(("12", 3)));
}

#[test]
fn a_unit_of_a_block_of_x_layers_computes_those_layers_and_no_others() {
    use prh::sweep::{self, DerivedCache, Selector, Silent, SweepRequest};
    let env = demo(vec![], &[]);
    let mut reg = prh::registry::Registry::open(&env.reg()).unwrap();
    let req = SweepRequest {
        x: Selector::Names(vec!["lm-base".into()]),
        y: Selector::Names(vec!["vit-b".into()]),
        dataset: None,
        pool: None,
        all_checkpoints: false,
        x_checkpoint: None,
        specs: vec![prh::metrics::MetricSpec::from_key("cka", "kernel=linear").unwrap()],
        prep: Default::default(),
        mem_budget: 1 << 30,
        null: 0,
        bootstrap: 0,
        seed: 0,
        alpha: 0.05,
        reduce: Default::default(),
    };
    let pair = sweep::sweep_pairs(&reg, &req).unwrap().remove(0);
    let ids = pair.x_layer_ids.clone();
    assert_eq!((ids.len(), pair.missing_by_x.clone()), (6, vec![6; 6]));
    let (lo, hi) = (ids[1], ids[2]);
    let mut cache = DerivedCache::new(req.mem_budget);
    sweep::fill_pair(
        &mut reg,
        &req,
        (pair.x, pair.y),
        Some((lo, hi)),
        &mut cache,
        &Silent,
    )
    .unwrap();
    let after = sweep::sweep_pairs(&reg, &req).unwrap().remove(0);
    assert_eq!(after.missing_by_x, vec![6, 0, 0, 6, 6, 6]);
    // The block's cells are the cells a whole-pair sweep gives.
    drop(reg);
    let table = |env: &Env| {
        env.ok(&[
            "query",
            "SELECT x.layer AS xl, y.layer AS yl, c.value FROM cells c JOIN reps x ON x.rep = c.x_rep JOIN reps y ON y.rep = c.y_rep WHERE c.metric = 'cka' AND x.model = 'lm-base' AND y.model = 'vit-b' ORDER BY 1, 2",
            "--format",
            "csv",
        ])
    };
    let blocked = table(&env);
    let whole = demo(vec![], &[]);
    whole.ok(&[
        "align", "--x", "lm-base", "--y", "vit-b", "--metric", "cka", "--quiet",
    ]);
    let all: Vec<String> = table(&whole).lines().map(str::to_string).collect();
    let got: Vec<String> = blocked.lines().map(str::to_string).collect();
    assert_eq!(got.len(), 1 + 12, "{blocked}");
    assert!(
        got.iter().all(|l| all.contains(l)),
        "{blocked}\nvs\n{all:?}"
    );
}

/// A registry on a new database `db` of `pg` holding two language and two vision models big
/// enough that a unit takes a while (n = 1024, 12 layers, d = 96).
pub(crate) fn zoo(pg: &Cluster, db: &str) -> Env {
    let mut env = Env::new();
    env.envs = pg.env();
    env.ok(&["init", "--catalog", &pg.database(db)]);
    common::ingest_all(&env, "d", &zoo_files(&env));
    env
}

/// The zoo's feature files in `env`'s directory (written on the first call): two language and
/// two vision models, n = 1024, 12 layers, d = 96; (file, model, modality).
fn zoo_files(env: &Env) -> Vec<(std::path::PathBuf, &'static str, &'static str)> {
    let shape = [1024, 12, 96];
    let len: usize = shape.iter().product();
    [
        ("l1", "language"),
        ("l2", "language"),
        ("v1", "vision"),
        ("v2", "vision"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, modality))| {
        let p = env.path(&format!("{name}.npy"));
        if !p.exists() {
            common::write_npy(&p, &shape, &common::noise(len, 40 + i as u64));
        }
        (p, name, modality)
    })
    .collect()
}

/// Enters the zoo's language × vision mutual_knn sweep (`--workers 0`); its id.
pub(crate) fn plan(env: &Env) -> i64 {
    let planned = env.ok(&[
        "align",
        "--x",
        X,
        "--y",
        Y,
        "--metric",
        "mutual_knn",
        "--workers",
        "0",
    ]);
    common::sweep_id(&planned)
}

/// Waits until `worker` holds a unit of the sweep; the unit's index.
fn held_by(env: &Env, worker: &str) -> i64 {
    let t = Instant::now();
    loop {
        let st = status(env);
        let running = &st[0]["running_units"];
        if let Some(u) = running
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["worker"] == worker)
        {
            return u["unit"].as_i64().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{worker} never took a unit: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `prh worker --once` on sweep `id` of the zoo in `env`, named `name`, with `extra` flags.
fn worker_cmd(env: &Env, pg: &Cluster, id: i64, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prh"));
    c.arg("--registry")
        .arg(env.reg())
        .args([
            "worker",
            "--once",
            "--quiet",
            "--sweep",
            &id.to_string(),
            "--name",
            name,
        ])
        .args(extra)
        .envs(pg.env())
        .stdout(Stdio::null());
    c
}

/// The exit status of `p`, which must end within `limit`.
fn ends_within(p: &mut Process, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < limit, "{what} did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `prh status --format json` of `env`.
pub(crate) fn status(env: &Env) -> Value {
    env.json(&["status", "--format", "json"])
}

#[test]
fn a_worker_killed_mid_unit_loses_its_lease_and_its_unit_is_redone_once() {
    let pg = Cluster::start();
    let env = zoo(&pg, "faults");
    let id = plan(&env);
    let worker = |name: &str| worker_cmd(&env, &pg, id, name, &["--lease-seconds", "2"]);
    let mut a = Process(worker("A").spawn().unwrap());
    // Wait until A holds a unit, then kill it without warning.
    let held = held_by(&env, "A");
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let st = status(&env);
    let unit = |st: &Value, idx: i64| {
        st[0]["running_units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == idx)
            .cloned()
    };
    let dead =
        unit(&st, held).unwrap_or_else(|| panic!("unit {held} should still be leased to A: {st}"));
    assert_eq!(dead["worker"], "A");
    // B waits for the lease to run out, then redoes the unit (and does the rest).
    let t = Instant::now();
    let out = worker("B").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = status(&env);
    let s = &st[0];
    assert_eq!(s["done"], s["units"], "{st}");
    assert_eq!(s["running"], 0);
    assert!(
        t.elapsed()
            >= Duration::from_millis(
                (dead["lease_seconds_left"].as_f64().unwrap() * 1000.0).max(0.0) as u64
            ),
        "B took the unit before A's lease ran out"
    );
    // Every planned cell is stored once (the cache's key makes a second copy impossible; the
    // count shows none was lost either).
    let cells: i64 = pg
        .psql("faults", "SELECT count(*) FROM cells")
        .parse()
        .unwrap();
    assert_eq!(cells, s["cells"].as_i64().unwrap(), "{st}");
    let attempts = attempts(&pg, "faults", id);
    for line in &attempts {
        let parts: Vec<&str> = line.split(':').collect();
        let idx: i64 = parts[0].parse().unwrap();
        if idx == held {
            assert_eq!(&parts[1..], ["2", "B"], "the killed unit: {attempts:?}");
        } else {
            assert_eq!(parts[1], "1", "{attempts:?}");
        }
    }
    same_scores_as_one_process(&env);
}

/// The zoo sweep's scores in `env` (all cached) equal a sweep in one process on SQLite over
/// the same files.
pub(crate) fn same_scores_as_one_process(env: &Env) {
    let solo = Env::new();
    solo.ok(&["init"]);
    common::ingest_all(&solo, "d", &zoo_files(env));
    let args = [
        "align",
        "--x",
        X,
        "--y",
        Y,
        "--metric",
        "mutual_knn",
        "--format",
        "json",
        "--quiet",
    ];
    let split = env.json(&args);
    assert_eq!(scores(&split), scores(&solo.json(&args)));
    assert!(
        split
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["cells_computed"] == 0)
    );
}

/// Each unit's `idx:attempts:worker` of sweep `id`, in order.
fn attempts(pg: &Cluster, db: &str, id: i64) -> Vec<String> {
    pg.psql(
        db,
        &format!("SELECT idx || ':' || attempts || ':' || worker FROM sweep_units WHERE sweep_id = {id} ORDER BY idx"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_worker_stopped_past_its_lease_and_resumed_leaves_the_unit_to_its_successor() {
    // SIGSTOP (a suspended job, a frozen VM) outlives the lease: another worker takes the
    // unit over and finishes it. When the stopped one resumes, it completes the computation it
    // was in, but the unit is no longer its own: its cells are already stored (a duplicate
    // write changes nothing), its finish does not count, and it says so.
    let pg = Cluster::start();
    let env = zoo(&pg, "stopped");
    let id = plan(&env);
    let log = env.path("a.log");
    let worker = |name: &str| worker_cmd(&env, &pg, id, name, &["--lease-seconds", "2"]);
    let mut a = Process(
        worker("A")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let held = held_by(&env, "A");
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &a.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    let out = worker("B").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = status(&env);
    assert_eq!(st[0]["done"], st[0]["units"], "B finished the sweep: {st}");
    signal("-CONT");
    let code = ends_within(&mut a, Duration::from_secs(120), "A after it resumed");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(code.success(), "A: {said}");
    assert!(
        said.contains(&format!("lost unit {held} of sweep {id}")),
        "A says it lost the unit: {said}"
    );
    // Every unit is done by B, the taken one on its second attempt; A is credited with none.
    for line in attempts(&pg, "stopped", id) {
        let parts: Vec<&str> = line.split(':').collect();
        let want = if parts[0] == held.to_string() {
            "2"
        } else {
            "1"
        };
        assert_eq!(&parts[1..], [want, "B"], "unit {line}");
    }
    let st = status(&env);
    let shares = st[0]["workers"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "{st}");
    assert_eq!(shares[0]["worker"], "B");
    let cells: i64 = pg
        .psql("stopped", "SELECT count(*) FROM cells")
        .parse()
        .unwrap();
    assert_eq!(cells, st[0]["cells"].as_i64().unwrap(), "{st}");
    same_scores_as_one_process(&env);
}

#[test]
fn a_worker_told_to_stop_gives_its_unit_back_at_once_or_finishes_it_within_its_grace() {
    // SIGTERM is how Slurm preempts a job or ends it at its time limit, and how Kubernetes
    // ends a pod. Before, it killed the worker at once and its unit stayed leased to a dead
    // worker until the lease ran out (here 600 s). Now the worker claims nothing more, lets the
    // unit in hand finish within --grace, else gives it back at once, and exits 0.
    let pg = Cluster::start();
    let env = zoo(&pg, "drain");
    let id = plan(&env);
    let start = |name: &str, grace: &str| {
        let log = env.path(&format!("{name}.log"));
        let p = Process(
            worker_cmd(
                &env,
                &pg,
                id,
                name,
                &["--lease-seconds", "600", "--grace", grace],
            )
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        );
        (p, log)
    };
    let term = |p: &Process| {
        let ok = Command::new("kill")
            .args(["-TERM", &p.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let unit_row = |idx: i64| {
        pg.psql(
            "drain",
            &format!("SELECT state || ':' || attempts || ':' || worker FROM sweep_units WHERE sweep_id = {id} AND idx = {idx}"),
        )
    };
    // No grace: the unit in hand goes back at once.
    let (mut a, a_log) = start("A", "0");
    let held = held_by(&env, "A");
    term(&a);
    let code = ends_within(&mut a, Duration::from_secs(20), "A after SIGTERM");
    let said = std::fs::read_to_string(&a_log).unwrap();
    assert!(code.success(), "A: {code:?} {said}");
    assert!(
        said.contains(&format!("unit {held} of sweep {id} given back")),
        "{said}"
    );
    assert_eq!(unit_row(held), "pending:1:A");
    assert_eq!(status(&env)[0]["running"], 0);
    // A long grace: the unit in hand is finished, nothing more is claimed.
    let (mut b, b_log) = start("B", "600");
    let held = held_by(&env, "B");
    term(&b);
    let code = ends_within(&mut b, Duration::from_secs(120), "B after SIGTERM");
    let said = std::fs::read_to_string(&b_log).unwrap();
    assert!(code.success(), "B: {code:?} {said}");
    assert!(said.contains("stopping as asked"), "{said}");
    assert_eq!(
        unit_row(held),
        "done:2:B",
        "the unit A gave back, finished by B"
    );
    let st = status(&env);
    assert_eq!(
        (st[0]["done"].as_i64(), st[0]["pending"].as_i64()),
        (Some(1), Some(3)),
        "{st}"
    );
    // The rest by another worker: the same numbers as one process.
    let (mut c, _) = start("C", "20");
    assert!(ends_within(&mut c, Duration::from_secs(300), "C").success());
    same_scores_as_one_process(&env);
}

#[test]
fn a_worker_rides_out_a_postgres_restart_mid_sweep() {
    let pg = Cluster::start();
    let env = zoo(&pg, "restart");
    let id = plan(&env);
    let log = env.path("worker.log");
    let mut w = Process(
        worker_cmd(&env, &pg, id, "W", &[])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    held_by(&env, "W");
    // Down (as in a crash) until the worker has found it gone, then up again. The worker is
    // paused meanwhile, so the outage comes while it holds its unit: before, it could finish
    // every unit while the server was stopping, exit, and never meet it.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &w.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    pg.stop();
    signal("-CONT");
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("trying again")
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the worker never met the outage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.resume();
    let status_code = ends_within(&mut w, Duration::from_secs(180), "the worker");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status_code.success(), "{said}");
    assert!(
        said.contains("trying again"),
        "the worker met the restart: {said}"
    );
    let st = status(&env);
    assert_eq!(st.as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st[0]["done"], st[0]["units"], "{st}");
    let cells: i64 = pg
        .psql("restart", "SELECT count(*) FROM cells")
        .parse()
        .unwrap();
    assert_eq!(cells, st[0]["cells"].as_i64().unwrap(), "{st}");
}

#[test]
fn numeric_flags_are_range_checked_before_anything_is_written() {
    let env = demo(vec![], &[]);
    let before = env.json(&["status", "--format", "json"]);
    let mut too_many = align_args(Some("18446744073709551615"));
    too_many.retain(|a| *a != "--quiet");
    let e = env.fails(&too_many);
    assert!(e.contains("--workers") && e.contains("1024"), "{e}");
    assert_eq!(
        env.json(&["status", "--format", "json"]),
        before,
        "no sweep entered"
    );
    for (flag, v) in [
        ("--lease-seconds", "1e300"),
        ("--lease-seconds", "0.000001"),
        ("--lease-seconds", "1e17"),
        ("--lease-seconds", "NaN"),
        ("--poll", "-1"),
    ] {
        let arg = format!("{flag}={v}");
        let e = env.fails(&["worker", "--once", "--quiet", &arg]);
        assert!(e.contains(flag) && e.contains("seconds from"), "{arg}: {e}");
    }
    // Scores print at any magnitude as a number a person reads.
    let out = env.ok(&["score", "set", "--model", "lm-large", "tiny=1e-300"]);
    assert!(out.trim_end().ends_with("tiny = 1e-300"), "{out}");
}
