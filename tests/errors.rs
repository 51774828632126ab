//! Every error kind, produced the way a user meets it, answered by its exit code on the
//! command line and its status in `prh serve` (the Python classes are in
//! python/tests/test_api.py). The table in the README is this file.

use crate::common;

use std::net::TcpListener;
use std::path::Path;

use common::Env;
use common::http::{Server, get};

/// Asserts `prh args` fails with `code`, one `error:` line naming `want`, and returns stderr.
fn exits(env: &Env, code: i32, want: &str, args: &[&str]) -> String {
    let err = env.fails_with(code, args);
    said(&err, want)
}

/// `prh --registry <reg> args` (a registry of its own) fails with `code` naming `want`.
fn exits_at(reg: &Path, code: i32, want: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(reg)
        .args(args)
        .env_remove("PRH_REGISTRY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "prh {args:?}: {err}");
    said(&err, want)
}

fn said(err: &str, want: &str) -> String {
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    err.to_string()
}

#[test]
fn each_error_kind_has_its_exit_code() {
    let env = Env::new();
    // 3 not found: no registry there, with the command that makes one as a hint.
    let err = exits(&env, 3, "is not a prh registry", &["ls", "models"]);
    assert!(err.contains("\nhint: create one with `prh init "), "{err}");
    env.ok(&["init"]);
    common::two_models(&env, &[40, 2, 8]);

    // 2 invalid input: an out-of-range option names the value.
    exits(
        &env,
        2,
        "--clamp-q must be in (0, 1], got 1.5",
        &[
            "align",
            "--x",
            "l1",
            "--y",
            "v1",
            "--metric",
            "cka",
            "--clamp-q",
            "1.5",
        ],
    );
    // ... and a usage error (clap) is 2 as well.
    assert_eq!(env.prh(&["align", "--no-such-flag"]).status.code(), Some(2));
    // 3 not found: a model that is not there.
    exits(
        &env,
        3,
        "no model named nosuch",
        &["align", "--metric", "cka", "--x", "nosuch", "--y", "v1"],
    );
    // 4 conflict: a dataset name taken with another n.
    exits(
        &env,
        4,
        "dataset d already exists with n = 40, not 41",
        &["dataset", "add", "d", "--n", "41"],
    );
    // 4 conflict: a query whose cells are missing names the command that fills them.
    let err = exits(
        &env,
        4,
        "no complete cached alignment",
        &["matrix", "--metric", "cka", "--x", "l1", "--y", "v1"],
    );
    assert!(
        err.contains("hint: fill them with `prh align --metric cka --x l1 --y v1`"),
        "{err}"
    );
    // 5 unsupported: an object store this build does not speak.
    exits_at(
        &env.path("gcs"),
        5,
        "S3-compatible object stores only",
        &["init", "--blobs", "gs://bucket/prefix"],
    );
    // 75 unavailable: a PostgreSQL server that is not listening (a free loopback port).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://prh@127.0.0.1:{port}/prh");
    exits_at(
        &env.path("pg"),
        75,
        "cannot connect",
        &["init", "--catalog", &url],
    );
    // 1 failed: the system refuses (a registry path under a regular file).
    std::fs::write(env.path("file"), b"x").unwrap();
    exits_at(&env.path("file/reg"), 1, "file", &["init"]);
    // 6 corrupt: a blob altered on disk; verify reports it, and a computation refuses it.
    // 130 interrupted: an import stopped at its deadline (0 s), rolled back.
    let bundle = env.path("b.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["init"]);
    let err = exits(
        &other,
        130,
        "import took longer than 0 s and was rolled back",
        &["import", bundle.to_str().unwrap(), "--max-seconds", "0"],
    );
    assert!(err.contains("hint: give a larger --max-seconds"), "{err}");
    assert!(
        other
            .json(&["ls", "models", "--format", "json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    common::damage_blob(&env, "l1");
    exits(&env, 6, "verify found 1 problem(s)", &["verify"]);
    exits(
        &env,
        6,
        "is corrupt",
        &["align", "--metric", "cka", "--x", "l1", "--y", "v1"],
    );
}

#[test]
fn each_error_kind_has_its_http_status() {
    let env = Env::new();
    env.ok(&["init"]);
    common::two_models(&env, &[40, 2, 8]);
    let s = Server::start(Path::new(env!("CARGO_BIN_EXE_prh")), &env.reg(), &[]);
    let answer = |target: &str, status: u16, kind: &str| {
        let r = get(s.addr, target);
        assert_eq!(r.status, status, "{target}: {}", r.text());
        let v = r.json();
        assert_eq!(v["kind"], kind, "{target}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        v
    };
    answer("/api/model/nosuch", 404, "not_found");
    answer("/api/matrix?metric=nosuch", 400, "invalid_input");
    let v = answer("/api/matrix?metric=cka", 409, "conflict");
    assert_eq!(
        v["command"],
        "prh align --metric cka --x modality=language --y modality=vision"
    );
    // Before the kinds, a catalog failure on the model page was a 404 and an unknown model in a
    // computation a 400; the page answers by kind now too.
    let page = get(s.addr, "/model/nosuch");
    assert_eq!(page.status, 404, "{}", page.text());
    drop(s);

    // A damaged blob met by a computing server: corrupt data is the server's failure (500),
    // not the request's.
    common::damage_blob(&env, "l1");
    let s = Server::start(
        Path::new(env!("CARGO_BIN_EXE_prh")),
        &env.reg(),
        &["--compute"],
    );
    let r = get(s.addr, "/api/matrix?metric=cka");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["kind"], "corrupt", "{}", r.text());
}
