//! The catalog and blob backends side by side, on the sweep bench's zoo (4 language × 4 vision
//! models, n = 1024, 12 layers, d = 768–1024, mutual_knn k = 10, 2,304 cells): a cold and a
//! warm sweep on SQLite + local blobs, PostgreSQL + local blobs and PostgreSQL + S3 (moto),
//! each step on every backend before the next; the transactions a warm sweep costs the
//! PostgreSQL server; then the same cold sweep split over 1 and 2 worker processes against one
//! PostgreSQL; then the bytes each catalog spends per cached cell. The bench starts its own
//! PostgreSQL cluster and moto server on loopback (as the tests do) and stops them at its end.
//! Run: `cargo bench --bench backends`.

use std::path::Path;
use std::time::Duration;

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use common::{Subject, align_language_vision};
use harness::postgres::Cluster;
use harness::s3::Moto;
use prh::catalog::PgCatalog;
use prh::demo::ZooModel;
use prh::location::Locations;
use prh::registry::Registry;

/// A registry at `root` whose parts `loc` names, holding the zoo's files.
fn registry(root: &Path, loc: &Locations, files: &[(ZooModel, std::path::PathBuf)]) {
    common::ingest_zoo(&mut Registry::init_at(root, loc).unwrap(), files);
}

fn main() {
    common::announce("backends");
    let dir = tempfile::tempdir().unwrap();
    let zoo = common::sweep_zoo();
    let files = zoo.write_files(&dir.path().join("inputs")).unwrap();
    let pg = Cluster::start();
    let moto = Moto::start();
    moto.bucket("bench");
    // SAFETY: no other thread runs yet; every prh below (in this process and the ones it
    // starts) reaches the cluster and the bucket through the standard environment.
    for (k, v) in pg
        .env()
        .into_iter()
        .chain(moto.env().into_iter().map(|(k, v)| (k.to_string(), v)))
    {
        unsafe { std::env::set_var(k, v) };
    }
    let kinds = [
        ("sqlite", Locations::default()),
        (
            "postgres",
            Locations {
                catalog: Some(pg.database("bench_pg")),
                blobs: None,
            },
        ),
        (
            "postgres+s3",
            Locations {
                catalog: Some(pg.database("bench_pg_s3")),
                blobs: Some("s3://bench/zoo".into()),
            },
        ),
    ];
    let mut subjects = Vec::new();
    for (label, loc) in &kinds {
        let root = dir.path().join(label);
        registry(&root, loc, &files);
        subjects.push(Subject {
            label: label.to_string(),
            bin: env!("CARGO_BIN_EXE_prh").into(),
            reg: root,
        });
    }
    println!(
        "zoo: 8 models × 12 layers, n = 1024, d = 768–1024; backends: sqlite, postgres, postgres+s3"
    );
    let mut cold = Vec::new();
    for s in &subjects {
        let (secs, cells, _) = align_language_vision(s, "mutual_knn", &[]);
        cold.push(secs);
        println!(
            "[{}] cold sweep: {secs:.2} s, {cells} cells computed, {:.2}× sqlite",
            s.label,
            secs / cold[0]
        );
    }
    let transactions = |db: &str| -> i64 {
        // Statistics reach the view when the backends end (prh has exited).
        std::thread::sleep(Duration::from_millis(1500));
        pg.psql(
            "postgres",
            &format!(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"
            ),
        )
        .parse()
        .unwrap()
    };
    let mut warm = Vec::new();
    for (s, (_, loc)) in subjects.iter().zip(&kinds) {
        let db = loc
            .catalog
            .as_deref()
            .and_then(|u| u.rsplit('/').next())
            .map(str::to_string);
        let before = db.as_deref().map(transactions);
        let (secs, cells, _) = align_language_vision(s, "mutual_knn", &[]);
        warm.push(secs);
        let trips = match (db.as_deref(), before) {
            (Some(db), Some(b)) => format!(", {} server transactions", transactions(db) - b),
            _ => String::new(),
        };
        println!(
            "[{}] warm sweep: {secs:.3} s, {cells} cells computed, {:.2}× sqlite{trips}",
            s.label,
            secs / warm[0]
        );
    }
    // 1 vs 2 worker processes against one PostgreSQL, each on a fresh catalog.
    for n in ["1", "2"] {
        let loc = Locations {
            catalog: Some(pg.database(&format!("bench_workers_{n}"))),
            blobs: None,
        };
        let root = dir.path().join(format!("workers-{n}"));
        registry(&root, &loc, &files);
        let s = Subject {
            label: format!("postgres, --workers {n}"),
            bin: env!("CARGO_BIN_EXE_prh").into(),
            reg: root,
        };
        let (secs, _, _) = align_language_vision(&s, "mutual_knn", &["--workers", n]);
        println!(
            "[{}] cold sweep: {secs:.2} s ({:.2}× the single-process postgres sweep)",
            s.label,
            secs / cold[1]
        );
    }
    // Bytes per cached cell: SQLite's cells table (dbstat) and PostgreSQL's (table + index).
    let sqlite = rusqlite::Connection::open(subjects[0].reg.join("catalog.db")).unwrap();
    let (bytes, cells): (i64, i64) = sqlite
        .query_row(
            "SELECT (SELECT sum(pgsize) FROM dbstat WHERE name = 'cells'), (SELECT count(*) FROM cells)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    println!(
        "[sqlite] {:.1} bytes per cached cell ({cells} cells, pages of the cells table)",
        bytes as f64 / cells as f64
    );
    let per_cell = pg.psql(
        "bench_pg",
        "SELECT round(pg_total_relation_size('cells')::numeric / count(*), 1) || ' bytes per cached cell (' || count(*) || ' cells, table + primary key)' FROM cells",
    );
    println!("[postgres] {per_cell}");

    // A million cached cells in PostgreSQL, stored and found again as benches/cache.rs does
    // in SQLite (one transaction per pair; one lookup per pair).
    let zoo = common::CacheZoo::new();
    let mut cat = PgCatalog::create(&pg.database("bench_cache")).unwrap();
    let store = zoo.store(&mut cat);
    let lookup = zoo.find(&cat);
    let n = zoo.n();
    drop(cat);
    pg.psql("bench_cache", "VACUUM ANALYZE cells");
    let bytes: f64 = pg
        .psql("bench_cache", "SELECT pg_total_relation_size('cells')")
        .parse()
        .unwrap();
    println!(
        "[postgres] cache: {n} cells stored in {store:.2} s ({:.0} cells/s), {:.1} bytes per cell (table + primary key), all found again in {lookup:.3} s ({:.0} µs per pair)",
        n as f64 / store,
        bytes / n as f64,
        lookup * 1e6 / zoo.pairs() as f64
    );
}
