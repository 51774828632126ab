//! The PostgreSQL catalog end to end: a throwaway cluster started by the test (Debian's
//! postgresql, initdb + pg_ctl on a free loopback port, password authentication), S3 blobs on a
//! moto server. The same commands give the same output on SQLite + local blobs, PostgreSQL +
//! local blobs and PostgreSQL + S3; bundles move registries between backends; bad URLs and
//! foreign databases are refused with one line and nothing written.

use crate::common;

use std::process::Command;

use common::Env;
use common::postgres::{Cluster, PASSWORD};
use common::s3::Moto;
use serde_json::Value;

const X: &str = "modality=language";
const Y: &str = "modality=vision";

/// A registry whose parts are given by `init` (extra `prh init` arguments), reaching the
/// cluster and the S3 server through the standard environment.
fn registry(pg: &Cluster, moto: &Moto, init: &[&str]) -> Env {
    let mut env = Env::new();
    env.envs = pg.env();
    env.envs
        .extend(moto.env().into_iter().map(|(k, v)| (k.to_string(), v)));
    let mut args = vec!["init"];
    args.extend_from_slice(init);
    env.ok(&args);
    env
}

/// Drops the fields that record when a row was written (not part of what a backend stores
/// for a user to compare).
fn without_times(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            m.retain(|k, _| !k.ends_with("_at") && !k.contains("seconds"));
            for x in m.values_mut() {
                *x = without_times(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = without_times(x.take());
            }
        }
        _ => {}
    }
    v
}

/// What the conformance script prints on one registry: listings, a sweep with a null, the
/// trend, matrix and trajectory, SQL, verify and gc.
fn outputs(env: &Env) -> Vec<(String, String)> {
    let script: Vec<Vec<&str>> = vec![
        vec!["ls", "models", "--format", "json"],
        vec!["ls", "checkpoints", "--format", "json"],
        vec!["ls", "reps", "--format", "json"],
        vec!["ls", "scores", "--format", "json"],
        vec!["ls", "datasets", "--format", "json"],
        vec![
            "align",
            "--x",
            "lm-large",
            "--y",
            Y,
            "--metric",
            "mutual_knn",
            "--null",
            "20",
            "--format",
            "json",
        ],
        vec![
            "align", "--x", X, "--y", Y, "--metric", "cka", "--format", "json",
        ],
        vec![
            "trend",
            "--metric",
            "mutual_knn",
            "--x",
            X,
            "--y",
            Y,
            "--perf",
            "bpb",
            "--format",
            "json",
        ],
        vec![
            "matrix",
            "--metric",
            "mutual_knn",
            "--x",
            X,
            "--y",
            Y,
            "--format",
            "json",
        ],
        vec![
            "align",
            "--x",
            "lm-large",
            "--y",
            Y,
            "--metric",
            "mutual_knn",
            "--all-checkpoints",
            "--format",
            "json",
        ],
        vec![
            "trajectory",
            "--metric",
            "mutual_knn",
            "--model",
            "lm-large",
            "--against",
            Y,
            "--format",
            "json",
        ],
        vec![
            "query",
            "SELECT x_model, x_checkpoint, y_model, y_checkpoint, metric, score FROM alignment ORDER BY x_model, x_checkpoint, y_model, y_checkpoint, metric",
            "--format",
            "csv",
        ],
        vec![
            "query",
            "SELECT count(*) AS n, sum(n_cells) AS cells FROM (SELECT count(*) AS n_cells FROM cells GROUP BY metric)",
            "--format",
            "csv",
        ],
        vec!["verify", "--recompute", "8", "--format", "json"],
        vec!["gc", "--dry-run", "--format", "json"],
    ];
    script
        .into_iter()
        .map(|args| {
            let out = env.ok(&args);
            let shown = match serde_json::from_str::<Value>(&out) {
                Ok(v) => serde_json::to_string_pretty(&without_times(v)).unwrap(),
                Err(_) => out,
            };
            (args.join(" "), shown)
        })
        .collect()
}

