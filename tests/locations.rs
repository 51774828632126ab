//! A registry whose catalog and blobs live elsewhere (`prh init --catalog --blobs`), found by
//! every later command through its config.json, and overridden by PRH_CATALOG / PRH_BLOBS.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, noise, write_npy};

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn url(scheme: &str, p: &Path) -> String {
    format!("{scheme}://{}", p.display())
}

fn ingest(env: &Env, model: &str, seed: u64) {
    let f = env.path(&format!("{model}.npy"));
    write_npy(&f, &[40, 3, 6], &noise(40 * 3 * 6, seed));
    env.ok(&[
        "ingest",
        f.to_str().unwrap(),
        "--model",
        model,
        "--dataset",
        "d",
        "--modality",
        if model.starts_with('l') {
            "language"
        } else {
            "vision"
        },
    ]);
}

#[test]
fn parts_elsewhere_are_found_by_every_command() {
    let env = Env::new();
    let (cat, big) = (env.path("elsewhere/catalog.db"), env.path("big-disk"));
    env.ok(&[
        "init",
        "--catalog",
        &url("sqlite", &cat),
        "--blobs",
        &url("file", &big),
    ]);
    ingest(&env, "lm", 1);
    ingest(&env, "vit", 2);
    // The registry directory holds its config (and lock/staging), not the parts.
    let reg = env.reg();
    assert!(reg.join("config.json").is_file());
    assert!(!reg.join("catalog.db").exists());
    assert!(cat.is_file());
    let blobs = files(&big.join("blobs"));
    assert_eq!(blobs.len(), 6, "{blobs:?}");
    assert!(files(&reg.join("blobs")).is_empty());
    let config = std::fs::read_to_string(reg.join("config.json")).unwrap();
    assert!(config.contains(&url("file", &big)), "{config}");
    // Sweeps, listings, verify and a round trip through a bundle all work on it.
    let out = env.json(&[
        "align", "--x", "lm", "--y", "vit", "--metric", "cka", "--format", "json",
    ]);
    assert_eq!(out.as_array().unwrap().len(), 1);
    let v = env.json(&["verify", "--recompute", "4", "--format", "json"]);
    assert_eq!(v["blobs_checked"], 6);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    let bundle = env.path("zoo.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["init"]);
    other.ok(&["import", bundle.to_str().unwrap()]);
    assert_eq!(files(&other.reg().join("blobs")).len(), 6);
    // Re-pointing an existing registry is refused, nothing changed.
    let e = env.fails(&["init", "--blobs", &url("file", &env.path("other"))]);
    assert!(e.contains("already a registry"), "{e}");
    assert_eq!(
        std::fs::read_to_string(reg.join("config.json")).unwrap(),
        config
    );
}

#[test]
fn the_environment_overrides_the_config_for_one_command() {
    let env = Env::new();
    env.ok(&["init"]);
    ingest(&env, "lm", 3);
    // A copy of the blobs on another disk serves them; an empty one does not.
    let copy = env.path("copy");
    for f in files(&env.reg().join("blobs")) {
        let rel = f.strip_prefix(env.reg()).unwrap();
        std::fs::create_dir_all(copy.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&f, copy.join(rel)).unwrap();
    }
    std::fs::create_dir_all(env.path("empty/blobs")).unwrap();
    let verify = |blobs: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_prh"))
            .args(["--registry", env.reg().to_str().unwrap()])
            .args(["verify", "--format", "json"])
            .env_remove("PRH_CATALOG")
            .env("PRH_BLOBS", url("file", blobs))
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let ok = verify(&copy);
    assert!(ok["problems"].as_array().unwrap().is_empty(), "{ok}");
    let missing = verify(&env.path("empty"));
    assert_eq!(
        missing["problems"].as_array().unwrap().len(),
        3,
        "{missing}"
    );
}

#[test]
fn unsupported_or_secret_urls_are_refused_before_anything_is_written() {
    let env = Env::new();
    let e = env.fails(&["init", "--catalog", "postgres://ann:hunter2@db.lab/prh"]);
    assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
    let e = env.fails(&["init", "--blobs", "gs://bucket/prefix"]);
    assert!(e.contains("S3-compatible object stores only"), "{e}");
    let e = env.fails(&["init", "--blobs", "s3://AKIA:wJalr@bucket/prefix"]);
    assert!(e.contains("password") && !e.contains("wJalr"), "{e}");
    let e = env.fails(&["init", "--blobs", "file://relative/dir"]);
    assert!(e.contains("absolute path"), "{e}");
    assert!(
        !env.reg().exists(),
        "a refused init created {}",
        env.reg().display()
    );
}

#[test]
fn a_damaged_config_is_named_in_one_line_and_left_as_it_is() {
    let env = Env::new();
    env.ok(&["init"]);
    let config = env.reg().join("config.json");
    for bad in ["{\"catalog\": 7}", "{\"blob\": \"file:///x\"}", "not json"] {
        std::fs::write(&config, bad).unwrap();
        let e = env.fails(&["ls", "models"]);
        assert!(
            e.contains("config.json") && e.contains("not a prh registry config"),
            "{e}"
        );
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), bad);
    }
    std::fs::remove_file(&config).unwrap();
    env.ok(&["ls", "models"]);
}
