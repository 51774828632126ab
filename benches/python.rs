//! The Python package's logging speed: `reg.log` of a 1024 × 24 × 1024 f32 array against
//! `np.save` of the same array (python/bench/log_vs_save.py), in the test virtualenv with the
//! package built from this tree. Run: `cargo bench --bench python`.

#[path = "../tests/common/python.rs"]
mod python;

use std::path::Path;
use std::process::Command;

mod common;

fn main() {
    common::announce("python");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A smoke run uses the tests' debug build of the package (a release build takes minutes).
    let release = !common::smoke();
    let (venv, path) = python::develop(root, Path::new(env!("CARGO_TARGET_TMPDIR")), release);
    python::run(
        Command::new(venv.join("bin/python"))
            .arg(root.join("python/bench/log_vs_save.py"))
            .env("PATH", &path)
            .env("VIRTUAL_ENV", &venv)
            .env("PRH_BENCH_SMOKE", if release { "" } else { "1" }),
        "python/bench/log_vs_save.py",
    );
}
