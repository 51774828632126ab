//! A sweep split on a scheduler, on the sweep bench's zoo (4 language × 4 vision models,
//! n = 1024, 12 layers, d = 768–1024, mutual_knn k = 10: 16 units, 2,304 cells): one process,
//! then 1, 2 and 4 Slurm array tasks of `prh worker` against one PostgreSQL (each on a fresh
//! catalog), then 4 Slurm array tasks of shards over an SQLite registry they only read, merged
//! by `prh import`. For each: wall time against one process, units and cells per task, and
//! what coordination cost (server transactions and seconds per unit). Then the catalog's claim
//! throughput: 16 threads claiming and finishing units of one sweep as fast as they can, on
//! PostgreSQL and on SQLite — the input of the README's sizing of a sweep ten times the
//! paper's. The bench starts its own PostgreSQL cluster and one-node Slurm cluster (as the
//! tests do; Slurm needs root, and is skipped with a line saying so otherwise).
//! Run: `cargo bench --bench schedulers`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{Subject, align_language_vision, prh_ok};
use harness::postgres::Cluster;
use harness::slurm::{self, Slurm};
use prh::catalog::{Catalog, CheckpointId, NewUnit, PgCatalog, SqliteCatalog};
use prh::demo::ZooModel;
use prh::location::Locations;
use prh::registry::Registry;
use serde_json::Value;

const PRH: &str = env!("CARGO_BIN_EXE_prh");
const SWEEP: [&str; 6] = [
    "--x",
    "modality=language",
    "--y",
    "modality=vision",
    "--metric",
    "mutual_knn",
];

/// A registry at `root` whose parts `loc` names, holding the zoo's files.
fn registry(root: &Path, loc: &Locations, files: &[(ZooModel, PathBuf)]) -> Subject {
    common::ingest_zoo(&mut Registry::init_at(root, loc).unwrap(), files);
    Subject {
        label: root.file_name().unwrap().to_string_lossy().to_string(),
        bin: PRH.into(),
        reg: root.to_path_buf(),
    }
}

fn main() {
    common::announce("schedulers");
    let dir = tempfile::tempdir().unwrap();
    let zoo = common::sweep_zoo();
    let files = zoo.write_files(&dir.path().join("inputs")).unwrap();
    let pg = Cluster::start();
    // SAFETY: no other thread runs yet; every prh below reaches the cluster through the
    // standard environment.
    for (k, v) in pg.env() {
        unsafe { std::env::set_var(k, v) };
    }
    match slurm::unavailable() {
        Some(why) => println!("Slurm part skipped: {why}"),
        None => on_slurm(&pg, dir.path(), &files),
    }
    claims(&pg, dir.path());
}

/// Now, in Unix milliseconds.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Server transactions of database `db` so far.
fn transactions(pg: &Cluster, db: &str) -> i64 {
    // Statistics reach the view when the backends end (prh has exited).
    std::thread::sleep(Duration::from_millis(1500));
    pg.psql(
        "postgres",
        &format!("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"),
    )
    .parse()
    .unwrap()
}