#[test]
fn every_command_gives_the_same_output_on_sqlite_postgres_and_postgres_with_s3() {
    let pg = Cluster::start();
    let moto = Moto::start();
    for b in ["conf-pg-s3", "conf-import"] {
        moto.bucket(b);
    }
    let kinds: [(&str, Vec<String>); 3] = [
        ("sqlite + local blobs", vec![]),
        (
            "postgres + local blobs",
            vec!["--catalog".into(), pg.database("conf_pg")],
        ),
        (
            "postgres + s3",
            vec![
                "--catalog".into(),
                pg.database("conf_pg_s3"),
                "--blobs".into(),
                "s3://conf-pg-s3/team".into(),
            ],
        ),
    ];
    let mut all = Vec::new();
    let mut envs = Vec::new();
    for (name, init) in &kinds {
        let init: Vec<&str> = init.iter().map(String::as_str).collect();
        let env = registry(&pg, &moto, &init);
        let reg = env.reg();
        env.ok(&["demo", "--dir", reg.to_str().unwrap(), "--no-plots"]);
        all.push((*name, outputs(&env)));
        envs.push(env);
    }
    // The PostgreSQL catalogs really hold the registry (not a local file beside it).
    let listed = envs[0].json(&["ls", "reps", "--format", "json"]);
    let n_reps = listed.as_array().unwrap().len();
    assert!(n_reps > 50, "{n_reps}");
    for (db, env) in [("conf_pg", &envs[1]), ("conf_pg_s3", &envs[2])] {
        assert!(!env.reg().join("catalog.db").exists());
        let reps: usize = pg
            .psql(db, "SELECT count(*) FROM representations")
            .parse()
            .unwrap();
        assert_eq!(reps, n_reps, "{db}");
        let cells: usize = pg.psql(db, "SELECT count(*) FROM cells").parse().unwrap();
        assert!(cells > 1000, "{db}: {cells} cells");
    }
    assert!(!envs[2].reg().join("blobs").exists());
    let (base_name, base) = &all[0];
    for (name, got) in &all[1..] {
        assert_eq!(base.len(), got.len());
        for ((cmd, a), (_, b)) in base.iter().zip(got) {
            assert_eq!(a, b, "`prh {cmd}` differs: {base_name} vs {name}");
        }
    }

    // Bundles move a registry between backends: SQLite → PostgreSQL, PostgreSQL → PostgreSQL +
    // S3, PostgreSQL + S3 → SQLite; each import answers as its source.
    let targets: [Vec<String>; 3] = [
        vec!["--catalog".into(), pg.database("imp_pg")],
        vec![
            "--catalog".into(),
            pg.database("imp_pg_s3"),
            "--blobs".into(),
            "s3://conf-import/in".into(),
        ],
        vec![],
    ];
    for (i, init) in targets.iter().enumerate() {
        let from = &envs[i];
        let bundle = from.path("all.prh");
        from.ok(&["export", bundle.to_str().unwrap()]);
        let init: Vec<&str> = init.iter().map(String::as_str).collect();
        let to = registry(&pg, &moto, &init);
        // The first import quarantines the bundle's cells and has them recomputed (the
        // PostgreSQL quarantine path); the others trust them, to keep the test short.
        let recompute = i == 0;
        let mut args = vec!["import", bundle.to_str().unwrap(), "--format", "json"];
        if !recompute {
            args.push("--trust-cells");
        }
        let r = to.json(&args);
        assert_eq!(r["models_new"], 12, "{r}");
        if recompute {
            assert!(r["cells_quarantined"].as_u64().unwrap() > 1000, "{r}");
            to.ok(&["verify", "--recompute", "100000"]);
        } else {
            assert!(r["cells_new"].as_u64().unwrap() > 1000, "{r}");
        }
        for what in ["models", "reps", "scores"] {
            let args = ["ls", what, "--format", "json"];
            assert_eq!(
                to.json(&args),
                from.json(&args),
                "ls {what} after {} → import",
                kinds[i].0
            );
        }
        let trend = [
            "trend",
            "--metric",
            "mutual_knn",
            "--x",
            X,
            "--y",
            Y,
            "--perf",
            "bpb",
            "--format",
            "json",
        ];
        assert_eq!(to.json(&trend), from.json(&trend), "trend after import");
    }
}

/// Runs `prh init --catalog url` with `password` in PGPASSWORD; (exit code, stderr).
fn init_with(env: &Env, url: &str, password: &str) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(env.reg())
        .args(["init", "--catalog", url])
        .env("PGPASSWORD", password)
        .env_remove("PRH_CATALOG")
        .env_remove("PRH_BLOBS")
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8(o.stderr).unwrap())
}

