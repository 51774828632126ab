//! The Python package's pytest suite (python/tests), run by `cargo test`.
//!
//! Set-up, done here so that the README's one test command covers it: a virtualenv under the
//! target directory with maturin, pytest, numpy, polars, ml_dtypes and scikit-learn from PyPI,
//! and the package built into it (tests/common/python.rs). The tests drive the real `prh`
//! binary beside the package (PRH_BIN).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::python::{develop, run};

#[test]
fn pytest_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (venv, path) = develop(root, Path::new(env!("CARGO_TARGET_TMPDIR")), false);
    run(
        Command::new(venv.join("bin/python"))
            // A hung test (a deadlock, say) fails after 300 s instead of stalling the suite.
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--timeout=300",
            ])
            .arg(root.join("python/tests"))
            .env("PRH_BIN", env!("CARGO_BIN_EXE_prh"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", &path)
            .env_remove("PRH_REGISTRY"),
        "pytest python/tests",
    );
}
