//! Query speed: a catalog with 1,000,000+ cached layer-pair cells (filled directly, no blobs
//! computed), then `prh trend` end to end (process start to exit) and `prh query`.
//! Run: `cargo bench --bench query`.

use std::process::Command;
use std::time::Instant;

mod common;
use common::size;

#[path = "../tests/common/mod.rs"]
mod harness;

use prh::catalog::Catalog;
use prh::registry::Registry;
use rusqlite::params;

fn main() {
    // PRH_BENCH_DIR keeps the filled registry for inspection (it must not exist yet).
    let dir = tempfile::tempdir().unwrap();
    let root = std::env::var_os("PRH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("reg"));
    let reg = Registry::init(&root).unwrap();
    drop(reg);
    common::announce("query");
    let (nx, ny, layers): (usize, usize, usize) = size((40, 25, 32), (4, 3, 4));
    let t = Instant::now();
    let mut db = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    let tx = db.transaction().unwrap();
    tx.execute("INSERT INTO datasets (name, n) VALUES ('bench', 1024)", [])
        .unwrap();
    let hash = |m: usize, l: usize| {
        blake3::hash(format!("{m}/{l}").as_bytes())
            .to_hex()
            .to_string()
    };
    for m in 0..nx + ny {
        let (name, modality) = if m < nx {
            (format!("lm{m:02}"), "language")
        } else {
            (format!("vit{:02}", m - nx), "vision")
        };
        tx.execute(
            "INSERT INTO models (name, modality) VALUES (?1, ?2)",
            params![name, modality],
        )
        .unwrap();
        let mid = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO checkpoints (model_id, name, step) VALUES (?1, 'final', 1)",
            [mid],
        )
        .unwrap();
        let cid = tx.last_insert_rowid();
        let q = m as f64 / (nx + ny) as f64;
        tx.execute("INSERT INTO scores (checkpoint_id, name, value, higher_is_better) VALUES (?1, 'bpb', ?2, 0)", params![cid, 1.5 - q]).unwrap();
        let mut layers_key = blake3::Hasher::new();
        for l in 0..layers {
            let h = hash(m, l);
            tx.execute("INSERT INTO blobs (hash, dtype, n, d, bytes) VALUES (?1, 'f32', 1024, 1024, 4194336)", [&h]).unwrap();
            tx.execute(
                "INSERT INTO representations (checkpoint_id, dataset_id, layer, pool, blob_hash) VALUES (?1, 1, ?2, 'avg', ?3)",
                params![cid, l as i64, h],
            )
            .unwrap();
            layers_key.update(&h.parse::<prh::store::BlobHash>().unwrap().0);
        }
        // The checkpoint's clamp threshold (t = 2.0, as in the cells' prep keys below).
        tx.execute(
            "INSERT INTO clamp_thresholds (layers_key, q, threshold) VALUES (?1, 0.95, 2.0)",
            [layers_key.finalize().to_hex().to_string()],
        )
        .unwrap();
    }
    {
        // The cache's compact keys: one metric id, one side id per (blob, prep), ids derived
        // from content as prh derives them.
        let prep = "clamp(q=0.95,t=0x40000000);l2";
        let m = prh::catalog::metric_id("mutual_knn", 1, "k=10");
        tx.execute(
            "INSERT INTO cell_metrics (id, metric, version, params) VALUES (?1, 'mutual_knn', 1, 'k=10')",
            [m],
        )
        .unwrap();
        let mut side = tx
            .prepare("INSERT INTO cell_sides (id, hash, prep) VALUES (?1, ?2, ?3)")
            .unwrap();
        for model in 0..nx + ny {
            for l in 0..layers {
                let h = hash(model, l);
                side.execute(params![prh::catalog::side_id(&h, prep), h, prep])
                    .unwrap();
            }
        }
        let mut ins = tx
            .prepare("INSERT INTO cells (m, x, y, value, micros) VALUES (?1, ?2, ?3, ?4, 1000)")
            .unwrap();
        let mut rng = prh::rng::Rng::new(1);
        for x in 0..nx {
            for y in nx..nx + ny {
                for lx in 0..layers {
                    for ly in 0..layers {
                        let (a, b) = (hash(x, lx), hash(y, ly));
                        let (a, b) = if a <= b { (a, b) } else { (b, a) };
                        let v = 0.05 + 0.3 * (x as f64 / nx as f64) * rng.uniform();
                        let (ia, ib) = (
                            prh::catalog::side_id(&a, prep),
                            prh::catalog::side_id(&b, prep),
                        );
                        ins.execute(params![m, ia, ib, v]).unwrap();
                    }
                }
            }
        }
    }
    tx.commit().unwrap();
    let cells: i64 = db
        .query_row("SELECT count(*) FROM cells", [], |r| r.get(0))
        .unwrap();
    drop(db);
    println!(
        "filled {cells} cells ({nx} × {ny} models × {layers}² layer pairs) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let run_in = |root: &std::path::Path, args: &[&str]| {
        let t = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_prh"))
            .arg("--registry")
            .arg(root)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let run = |args: &[&str]| run_in(&root, args);
    let trend = [
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
    ];
    let _ = run(&trend); // warm the page cache
    let times: Vec<f64> = (0..3).map(|_| run(&trend).0).collect();
    let (_, out) = run(&trend);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    println!(
        "prh trend end to end: {:.3} s / {:.3} s / {:.3} s ({} models, r = {:.3})",
        times[0],
        times[1],
        times[2],
        v["n_models"],
        v["pearson_r"].as_f64().unwrap_or(f64::NAN)
    );
    let (q, _) = run(&[
        "query",
        "SELECT x_model, avg(score) AS a FROM alignment GROUP BY x_model",
        "--format",
        "csv",
    ]);
    println!("prh query over the alignment table: {q:.3} s");

    // The same catalog in PostgreSQL (a throwaway cluster on loopback), merged from catalog.db
    // with its cells trusted (a trend reads no blob), and the same trend through it.
    let pg = harness::postgres::Cluster::start();
    for (k, v) in pg.env() {
        // SAFETY: no thread of this process is running here.
        unsafe { std::env::set_var(k, v) };
    }
    let pg_root = dir.path().join("pg");
    let loc = prh::location::Locations {
        catalog: Some(pg.database("query")),
        blobs: None,
    };
    let mut reg = Registry::init_at(&pg_root, &loc).unwrap();
    let t = Instant::now();
    let mut publish = |h: &[prh::store::BlobHash]| Ok(h.len());
    let merged = reg
        .catalog
        .merge_snapshot(
            &root.join("catalog.db"),
            prh::catalog::MergeOptions {
                trust_cells: true,
                verified: &[],
                origin: "bench",
                deadline: Instant::now() + std::time::Duration::from_secs(3600),
                publish: &mut publish,
            },
        )
        .unwrap();
    // Thresholds are never taken from a bundle (they are recomputed from the blobs, which
    // this bench has none of): copied here as the first sweep would have computed them.
    let sqlite = prh::catalog::SqliteCatalog::open(&root.join("catalog.db")).unwrap();
    for (key, q, threshold) in sqlite.clamp_thresholds().unwrap() {
        reg.catalog.put_clamp_threshold(&key, q, threshold).unwrap();
    }
    drop(reg);
    println!(
        "[postgres] {} cells merged from catalog.db in {:.1} s",
        merged.cells_new,
        t.elapsed().as_secs_f64()
    );
    let _ = run_in(&pg_root, &trend);
    let times: Vec<f64> = (0..3).map(|_| run_in(&pg_root, &trend).0).collect();
    let (_, pg_out) = run_in(&pg_root, &trend);
    assert_eq!(pg_out, out, "the same trend from PostgreSQL");
    println!(
        "[postgres] prh trend end to end: {:.3} s / {:.3} s / {:.3} s (the same output as SQLite's)",
        times[0], times[1], times[2]
    );
}
