//! The Python package's logging speed: `reg.log` of a 1024 × 24 × 1024 f32 array against
//! `np.save` of the same array (python/bench/log_vs_save.py), in the test virtualenv with the
//! package built from this tree. Run: `cargo bench --bench python`.

#[path = "../tests/common/python.rs"]
mod python;

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (venv, path) = python::develop(root, Path::new(env!("CARGO_TARGET_TMPDIR")), true);
    python::run(
        Command::new(venv.join("bin/python"))
            .arg(root.join("python/bench/log_vs_save.py"))
            .env("PATH", &path)
            .env("VIRTUAL_ENV", &venv),
        "python/bench/log_vs_save.py",
    );
}