#[test]
fn bad_catalogs_are_refused_in_one_line_and_nothing_is_written() {
    let pg = Cluster::start();
    // Each refusal with its kind's exit code: 1 failed, 2 invalid input, 3 not found, 75
    // unavailable (a server that may come back).
    let check = |url: &str, password: &str, code: i32, expect: &str| {
        let env = Env::new();
        let (got, err) = init_with(&env, url, password);
        assert_eq!(got, Some(code), "{url}: {err}");
        // One line, and at most a hint on its own line.
        let lines: Vec<&str> = err.trim().lines().collect();
        assert!(
            lines.len() == 1 || (lines.len() == 2 && lines[1].starts_with("hint: ")),
            "one line: {err}"
        );
        assert!(lines[0].contains(expect), "{url}: {err}");
        assert!(err.contains(url), "names the URL: {err}");
        assert!(
            !err.contains(PASSWORD) && !err.contains("wrong-pw"),
            "{err}"
        );
        assert!(
            !env.reg().join("config.json").exists() && !env.reg().join("catalog.db").exists(),
            "nothing written"
        );
    };
    let good = pg.database("good");
    check(&good, "wrong-pw", 1, "password authentication failed");
    check(&pg.url("missing"), PASSWORD, 3, "does not exist");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("postgres://prh@127.0.0.1:{port}/good")
    };
    check(&closed, PASSWORD, 75, "cannot connect");
    // A role that may connect but not create tables.
    pg.database("locked");
    pg.psql(
        "postgres",
        &format!("CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}'"),
    );
    let locked = format!("postgres://reader@127.0.0.1:{}/locked", pg.port);
    check(&locked, PASSWORD, 1, "permission denied");
    let (_, err) = init_with(&Env::new(), &locked, PASSWORD);
    assert!(err.contains("hint: ") && err.contains("CREATE"), "{err}");
    assert_eq!(
        pg.psql(
            "locked",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ),
        "0"
    );
    // A database holding something else is not taken over.
    let other = pg.database("other");
    pg.psql(
        "other",
        "CREATE TABLE notes (t text); INSERT INTO notes VALUES ('keep me')",
    );
    check(&other, PASSWORD, 2, "not a prh catalog");
    assert_eq!(pg.psql("other", "SELECT t FROM notes"), "keep me");
    assert_eq!(
        pg.psql(
            "other",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ),
        "1"
    );

    // Two `prh init` at once against one empty database: both succeed, one schema.
    let (a, b) = (Env::new(), Env::new());
    let spawn = |env: &Env| {
        Command::new(env!("CARGO_BIN_EXE_prh"))
            .arg("--registry")
            .arg(env.reg())
            .args(["init", "--catalog", &good])
            .env("PGPASSWORD", PASSWORD)
            .env_remove("PRH_CATALOG")
            .env_remove("PRH_BLOBS")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut pa, mut pb) = (spawn(&a), spawn(&b));
    assert!(pa.wait().unwrap().success() && pb.wait().unwrap().success());
    assert_eq!(
        pg.psql("good", "SELECT version FROM prh_schema"),
        prh::catalog::postgres::MIGRATIONS.len().to_string()
    );
    let mut a = a;
    a.envs = pg.env();
    a.ok(&["dataset", "add", "d", "--n", "4"]);
    let mut b = b;
    b.envs = pg.env();
    let listed = b.json(&["ls", "datasets", "--format", "json"]);
    assert_eq!(
        listed[0]["name"], "d",
        "both registries share the catalog: {listed}"
    );

    // A catalog newer than this prh is refused, and left as it is.
    pg.psql("good", "UPDATE prh_schema SET version = 99");
    let err = b.fails(&["ls", "models"]);
    assert!(err.contains("newer than this prh"), "{err}");
    assert_eq!(pg.psql("good", "SELECT version FROM prh_schema"), "99");
}