fn on_slurm(pg: &Cluster, dir: &Path, files: &[(ZooModel, PathBuf)]) {
    let cluster = Slurm::start();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm");
    let pg_loc = |db: &str| Locations {
        catalog: Some(pg.database(db)),
        blobs: None,
    };
    let solo = registry(&dir.join("solo-postgres"), &pg_loc("solo"), files);
    let (one, cells, _) = align_language_vision(&solo, "mutual_knn", &[]);
    println!("[one process, postgres] cold sweep: {one:.2} s, {cells} cells");

    for tasks in [1usize, 2, 4] {
        let db = format!("tasks_{tasks}");
        let s = registry(&dir.join(&db), &pg_loc(&db), files);
        let mut plan = vec!["align"];
        plan.extend(SWEEP);
        plan.extend(["--workers", "0"]);
        let said = prh_ok(&s.reg, &plan);
        let sweep = harness::sweep_id(&said).to_string();
        let before = transactions(pg, &db);
        let submitted = unix_ms();
        let t = Instant::now();
        let mut envs = pg.env();
        envs.extend([
            ("PRH".to_string(), PRH.to_string()),
            ("PRH_REGISTRY".into(), s.reg.display().to_string()),
            ("PRH_SWEEP".into(), sweep),
        ]);
        let job = cluster.sbatch(
            &[&format!("--array=0-{}", tasks - 1)],
            &examples.join("prh-worker.sbatch"),
            &[],
            &envs,
        );
        cluster.wait(job, Duration::from_secs(3600));
        let secs = t.elapsed().as_secs_f64();
        let trips = transactions(pg, &db) - before;
        // When units were claimed and finished (the catalog's clock, this machine's).
        let times = pg.psql(
            &db,
            "SELECT min(started_ms) || ' ' || max(finished_ms) || ' ' || sum(finished_ms - started_ms) FROM sweep_units",
        );
        let t: Vec<i64> = times.split(' ').map(|v| v.parse().unwrap()).collect();
        let (first, span, busy) = (
            (t[0] - submitted) as f64 / 1e3,
            (t[1] - t[0]) as f64 / 1e3,
            t[2] as f64 / 1e3,
        );
        let st: Value =
            serde_json::from_str(&prh_ok(&s.reg, &["status", "--format", "json"])).unwrap();
        let st = &st[0];
        assert_eq!(st["done"], st["units"], "{st}");
        let units = st["units"].as_u64().unwrap();
        let shares: Vec<String> = st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| format!("{}/{}", w["units_done"], w["cells_done"]))
            .collect();
        println!(
            "[{tasks} array task(s) of prh worker, postgres] {secs:.2} s from sbatch to the last task's exit ({:.2}× one process): first claim {first:.2} s after sbatch, first claim to last finish {span:.2} s, {busy:.2} s inside units ({:.3} s per unit); units/cells per task: {}; {trips} server transactions ({:.1} per unit)",
            secs / one,
            busy / units as f64,
            shares.join(", "),
            trips as f64 / units as f64,
        );
    }

    // Shards: 4 array tasks over an SQLite registry they only read, then one import.
    let solo = registry(&dir.join("solo-sqlite"), &Locations::default(), files);
    let (one, _, _) = align_language_vision(&solo, "mutual_knn", &[]);
    println!("[one process, sqlite] cold sweep: {one:.2} s");
    let s = registry(&dir.join("shards"), &Locations::default(), files);
    let parts = dir.join("parts");
    let t = Instant::now();
    let job = cluster.sbatch(
        &["--array=0-3"],
        &examples.join("prh-shard.sbatch"),
        &SWEEP,
        &[
            ("PRH".to_string(), PRH.to_string()),
            ("PRH_REGISTRY".into(), s.reg.display().to_string()),
            ("PRH_SHARDS".into(), "4".into()),
            ("PRH_PARTS".into(), parts.display().to_string()),
        ],
    );
    cluster.wait(job, Duration::from_secs(3600));
    let computed = t.elapsed().as_secs_f64();
    let mut import = vec!["import".to_string()];
    let mut sizes = Vec::new();
    for i in 0..4 {
        let p = parts.join(format!("part-{i}.prh"));
        assert!(p.is_file(), "no {}: {:?}", p.display(), cluster.output(job));
        sizes.push(std::fs::metadata(&p).unwrap().len());
        import.push(p.display().to_string());
    }
    import.extend(["--format".into(), "json".into()]);
    let t = Instant::now();
    let got: Value = serde_json::from_str(&prh_ok(
        &s.reg,
        &import.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
    .unwrap();
    let imported = t.elapsed().as_secs_f64();
    let cells: Vec<u64> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells_new"].as_u64().unwrap())
        .collect();
    let (_, left, _) = align_language_vision(&s, "mutual_knn", &[]);
    assert_eq!(left, 0, "cells were left to compute after the import");
    println!(
        "[4 array tasks of shards + import, sqlite] {computed:.2} s from sbatch to the last task's exit, import {imported:.2} s: {:.2} s ({:.2}× one process); cells per shard {cells:?}, parts of {sizes:?} bytes",
        computed + imported,
        (computed + imported) / one
    );
}

/// `claimers` threads claim and finish every unit of one sweep of `units` units on catalogs
/// `open` opens (one per thread); units per second, and how many each thread took (min–max).
fn claim_rate(
    open: &(dyn Fn() -> Box<dyn Catalog> + Sync),
    units: usize,
    claimers: usize,
) -> (f64, usize, usize) {
    let mut cat = open();
    let new: Vec<NewUnit> = (0..units)
        .map(|i| NewUnit {
            x: CheckpointId(1),
            y: CheckpointId(2),
            label: format!("unit {i}"),
            cells: 144,
            x_layers: None,
            rows: None,
        })
        .collect();
    let sweep = cat.create_sweep("{}", "claim bench", &new).unwrap();
    let done = AtomicUsize::new(0);
    let t = Instant::now();
    let per: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..claimers)
            .map(|w| {
                let done = &done;
                s.spawn(move || {
                    let mut cat = open();
                    let name = format!("claimer-{w}");
                    let mut mine = 0;
                    while let Some(u) = cat.claim_unit(Some(sweep), &name, 60_000).unwrap() {
                        assert!(cat.finish_unit(sweep, u.idx, &name).unwrap());
                        mine += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(done.load(Ordering::Relaxed), units);
    (
        units as f64 / secs,
        *per.iter().min().unwrap(),
        *per.iter().max().unwrap(),
    )
}

/// The catalog's claim throughput on loopback: 1 and 16 claimers, PostgreSQL and SQLite.
fn claims(pg: &Cluster, dir: &Path) {
    let units = common::size(20_000, 400);
    let url = pg.database("claims");
    drop(PgCatalog::create(&url).unwrap());
    let sqlite = dir.join("claims.db");
    drop(SqliteCatalog::create(&sqlite).unwrap());
    let pg_open = || Box::new(PgCatalog::open(&url).unwrap()) as Box<dyn Catalog>;
    let sqlite_open = || Box::new(SqliteCatalog::open(&sqlite).unwrap()) as Box<dyn Catalog>;
    for (label, open) in [
        (
            "postgres",
            &pg_open as &(dyn Fn() -> Box<dyn Catalog> + Sync),
        ),
        ("sqlite", &sqlite_open),
    ] {
        for claimers in [1, 16] {
            let (rate, lo, hi) = claim_rate(open, units, claimers);
            println!(
                "[{label}] {claimers} claimer(s): {units} units claimed and finished at {rate:.0} units/s (claim + finish, two transactions each); per claimer {lo}–{hi}"
            );
        }
    }
}
