//! `prh serve` through its HTTP API: the real binary on loopback, a demo registry, and the
//! CLI's `--format json` as the reference for every number.

use crate::common;

use std::path::Path;

use common::Env;
use common::http::{Server, enc, get, request};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_prh");

fn demo() -> Env {
    let env = Env::new();
    env.ok(&["demo", "--dir", env.reg().to_str().unwrap()]);
    env
}

fn serve(env: &Env, extra: &[&str]) -> Server {
    Server::start(Path::new(BIN), &env.reg(), extra)
}

const X: &str = "modality=language";
const Y: &str = "modality=vision";

#[test]
fn the_api_answers_exactly_what_the_cli_prints() {
    let env = demo();
    env.ok(&[
        "align",
        "--metric",
        "mutual_knn",
        "--x",
        "lm-large",
        "--y",
        Y,
        "--all-checkpoints",
        "-q",
    ]);
    let s = serve(&env, &[]);
    let q = format!("metric=mutual_knn&k=10&x={}&y={}", enc(X), enc(Y));

    let cli = env.json(&[
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
    ]);
    let api = get(s.addr, &format!("/api/trend?{q}&perf=bpb"));
    assert_eq!(api.status, 200, "{}", api.text());
    assert_eq!(api.json(), cli);
    assert!(cli["pearson_r"].as_f64().unwrap() < -0.9, "{cli}");

    let cli = env.json(&[
        "matrix",
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
    ]);
    assert_eq!(
        get(s.addr, &format!("/api/matrix?{q}&perf=bpb")).json(),
        cli
    );
    assert_eq!(cli.as_array().unwrap().len(), 6);

    let cli = env.json(&[
        "trajectory",
        "--metric",
        "mutual_knn",
        "--model",
        "lm-large",
        "--against",
        Y,
        "--format",
        "json",
    ]);
    let api = get(
        s.addr,
        &format!(
            "/api/trajectory?metric=mutual_knn&model=lm-large&against={}",
            enc(Y)
        ),
    );
    assert_eq!(api.json(), cli);
    assert_eq!(
        cli.as_array().unwrap().len(),
        4 * 6,
        "4 checkpoints × 6 references"
    );

    assert_eq!(
        get(s.addr, "/api/models").json(),
        env.json(&["ls", "models", "--format", "json"])
    );
    let sql = "SELECT x_model, y_model, score FROM alignment ORDER BY score DESC, x_model, y_model";
    let cli = env.json(&["query", sql, "--format", "json"]);
    let api = get(s.addr, &format!("/api/sql?q={}&limit=1000", enc(sql))).json();
    let columns: Vec<&str> = api["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(columns, ["x_model", "y_model", "score"]);
    let rows: Vec<Value> = api["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            Value::Object(
                columns
                    .iter()
                    .zip(r.as_array().unwrap())
                    .map(|(c, v)| (c.to_string(), v.clone()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(Value::Array(rows), cli);

    // The layer × layer table of a pair: its best cell is the pair's (max) score.
    let layers = get(s.addr, "/api/layers?metric=mutual_knn&x=lm-xxl&y=vit-g").json();
    let best = layers["best"][2].as_f64().unwrap();
    let m = get(s.addr, &format!("/api/matrix?{q}")).json();
    let row = m
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "lm-xxl")
        .unwrap();
    assert_eq!(row["vit-g"].as_f64().unwrap(), best);
    assert_eq!(
        layers["values"].as_array().unwrap().len(),
        layers["x_layers"].as_u64().unwrap() as usize
    );

    let o = get(s.addr, "/api/overview").json();
    assert_eq!(o["models"].as_array().unwrap().len(), 12);
    assert!(o["cached_cells"].as_u64().unwrap() > 0 && o["blob_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn pages_render_and_missing_cells_name_the_command_without_computing() {
    let env = demo();
    let s = serve(&env, &[]);
    for page in [
        "/",
        "/trend",
        "/matrix",
        "/pair?x=lm-xxl&y=vit-g",
        "/model/lm-large",
        "/sql",
    ] {
        let r = get(s.addr, page);
        assert_eq!(r.status, 200, "{page}: {}", r.text());
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{page}"
        );
        assert!(r.text().contains("/assets/app.js"), "{page}");
    }
    let cells = |s: &Server| {
        get(s.addr, "/api/overview").json()["cached_cells"]
            .as_u64()
            .unwrap()
    };
    let before = cells(&s);
    let page = get(s.addr, "/matrix?metric=cka");
    assert_eq!(page.status, 409);
    assert!(
        page.text()
            .contains(&format!("prh align --metric cka --x {X} --y {Y}")),
        "{}",
        page.text()
    );
    let api = get(s.addr, "/api/matrix?metric=cka").json();
    assert_eq!(
        api["command"],
        format!("prh align --metric cka --x {X} --y {Y}")
    );
    // A matrix of q-values needs a null, which a read-only server does not compute.
    let q = get(s.addr, "/api/matrix?metric=cka&values=q_value&null=20");
    assert_eq!(q.status, 409, "{}", q.text());
    assert!(
        q.json()["error"]
            .as_str()
            .unwrap()
            .contains("--values q_value --null 20"),
        "{}",
        q.text()
    );
    assert_eq!(cells(&s), before, "a read-only server computed cells");
    drop(s);

    // With --compute the same page fills the 36 model pairs (6 × 6 layer pairs each).
    let s = serve(&env, &["--compute"]);
    assert_eq!(get(s.addr, "/matrix?metric=cka").status, 200);
    assert_eq!(cells(&s), before + 36 * 36);
    let cli = env.json(&[
        "matrix", "--metric", "cka", "--x", X, "--y", Y, "--perf", "bpb", "--format", "json",
    ]);
    assert_eq!(
        get(s.addr, "/api/matrix?metric=cka").json(),
        cli,
        "ordered by bpb by default"
    );
    // The q-value matrix: the CLI's, and the page says what its cells hold.
    let cli = env.json(&[
        "matrix", "--metric", "cka", "--x", X, "--y", Y, "--perf", "bpb", "--values", "q_value",
        "--null", "20", "--format", "json",
    ]);
    assert_eq!(
        get(s.addr, "/api/matrix?metric=cka&values=q_value&null=20").json(),
        cli
    );
    assert!(
        cli.as_array()
            .unwrap()
            .iter()
            .all(|r| r["values"] == "q_value")
    );
    let page = get(s.addr, "/matrix?metric=cka&values=q_value&null=20").text();
    assert!(
        page.contains("of q_value from 20 permutations per pair"),
        "{page}"
    );
    let cal = get(s.addr, "/api/trend?calibrated=on&null=20").json();
    assert!(
        cal["calibrated"]["models"].as_array().unwrap().len() == 6,
        "{cal}"
    );
}

#[test]
fn the_version_changes_when_the_registry_does() {
    let env = demo();
    let s = serve(&env, &[]);
    let v = |s: &Server| {
        get(s.addr, "/api/version").json()["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let v0 = v(&s);
    assert_eq!(v(&s), v0);
    env.ok(&["score", "set", "--model", "vit-b", "top5=0.5"]);
    let v1 = v(&s);
    assert_ne!(v1, v0);
    env.ok(&[
        "align", "--metric", "cka", "--x", "lm-tiny", "--y", "vit-b", "-q",
    ]);
    assert_ne!(v(&s), v1);
    let m = get(s.addr, "/model/vit-b").text();
    assert!(m.contains(r#"data-name="top5" data-value="0.5""#), "{m}");
    // Chart results are remembered per version: within a second of a change at the latest
    // they follow it.
    let q = format!(
        "/api/trend?metric=mutual_knn&x={}&y={}&perf=bpb",
        enc(X),
        enc(Y)
    );
    let before = get(s.addr, &q).json();
    assert_eq!(get(s.addr, &q).json(), before);
    env.ok(&["score", "set", "--model", "lm-tiny", "bpb=0.3"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let after = get(s.addr, &q).json();
    assert_ne!(after, before);
    let cli = [
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
    assert_eq!(after, env.json(&cli));
}

#[test]
fn hostile_requests_are_refused_and_change_nothing() {
    let env = demo();
    let s = serve(&env, &[]);
    let snapshot = env.snapshot();
    for target in [
        "/assets/../Cargo.toml",
        "/assets/..%2F..%2FCargo.toml",
        "/assets/%2e%2e%2fcatalog.db",
        "/assets/..%5c..%5cCargo.toml",
        "/assets/app.js%00.css",
        "/../../etc/passwd",
        "/model/..%2F..%2Fetc%2Fpasswd",
    ] {
        let r = request(s.addr, "GET", target, &[], b"").unwrap();
        assert!(r.status == 404 || r.status == 400, "{target}: {}", r.status);
        assert!(
            !r.text().contains("[package]") && !r.text().contains("root:"),
            "{target}"
        );
    }
    assert_eq!(get(s.addr, "/assets/app.js").status, 200);
    for sql in [
        "DELETE FROM models",
        "DROP TABLE models",
        "CREATE TABLE x AS SELECT * FROM models",
        "ATTACH DATABASE 'x.db' AS x",
        "PRAGMA writable_schema = 1",
        "SELECT 1; DELETE FROM models",
        "SELECT * FROM read_csv('/etc/passwd')",
        "UPDATE models SET name = 'x'",
    ] {
        for api in ["/api/sql", "/api/sql.csv"] {
            let r = get(s.addr, &format!("{api}?q={}", enc(sql)));
            assert_eq!(r.status, 400, "{sql}: {}", r.text());
        }
    }
    // Not a writing method either.
    let r = request(s.addr, "POST", "/api/sql?q=SELECT%201", &[], b"").unwrap();
    assert_eq!(r.status, 405);
    // A huge result comes in pages of at most 1000 rows; the CSV has them all.
    let total = env.json(&[
        "query",
        "SELECT count(*) AS n FROM cells",
        "--format",
        "json",
    ])[0]["n"]
        .as_u64()
        .unwrap();
    assert!(total > 1000, "{total}");
    let page = get(
        s.addr,
        "/api/sql?q=SELECT%20*%20FROM%20cells&limit=100000&offset=1500",
    )
    .json();
    assert_eq!(page["rows"].as_array().unwrap().len(), 1000);
    assert_eq!(
        (page["total"].as_u64(), page["offset"].as_u64()),
        (Some(total), Some(1500))
    );
    let csv = get(s.addr, "/api/sql.csv?q=SELECT%20*%20FROM%20cells");
    assert_eq!(csv.text().lines().count() as u64, total + 1);
    assert_eq!(env.snapshot(), snapshot, "a request changed the registry");
}

#[test]
fn a_token_guards_every_request_and_is_required_beyond_loopback() {
    let env = demo();
    let e = env.fails(&["serve", "--bind", "0.0.0.0", "--port", "0"]);
    assert!(e.contains("--token"), "{e}");
    let s = serve(&env, &["--token", "s3cret-T0ken"]);
    for target in [
        "/",
        "/api/overview",
        "/assets/app.js",
        "/api/sql?q=SELECT%201",
    ] {
        assert_eq!(get(s.addr, target).status, 401, "{target}");
        let wrong = request(
            s.addr,
            "GET",
            target,
            &[("Authorization", "Bearer s3cret-T0kem")],
            b"",
        )
        .unwrap();
        assert_eq!(wrong.status, 401, "{target}");
        let ok = request(
            s.addr,
            "GET",
            target,
            &[("Authorization", "Bearer s3cret-T0ken")],
            b"",
        )
        .unwrap();
        assert_eq!(ok.status, 200, "{target}");
    }
    let r = get(s.addr, "/?token=s3cret-T0ken");
    assert_eq!(r.status, 200);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(cookie, "prh_token=s3cret-T0ken");
    let again = request(s.addr, "GET", "/api/overview", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(again.status, 200);
    assert!(!get(s.addr, "/api/overview").text().contains("s3cret"));
}

#[test]
fn only_requests_naming_this_server_are_answered() {
    let env = demo();
    let s = serve(&env, &["--allow-host", "Lab-Box"]);
    let own = s.addr.to_string();
    for (host, want) in [
        ("evil.example", 421),
        ("evil.example:8080", 421),
        ("127.0.0.1.evil.example", 421),
        ("localhost:1", 200),
        ("LOCALHOST", 200),
        ("[::1]:9", 200),
        ("lab-box:8080", 200),
        (own.as_str(), 200),
    ] {
        let r = request(s.addr, "GET", "/api/version", &[("Host", host)], b"").unwrap();
        assert_eq!(r.status, want, "Host: {host}: {}", r.text());
    }
    let r = request(s.addr, "GET", "/", &[("Host", "evil.example")], b"").unwrap();
    assert!(r.text().contains("--allow-host"), "{}", r.text());
}

#[test]
fn tokens_work_percent_encoded_in_links_cookies_and_any_case_bearer() {
    let env = demo();
    let token = "a+b&c%d#e f/ü";
    let s = serve(&env, &["--token", token]);
    let r = get(s.addr, &format!("/api/overview?token={}", enc(token)));
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap();
    let again = request(s.addr, "GET", "/api/overview", &[("Cookie", cookie)], b"").unwrap();
    assert_eq!(again.status, 200, "the cookie carries the token back");
    // Unescaped, its `+` reads as a space and `&` ends it: refused.
    assert_eq!(get(s.addr, "/api/overview?token=a+b&c%d").status, 401);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme}  {token} ");
        let r = request(
            s.addr,
            "GET",
            "/api/overview",
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{scheme}");
    }
    for bad in ["   ", " padded", ""] {
        let e = env.fails(&["serve", "--port", "0", "--token", bad]);
        assert!(e.contains("--token"), "{bad:?}: {e}");
    }
    let e = env.fails(&[
        "serve", "--bind", "0.0.0.0", "--port", "0", "--token", "   ",
    ]);
    assert!(e.contains("white space"), "{e}");
}

#[test]
fn compute_requests_are_bounded_and_missing_layers_are_named() {
    let env = demo();
    let s = serve(&env, &["--compute"]);
    let q = format!("metric=mutual_knn&x={}&y={}&perf=bpb", enc(X), enc(Y));
    for (p, name) in [
        ("calibrated=1&null=18446744073709551615", "null"),
        ("calibrated=1&null=1000000000", "null"),
        ("calibrated=1&null=0", "null"),
        ("k=0", "k"),
        ("k=100000", "k"),
    ] {
        let r = get(s.addr, &format!("/api/trend?{q}&{p}"));
        assert_eq!(r.status, 400, "{p}: {}", r.text());
        assert!(
            r.text().contains(name) && r.text().contains("range"),
            "{p}: {}",
            r.text()
        );
    }
    // A fixed layer pair the models lack: an error naming it, never a statistic over nothing.
    let r = get(s.addr, &format!("/api/trend?{q}&reduce=layers%3D999%2C999"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("layers=999,999"), "{}", r.text());
    let e = env.fails(&common::words(
        "trend --metric mutual_knn --x modality=language --y modality=vision --perf bpb --reduce layers=999,999",
    ));
    assert!(
        e.contains("layers=999,999") && e.contains("no such layer pair"),
        "{e}"
    );
    assert!(!e.contains('ρ') && !e.contains("spearman"), "{e}");
    // The server is still up and computing.
    assert_eq!(get(s.addr, &format!("/api/trend?{q}")).status, 200);
}

#[test]
fn sql_that_would_write_is_refused_on_the_command_line_as_in_the_console() {
    let env = demo();
    for sql in [
        "DELETE FROM models",
        "DROP TABLE models",
        "CREATE TABLE t AS SELECT * FROM models",
    ] {
        let e = env.fails(&["query", sql]);
        assert!(e.contains("read-only"), "{sql}: {e}");
    }
    // A runaway product is refused before anything is built, and the server stays up.
    let cross = "SELECT count(*) FROM reps a CROSS JOIN reps b CROSS JOIN reps c CROSS JOIN reps d CROSS JOIN (SELECT * FROM reps LIMIT 65) e";
    let e = env.fails(&["query", cross]);
    assert!(e.contains("budget"), "{e}");
    let s = serve(&env, &[]);
    let r = get(s.addr, &format!("/api/sql?q={}", enc(cross)));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("budget"), "{}", r.text());
    assert_eq!(get(s.addr, "/api/sql?q=SELECT%201").status, 200);
    let e = env.fails(&["query", "SELECT * FROM read_csv('/etc/passwd')"]);
    assert!(e.contains("registry's tables"), "{e}");
    assert!(
        env.ok(&[
            "query",
            "SELECT count(*) AS n FROM models",
            "--format",
            "csv"
        ])
        .contains("12")
    );
}

/// A keyed self-join of the demo's 90 layers `ways` times: 90^ways rows that the row estimate
/// (joins without a condition only) lets through.
fn keyed_join(ways: usize) -> String {
    let mut q = "SELECT count(*) AS n FROM reps t0".to_string();
    for i in 1..ways {
        q.push_str(&format!(" JOIN reps t{i} ON t0.n = t{i}.n"));
    }
    q
}

#[test]
fn a_console_query_past_the_sql_budget_is_stopped_and_the_server_goes_on() {
    // The row estimate catches joins without a condition; a keyed join that explodes got
    // through, and the server built it in its own memory: with the server's address space
    // capped at 4 GiB (so as not to take the machine with it), the 5-way join below aborted
    // the server before (the request failed, nothing answered after). Now each console query
    // runs in a child prh under --sql-mib and --sql-seconds.
    let env = demo();
    let s = serve(&env, &["--sql-seconds", "2", "--sql-mib", "1024"]);
    let capped = std::process::Command::new("prlimit")
        .args(["--pid", &s.pid().to_string(), "--as=4294967296"])
        .status()
        .unwrap();
    assert!(capped.success());
    let small = "SELECT count(*) AS n FROM reps";
    let r = get(s.addr, &format!("/api/sql?q={}", enc(small)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"], serde_json::json!([[90]]));
    let big = keyed_join(5);
    for path in ["/api/sql", "/api/sql.csv"] {
        let t = std::time::Instant::now();
        let r = get(s.addr, &format!("{path}?q={}", enc(&big)));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["kind"], "invalid_input");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("more memory than the SQL budget of 1024 MiB"),
            "{}",
            r.text()
        );
        assert!(r.json()["hint"].as_str().unwrap().contains("--sql-mib"));
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        // The server goes on, and so does the console.
        assert_eq!(get(s.addr, "/api/overview").status, 200);
        let r = get(s.addr, &format!("/api/sql?q={}", enc(small)));
        assert_eq!(r.json()["rows"], serde_json::json!([[90]]), "{}", r.text());
    }
    // The console's own errors still come back with their kind and hint.
    let r = get(s.addr, "/api/sql?q=DELETE%20FROM%20models");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("read-only"), "{}", r.text());
    let r = get(s.addr, "/api/sql?q=SELECT%20nope%20FROM%20models");
    assert_eq!(r.status, 400, "{}", r.text());
    drop(s);
    // Time: the 4-way join fits 4 GiB but takes seconds (65,610,000 rows).
    let s = serve(&env, &["--sql-seconds", "1", "--sql-mib", "4096"]);
    let t = std::time::Instant::now();
    let r = get(s.addr, &format!("/api/sql?q={}", enc(&keyed_join(4))));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("longer than the SQL budget of 1 s"),
        "{}",
        r.text()
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(get(s.addr, "/api/overview").status, 200);
    // prh query on the command line has no budget: the same query answers there.
    let n = env.ok(&["query", &keyed_join(3), "--format", "csv"]);
    assert!(n.contains("729000"), "{n}");
}

#[test]
fn running_out_of_file_descriptors_does_not_kill_the_server() {
    let env = demo();
    let s = serve(&env, &[]);
    assert_eq!(get(s.addr, "/api/version").status, 200);
    // Lower the running server's descriptor limit, then hold more idle connections than it.
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &s.pid().to_string(), "--nofile=48:48"])
        .status()
        .unwrap();
    assert!(st.success());
    // Connect until the backlog is full too (a connect then times out instead of waiting for
    // the kernel's SYN retries).
    let idle: Vec<_> = (0..200)
        .map_while(|_| {
            std::net::TcpStream::connect_timeout(&s.addr, std::time::Duration::from_millis(300))
                .ok()
        })
        .collect();
    assert!(idle.len() > 48, "only {} connections", idle.len());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let alive = std::path::Path::new(&format!("/proc/{}", s.pid())).exists()
        && std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
            .is_ok_and(|st| !st.contains("State:\tZ"));
    assert!(alive, "the server died when accept failed (EMFILE)");
    drop(idle);
    // Once the idle connections are gone it answers again (the listener backs off and retries).
    let t = std::time::Instant::now();
    loop {
        if request(s.addr, "GET", "/api/version", &[], b"").is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "no answer after the idle connections closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn every_metric_option_reaches_the_dashboard() {
    // Before the one parser, the dashboard read `metric` and `k` only: kernel, sigma, cca_dim,
    // ridge and ties were dropped, and the page showed the default metric's numbers.
    let env = Env::new();
    env.ok(&["init"]);
    common::two_models(&env, &[48, 2, 16]);
    let s = serve(&env, &["--compute"]);
    for (metric, query, flags) in [
        ("cka", "kernel=rbf&sigma=2.5", "--kernel rbf --sigma 2.5"),
        ("svcca", "cca_dim=4", "--cca-dim 4"),
        ("linear_r2", "ridge=0.25", "--ridge 0.25"),
        ("mutual_knn", "ties=expected&k=5", "--ties expected --k 5"),
    ] {
        let api = get(
            s.addr,
            &format!("/api/matrix?metric={metric}&{query}&x=l1&y=v1"),
        );
        assert_eq!(api.status, 200, "{metric} {query}: {}", api.text());
        let mut args = vec!["matrix", "--metric", metric, "--x", "l1", "--y", "v1"];
        args.extend(flags.split(' '));
        args.extend(["--compute", "--format", "json"]);
        let cli = env.json(&args);
        assert_eq!(api.json(), cli, "{metric} {query}");
        let default = env.json(&[
            "matrix",
            "--metric",
            metric,
            "--x",
            "l1",
            "--y",
            "v1",
            "--compute",
            "--format",
            "json",
        ]);
        assert_ne!(default, cli, "{flags} changed nothing");
    }
    let bad = get(s.addr, "/api/matrix?metric=cka&kernel=poly&x=l1&y=v1");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("kernel must be linear or rbf"),
        "{}",
        bad.text()
    );
}

#[test]
fn the_matrix_orders_each_side_by_its_own_score_and_has_a_legend() {
    // Before: "ordered by bpb" ordered only the rows; the vision columns (no bpb) stayed
    // alphabetical, and the heatmap had no colour scale.
    let env = demo();
    let s = serve(&env, &[]);
    let page = get(
        s.addr,
        &format!(
            "/matrix?metric=mutual_knn&x={}&y={}&perf=bpb",
            enc(X),
            enc(Y)
        ),
    );
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(
        html.contains("rows ordered by bpb, columns by accuracy (worst to best)"),
        "{html}"
    );
    // The columns in order of the vision models' accuracy, worst first.
    let scores = env.json(&["ls", "scores", "--format", "json"]);
    let mut acc: Vec<(f64, String)> = scores
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "accuracy")
        .map(|r| {
            (
                r["value"].as_f64().unwrap(),
                r["model"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    acc.sort_by(|a, b| a.0.total_cmp(&b.0));
    let want: Vec<String> = acc.into_iter().map(|(_, m)| m).collect();
    let first_row = html
        .split("data-row=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let cols: Vec<&str> = html
        .split(&format!("data-row=\"{first_row}\" data-col=\""))
        .skip(1)
        .map(|p| p.split('"').next().unwrap())
        .collect();
    assert_eq!(cols, want, "columns not ordered by accuracy");
    let mut alphabetical = want.clone();
    alphabetical.sort();
    assert_ne!(
        want, alphabetical,
        "the demo's accuracy order is alphabetical: no proof"
    );
    // A colour legend with the lowest and highest value shown.
    assert!(
        html.contains(r#"data-legend="low""#) && html.contains(r#"data-legend="high""#),
        "no legend"
    );
}

#[test]
fn a_second_computation_is_answered_503_while_one_runs_and_reads_go_on() {
    // The server computes one view at a time; a compute request that finds the slot taken
    // waits --compute-wait seconds, then is told to come back (503, kind unavailable,
    // Retry-After) — this path had no test before. Reads are answered meanwhile.
    let env = demo();
    let s = serve(&env, &["--compute", "--compute-wait", "0"]);
    let addr = s.addr;
    // A long computation: the calibrated trend with 10,000 permutations of 36 model pairs.
    let long = std::thread::spawn(move || {
        let _ = request(
            addr,
            "GET",
            &format!(
                "/api/trend?calibrated=on&null=10000&x={}&y={}",
                enc(X),
                enc(Y)
            ),
            &[],
            b"",
        );
    });
    // Probe with a metric not cached yet each time: a probe that wins the slot before the long
    // request computes its own metric (and caches it), so the next probe uses another one.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut busy = None;
    for metric in [
        "cka",
        "unbiased_cka",
        "cknna",
        "svcca",
        "jaccard_knn",
        "cycle_knn",
        "lcs_knn",
        "edit_distance_knn",
        "rsa",
        "procrustes",
    ] {
        if long.is_finished() {
            break;
        }
        let r = get(addr, &format!("/api/matrix?metric={metric}"));
        if r.status == 503 {
            busy = Some(r);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let busy = busy.expect("no 503 while the long computation ran");
    assert_eq!(busy.json()["kind"], "unavailable", "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("5"));
    assert!(
        busy.json()["hint"]
            .as_str()
            .unwrap()
            .contains("try again later")
    );
    // Reads go on while it computes.
    assert_eq!(get(addr, "/api/overview").status, 200);
    assert!(
        !long.is_finished(),
        "the long computation ended: the proof above is void"
    );
    drop(s);
    let _ = long.join();
}

#[test]
fn the_dashboard_shows_either_clamp_convention_and_says_which() {
    // platonic-rep's two clamp conventions (--clamp-rule): a page or API call names one with
    // clamp_rule=, serves that convention's cells only, and says what fills the missing ones.
    let env = demo();
    let s = serve(&env, &[]);
    let q = format!(
        "metric=mutual_knn&x={}&y={}&perf=bpb&clamp_rule=sample-mean",
        enc(X),
        enc(Y)
    );
    let missing = get(s.addr, &format!("/api/matrix?{q}"));
    assert_eq!(missing.status, 409, "{}", missing.text());
    let command = missing.json()["command"].as_str().unwrap().to_string();
    assert!(command.contains("--clamp-rule sample-mean"), "{command}");
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    env.ok(&words);
    let cli = env.json(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        X,
        "--y",
        Y,
        "--clamp-rule",
        "sample-mean",
        "--perf",
        "bpb",
        "--format",
        "json",
    ]);
    let api = get(s.addr, &format!("/api/matrix?{q}"));
    assert_eq!(api.status, 200, "{}", api.text());
    assert_eq!(api.json(), cli);
    let exact = get(
        s.addr,
        &format!(
            "/api/matrix?metric=mutual_knn&x={}&y={}&perf=bpb",
            enc(X),
            enc(Y)
        ),
    );
    assert_ne!(
        exact.json(),
        cli,
        "the demo's exact cells are other numbers"
    );
    let page = get(s.addr, &format!("/matrix?{q}"));
    assert!(
        page.text()
            .contains("<option selected>sample-mean</option>"),
        "the page says which convention it shows"
    );
    let bad = get(s.addr, &format!("/api/matrix?{q}x"));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("clamp_rule"), "{}", bad.text());
}

#[test]
fn a_computation_whose_client_left_stops_and_frees_the_slot() {
    // A client that asks for a long computation and leaves: before, the computation ran to its
    // end (52 s for this one with a warm build, on 2 cores), holding the server's one
    // computation slot; every other compute request got 503 meanwhile. Now the handler's
    // dropped future marks the job abandoned and the sweep stops at its next cell, graph or
    // block of draws, keeping the draws it took.
    use std::io::Write;
    let env = demo();
    let s = serve(&env, &["--compute", "--compute-wait", "0"]);
    let addr = s.addr;
    let path = format!(
        "/api/trend?calibrated=on&null=10000&metric=mutual_knn&x={}&y={}",
        enc(X),
        enc(Y)
    );
    let ask = || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        c.set_nonblocking(true).unwrap();
        c
    };
    let mut leaving = ask();
    // Wait until the computation holds the slot: a view not cached yet is then refused at
    // once. A probe that wins the slot first computes its metric (and caches it), so each 200
    // moves the probe on to a metric not cached yet; the long request, refused meanwhile
    // (it has an answer), is asked again.
    let mut uncached = [
        "cka",
        "unbiased_cka",
        "cknna",
        "svcca",
        "jaccard_knn",
        "cycle_knn",
    ]
    .into_iter()
    .peekable();
    let mut probe = || {
        let metric = *uncached.peek().expect("a metric not cached yet");
        let status = get(addr, &format!("/api/matrix?metric={metric}")).status;
        if status == 200 {
            uncached.next();
        }
        status
    };
    let started = std::time::Instant::now();
    while probe() != 503 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the long computation never took the slot"
        );
        if leaving.peek(&mut [0u8]).is_ok() {
            leaving = ask();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(probe(), 503, "the long computation ended by itself");
    drop(leaving);
    let left = std::time::Instant::now();
    // The slot is free again within a few seconds: an uncached matrix is computed (200).
    loop {
        let status = probe();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            left.elapsed() < std::time::Duration::from_secs(10),
            "the slot is still held {} s after the client left",
            left.elapsed().as_secs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "slot free {} ms after the client left",
        left.elapsed().as_millis()
    );
    // The draws taken before it stopped were kept (the same request later extends them), and
    // it did stop: fewer than the 36 pairs × 10,000 draws asked for.
    drop(s);
    let db = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    let (samples, draws): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(sum(length(vals)), 0) / 8 FROM null_samples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        samples > 0 && draws < 36 * 10_000,
        "{samples} samples, {draws} draws kept"
    );
}

#[test]
fn idle_connections_cannot_keep_a_client_out() {
    // 1,100 connections that never send a byte hold every one of the server's 1,024 places
    // (the header deadline is 600 s here, so it does not free them). Before, every new
    // connection was then closed unanswered; now the longest-idle one is closed to make room.
    // A keep-alive connection idle after its answer is closed after the header timeout too.
    use std::io::{Read, Write};
    let env = Env::new();
    env.ok(&["init"]);
    let s = serve(&env, &["--header-timeout", "600"]);
    let idle: Vec<std::net::TcpStream> = (0..1100)
        .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
        .collect();
    // Let the server accept them all (the backlog drains into the cap).
    std::thread::sleep(std::time::Duration::from_millis(500));
    for i in 0..20 {
        let r = request(s.addr, "GET", "/api/overview", &[], b"")
            .unwrap_or_else(|e| panic!("request {i} with every place idle: {e}"));
        assert_eq!(r.status, 200);
    }
    drop(idle);
    drop(s);
    let s = serve(&env, &["--header-timeout", "1"]);
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = [0u8; 12];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
    // Kept alive, then idle: closed after about 1 s (end of stream), not held.
    let t = std::time::Instant::now();
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    assert!(end.is_ok(), "{end:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "the idle keep-alive connection was held {:?}",
        t.elapsed()
    );
}

#[test]
fn a_client_that_trickles_its_header_is_closed_and_others_are_served() {
    // Slow loris: 40 connections each send a header line every 200 ms and never the blank line
    // that ends the head. Before --header-timeout (axum sets no timer, so hyper's own header
    // timeout never ran), they stayed open for as long as the client kept trickling.
    use std::io::{Read, Write};
    let env = Env::new();
    env.ok(&["init"]);
    let s = serve(&env, &["--header-timeout", "1"]);
    let started = std::time::Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut c =
                std::net::TcpStream::connect_timeout(&s.addr, std::time::Duration::from_secs(5))
                    .unwrap();
            c.write_all(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            c
        })
        .collect();
    // Trickle for 3 s: the server must cut every one of them after about 1 s.
    let mut cut_after = vec![None; slow.len()];
    while started.elapsed() < std::time::Duration::from_secs(3) {
        for (i, c) in slow.iter_mut().enumerate() {
            if cut_after[i].is_none() && c.write_all(b"X-Slow: 1\r\n").is_err() {
                cut_after[i] = Some(started.elapsed());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Every one is closed by the server (end of stream or reset), none still open.
    for (i, c) in slow.iter_mut().enumerate() {
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => {}
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connection {i} still open after 3 s of trickling: {e}"),
        }
    }
    // A well-behaved client is served all along.
    assert_eq!(get(s.addr, "/api/overview").status, 200);
}