#[test]
fn blobs_lost_from_the_bucket_or_a_store_that_is_down_never_leave_a_row_pointing_nowhere() {
    let pg = Cluster::start();
    let moto = Moto::start();
    moto.bucket("faults");
    let env = registry(
        &pg,
        &moto,
        &[
            "--catalog",
            &pg.database("s3_faults"),
            "--blobs",
            "s3://faults/lab",
        ],
    );
    let files: Vec<_> = [("lm", "language"), ("vit", "vision")]
        .into_iter()
        .enumerate()
        .map(|(i, (model, modality))| {
            let p = env.path(&format!("{model}.npy"));
            common::write_npy(&p, &[64, 3, 16], &common::noise(64 * 3 * 16, 90 + i as u64));
            (p, model, modality)
        })
        .collect();
    common::ingest_all(&env, "d", &files);
    // A blob deleted from the bucket behind prh's back: verify names it, align refuses.
    let reps = env.json(&["ls", "reps", "--model", "vit", "--format", "json"]);
    let lost = reps[1]["hash"].as_str().unwrap().to_string();
    moto.delete("faults", &format!("lab/blobs/{}/{lost}", &lost[..2]));
    let o = env.prh(&["verify"]);
    assert_eq!(o.status.code(), Some(6));
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains(&lost[..12]),
        "verify names the lost blob: {said}"
    );
    let err = env.fails(&["align", "--x", "lm", "--y", "vit", "--metric", "cka"]);
    assert!(err.contains(&lost[..12]) || err.contains(&lost), "{err}");
    // The store down: an ingest fails in one line and leaves no row behind.
    let before = pg.psql("s3_faults", "SELECT count(*) FROM representations");
    drop(moto);
    let p = env.path("late.npy");
    common::write_npy(&p, &[64, 2, 16], &common::noise(64 * 2 * 16, 99));
    let err = env.fails(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "late",
        "--dataset",
        "d",
        "--modality",
        "language",
    ]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("blob store"), "{err}");
    assert_eq!(
        pg.psql("s3_faults", "SELECT count(*) FROM representations"),
        before
    );
    assert_eq!(
        pg.psql(
            "s3_faults",
            "SELECT count(*) FROM models WHERE name = 'late'"
        ),
        "0"
    );
}

/// PostgreSQL's lock that serialises prh's writing transactions (catalog/postgres.rs).
const WRITE_LOCK: i64 = 0x7072_685f_7772_6974;

/// Advisory locks some session waits for in `db`.
fn advisory_waits(pg: &Cluster, db: &str) -> i64 {
    pg.psql(
        db,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
    )
    .parse()
    .unwrap()
}

