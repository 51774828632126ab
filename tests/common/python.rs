//! The Python test environment: a virtualenv under the target directory (made once) with the
//! test dependencies from PyPI (moto's S3 server among them, for tests/s3.rs), and the package built into it by `maturin develop` with this
//! build's profile and target directory (prh itself is not compiled twice).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &[
    "maturin>=1.5,<2",
    "pytest",
    "pytest-timeout",
    "numpy",
    "polars",
    "ml_dtypes",
    "scikit-learn",
    "moto[server]",
];

pub fn run(cmd: &mut Command, what: &str) {
    let st = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(st.success(), "{what} failed ({st})");
}

/// The test virtualenv, created and filled when missing.
pub fn venv(tmp: &Path) -> PathBuf {
    let dir = tmp.join("pyvenv");
    let ready = dir.join(".prh-ready");
    // One maker at a time: tests in parallel (threads and test binaries alike) wait here while
    // the first makes it, instead of running a pip that is not there yet. The same flock prh
    // takes on a registry directory (on `tmp/lock`); released when `_lock` is dropped.
    std::fs::create_dir_all(tmp).unwrap();
    let _lock = prh::lock::RegistryLock::exclusive(tmp).unwrap();
    // Made again when the package list changed.
    let want = PACKAGES.join("\n");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(want.as_str()) {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            Command::new(&python).args(["-m", "venv"]).arg(&dir),
            "python3 -m venv",
        );
        run(
            Command::new(dir.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .args(PACKAGES),
            "pip install (test dependencies from PyPI)",
        );
        std::fs::write(&ready, want).unwrap();
    }
    dir
}

/// The virtualenv with the package built from this tree (optimised with `release`); returns
/// (venv, PATH with its bin/).
pub fn develop(root: &Path, tmp: &Path, release: bool) -> (PathBuf, String) {
    let venv = venv(tmp);
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(
        Command::new(venv.join("bin/maturin"))
            .args(["develop", "--quiet", "--manifest-path"])
            .arg(root.join("python/Cargo.toml"))
            .args(release.then_some("--release"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", &path),
        "maturin develop",
    );
    (venv, path)
}