/// Machine A runs gc while machine B's ingest has uploaded its blobs but not committed its
/// rows (held there: the test holds the lock B's commit needs). Both registry directories
/// point at one catalog and one blob store; gc must wait for B, and nothing is lost.
fn gc_on_one_machine_waits_for_an_ingest_on_another(
    pg: &Cluster,
    moto: &Moto,
    db: &str,
    blobs: &str,
) {
    let url = pg.database(db);
    let a = registry(pg, moto, &["--catalog", &url, "--blobs", blobs]);
    let b = registry(pg, moto, &["--catalog", &url, "--blobs", blobs]);
    let p = b.path("b.npy");
    common::write_npy(&p, &[64, 40, 16], &common::noise(64 * 40 * 16, 41));
    let mut hold = pg.session(db);
    hold.send(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});"
    ));
    let t = std::time::Instant::now();
    while advisory_waits(pg, db) != 0 {
        assert!(t.elapsed().as_secs() < 20, "the lock was not taken");
    }
    let spawn = |env: &Env, args: &[&str]| {
        common::http::Process(
            Command::new(env!("CARGO_BIN_EXE_prh"))
                .arg("--registry")
                .arg(env.reg())
                .args(args)
                .envs(env.envs.iter().map(|(k, v)| (k, v)))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut ingest = spawn(
        &b,
        &[
            "ingest",
            p.to_str().unwrap(),
            "--model",
            "b",
            "--dataset",
            "d",
            "--modality",
            "vision",
        ],
    );
    // B has uploaded every blob and waits to commit.
    while advisory_waits(pg, db) < 1 {
        assert!(t.elapsed().as_secs() < 60, "B never reached its commit");
        assert!(ingest.0.try_wait().unwrap().is_none(), "B ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut gc = spawn(&a, &["gc"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // A's gc waits for B's guard (a second waiting advisory lock), across machines.
    assert!(
        gc.0.try_wait().unwrap().is_none(),
        "gc did not wait for the ingest"
    );
    assert_eq!(
        advisory_waits(pg, db),
        2,
        "B on its commit, A's gc on the blob guard"
    );
    hold.send("COMMIT;");
    drop(hold);
    assert!(ingest.0.wait().unwrap().success(), "B's ingest failed");
    assert!(gc.0.wait().unwrap().success(), "A's gc failed");
    for env in [&a, &b] {
        let v = env.json(&["verify", "--format", "json"]);
        assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    }
    let reps = a.json(&["ls", "reps", "--model", "b", "--format", "json"]);
    assert_eq!(reps.as_array().unwrap().len(), 40);
}

#[test]
fn gc_on_one_machine_never_deletes_what_another_is_committing() {
    let pg = Cluster::start();
    let moto = Moto::start();
    moto.bucket("shared");
    let shared = tempfile::tempdir().unwrap();
    let local = format!("file://{}", shared.path().join("blobs").display());
    gc_on_one_machine_waits_for_an_ingest_on_another(&pg, &moto, "gc_files", &local);
    gc_on_one_machine_waits_for_an_ingest_on_another(&pg, &moto, "gc_s3", "s3://shared/zoo");
}

/// Runs `args` in `env` while PostgreSQL restarts under it: the command is held at its commit
/// (a session holds the catalog's write lock), the server stops (fast: every session is cut)
/// and starts again. Its exit code and what it printed to stderr.
fn cut_at_commit(pg: &Cluster, db: &str, env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let mut hold = pg.session(db);
    hold.send(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});"
    ));
    let t = std::time::Instant::now();
    while advisory_waits(pg, db) != 0 {
        assert!(t.elapsed().as_secs() < 20, "the lock was not taken");
    }
    let log = env.path("cut.log");
    let mut cmd = common::http::Process(
        Command::new(env!("CARGO_BIN_EXE_prh"))
            .arg("--registry")
            .arg(env.reg())
            .args(args)
            .envs(env.envs.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    while advisory_waits(pg, db) < 1 {
        assert!(
            t.elapsed().as_secs() < 60,
            "{args:?} never reached its commit"
        );
        assert!(cmd.0.try_wait().unwrap().is_none(), "{args:?} ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    pg.stop();
    drop(hold);
    pg.resume();
    let code = cmd.0.wait().unwrap().code();
    (code, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn postgres_restarted_during_an_ingest_or_an_import_loses_nothing_and_leaves_nothing_half() {
    // Not tried before: the catalog server restarts while a writer is inside its transaction.
    // The writer must say the catalog was unavailable (exit 75, as a worker would retry), the
    // registry must hold all of the write or none of it, and the same command run again lands.
    let pg = Cluster::start();
    let moto = Moto::start();
    moto.bucket("restart");
    let url = pg.database("restart");
    let env = registry(
        &pg,
        &moto,
        &["--catalog", &url, "--blobs", "s3://restart/r"],
    );
    let p = env.path("a.npy");
    common::write_npy(&p, &[64, 40, 16], &common::noise(64 * 40 * 16, 7));
    let ingest = [
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "a",
        "--dataset",
        "d",
        "--modality",
        "vision",
    ];
    let reps = |env: &Env| {
        env.json(&["ls", "reps", "--format", "json"])
            .as_array()
            .unwrap()
            .len()
    };
    let (code, said) = cut_at_commit(&pg, "restart", &env, &ingest);
    assert_eq!(code, Some(75), "ingest: {said}");
    assert!(said.contains("catalog unavailable"), "{said}");
    assert!(
        said.contains("hint: ") && said.contains("run the command again"),
        "{said}"
    );
    assert_eq!(reps(&env), 0, "a cut ingest left rows");
    env.ok(&ingest);
    assert_eq!(reps(&env), 40);
    // A bundle of another registry, imported while the server restarts.
    let other = Env::new();
    other.ok(&["init"]);
    let q = other.path("b.npy");
    common::write_npy(&q, &[64, 40, 16], &common::noise(64 * 40 * 16, 8));
    other.ok(&[
        "ingest",
        q.to_str().unwrap(),
        "--model",
        "b",
        "--dataset",
        "d",
        "--modality",
        "language",
    ]);
    let bundle = other.path("b.prh");
    other.ok(&["export", bundle.to_str().unwrap()]);
    let import = ["import", bundle.to_str().unwrap()];
    let (code, said) = cut_at_commit(&pg, "restart", &env, &import);
    assert_eq!(code, Some(75), "import: {said}");
    assert!(said.contains("run the command again"), "{said}");
    assert_eq!(reps(&env), 40, "a cut import left rows");
    env.ok(&import);
    assert_eq!(reps(&env), 80);
    let v = env.json(&["verify", "--format", "json"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
}

#[test]
fn a_read_only_role_reads_everything_and_is_told_plainly_that_it_cannot_write() {
    // A lab gives most people a role that may only read the shared catalog. Everything that
    // reads (listings, cached sweeps, trends, queries, verify) must work with it; a write must
    // be refused in one line that names the cause, with nothing written.
    let pg = Cluster::start();
    let url = pg.database("ro");
    let mut owner = Env::new();
    owner.envs = pg.env();
    let blobs = owner.path("shared-blobs");
    let blobs_url = format!("file://{}", blobs.display());
    owner.ok(&["init", "--catalog", &url, "--blobs", &blobs_url]);
    let reg = owner.reg();
    owner.ok(&["demo", "--dir", reg.to_str().unwrap(), "--no-plots"]);
    pg.psql(
        "ro",
        "CREATE ROLE reader LOGIN PASSWORD 'reader-pw'; \
         GRANT CONNECT ON DATABASE ro TO reader; GRANT USAGE ON SCHEMA public TO reader; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader;",
    );
    let mut reader = Env::new();
    reader.envs = vec![("PGPASSWORD".into(), "reader-pw".into())];
    let reader_url = url.replace("postgres://prh@", "postgres://reader@");
    reader.ok(&["init", "--catalog", &reader_url, "--blobs", &blobs_url]);
    for args in [
        vec!["ls", "models", "--format", "json"],
        vec!["ls", "reps", "--format", "json"],
        vec![
            "matrix",
            "--metric",
            "mutual_knn",
            "--x",
            X,
            "--y",
            Y,
            "--format",
            "json",
        ],
        vec![
            "trend",
            "--metric",
            "mutual_knn",
            "--x",
            X,
            "--y",
            Y,
            "--perf",
            "bpb",
            "--format",
            "json",
        ],
        vec![
            "align",
            "--metric",
            "mutual_knn",
            "--x",
            X,
            "--y",
            Y,
            "--format",
            "json",
            "--quiet",
        ],
        vec!["query", "SELECT count(*) AS n FROM reps", "--format", "csv"],
        vec!["status", "--format", "json"],
    ] {
        assert_eq!(
            reader.ok(&args),
            owner.ok(&args),
            "the reader sees what the owner sees: {args:?}"
        );
    }
    let v = reader.json(&["verify", "--format", "json"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    // Writes: an ingest, a score, a sweep that must compute.
    let p = reader.path("w.npy");
    // Into the demo's dataset: nothing about the dataset is new, so only the new model and
    // its layers would be written (after uploading their blobs).
    common::write_npy(&p, &[256, 4, 16], &common::noise(256 * 4 * 16, 3));
    let other = Env::new();
    other.ok(&["init"]);
    other.ok(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "w",
        "--dataset",
        "demo_256",
        "--modality",
        "vision",
    ]);
    let bundle = other.path("w.prh");
    other.ok(&["export", bundle.to_str().unwrap()]);
    let before = owner.ok(&["ls", "reps", "--format", "json"]);
    let stored = common::files_under(&blobs);
    for args in [
        vec![
            "ingest",
            p.to_str().unwrap(),
            "--model",
            "w",
            "--dataset",
            "demo_256",
            "--modality",
            "vision",
        ],
        vec!["import", bundle.to_str().unwrap()],
        vec!["score", "set", "--model", "lm-base", "bpb=0.5"],
        vec!["align", "--x", X, "--y", Y, "--metric", "cka", "--quiet"],
    ] {
        let said = reader.fails_with(1, &args);
        assert!(
            said.contains("permission denied for table") && said.contains("lacks the privilege"),
            "{args:?}: {said}"
        );
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 2, "one line and a hint: {said}");
        assert!(lines[1].starts_with("hint: ") && lines[1].contains("INSERT"));
    }
    assert_eq!(owner.ok(&["ls", "reps", "--format", "json"]), before);
    // The refused ingest and import uploaded nothing to the shared store.
    assert_eq!(
        common::files_under(&blobs),
        stored,
        "the refused ingest wrote blobs"
    );
}
