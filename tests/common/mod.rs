//! Test harness: temp registries and the real `prh` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary directory with a registry path inside it.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Environment given to every prh this Env runs (PGPASSWORD, AWS_*, ...).
    pub envs: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            envs: Vec::new(),
        }
    }

    /// The registry path (created by `init`).
    pub fn reg(&self) -> PathBuf {
        self.dir.path().join("reg")
    }

    /// A path inside the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs prh with `--registry <reg>` and returns its output.
    pub fn prh(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_prh"))
            .arg("--registry")
            .arg(self.reg())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("PRH_REGISTRY")
            .env_remove("PRH_CATALOG")
            .env_remove("PRH_BLOBS")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// Runs prh, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.prh(args);
        assert!(
            o.status.success(),
            "prh {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs prh, asserts it failed with one of the documented exit codes of a classified
    /// error (never 70, an internal error), returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.prh(args);
        let code = o.status.code();
        assert!(
            matches!(code, Some(1..=6 | 75 | 130)),
            "prh {args:?} should fail with a documented exit code, got {code:?}; stdout: {}; stderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    /// Runs prh, asserts it failed with exit code `code`, returns stderr.
    pub fn fails_with(&self, code: i32, args: &[&str]) -> String {
        let o = self.prh(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "prh {args:?}: stdout: {}; stderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    /// Runs prh and parses stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Everything observable about the registry: every file under blobs/ and tmp/ with its
    /// size, and every catalog row (through the CLI's JSON listings).
    pub fn snapshot(&self) -> String {
        let mut files = Vec::new();
        for sub in ["blobs", "tmp"] {
            walk(&self.reg().join(sub), &mut files);
        }
        files.sort();
        let mut s = files.join("\n");
        for what in ["models", "checkpoints", "reps", "scores", "datasets"] {
            s.push('\n');
            s.push_str(&self.ok(&["ls", what, "--format", "json"]));
        }
        s
    }
}

/// Every file under `dir` with its size, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(format!("{} {}", p.display(), e.metadata().unwrap().len()));
        }
    }
}

/// Cells in the registry's cache, read through prh (its catalog waits while other processes
/// write).
pub fn cached_cells(env: &Env) -> i64 {
    open(env).catalog.cell_counts().unwrap().0 as i64
}

/// Flips one bit near the end of the blob of `model`'s first layer, behind prh's back (a disk
/// fault); returns the blob's hash.
pub fn damage_blob(env: &Env, model: &str) -> String {
    let reps = env.json(&["ls", "reps", "--model", model, "--format", "json"]);
    let h = reps[0]["hash"].as_str().unwrap().to_string();
    let blob = env.reg().join("blobs").join(&h[..2]).join(&h);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x10;
    std::fs::write(&blob, &bytes).unwrap();
    h
}

/// The model names `prh ls models` lists, in its order.
pub fn model_names(env: &Env) -> Vec<String> {
    let models = env.json(&["ls", "models", "--format", "json"]);
    models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// The registry of `env`, opened through prh's library (for assertions on its catalog).
pub fn open(env: &Env) -> prh::registry::Registry {
    prh::registry::Registry::open(&env.reg()).unwrap()
}

/// Sum of `cells_computed` over an `align --format json` result.
pub fn cells_computed(v: &serde_json::Value) -> u64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells_computed"].as_u64().unwrap())
        .sum()
}

/// A command line given as one string, split at whitespace (for arguments without spaces).
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Writes an f32 .npy with the given shape.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    std::fs::write(path, prh::formats::npy::encode_f32(shape, data)).unwrap();
}

/// Ingests each (file, model, modality) as a new model on `dataset`.
pub fn ingest_all(env: &Env, dataset: &str, files: &[(PathBuf, &str, &str)]) {
    for (path, model, modality) in files {
        env.ok(&[
            "ingest",
            path.to_str().unwrap(),
            "--model",
            model,
            "--dataset",
            dataset,
            "--modality",
            modality,
        ]);
    }
}

/// A new registry holding the reference pipeline: `pipeline_x.npy` as model x (language) and
/// `pipeline_y.npy` as model y (vision), on dataset `ref`.
pub fn pipeline_env() -> Env {
    let env = Env::new();
    env.ok(&["init"]);
    ingest_all(
        &env,
        "ref",
        &[
            (fixture("reference/pipeline_x.npy"), "x", "language"),
            (fixture("reference/pipeline_y.npy"), "y", "vision"),
        ],
    );
    env
}

/// Ingests two models of independent noise, `l1` (language) and `v1` (vision), with features
/// of `shape` (n × L × d) on dataset `d`.
pub fn two_models(env: &Env, shape: &[usize]) {
    let len = shape.iter().product();
    let mut files = Vec::new();
    for (name, modality, seed) in [("l1", "language", 1), ("v1", "vision", 2)] {
        let p = env.path(&format!("{name}.npy"));
        write_npy(&p, shape, &noise(len, seed));
        files.push((p, name, modality));
    }
    ingest_all(env, "d", &files);
}

/// Deterministic pseudo-random f32 data.
pub fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut r = prh::rng::Rng::new(seed);
    (0..len).map(|_| r.normal() as f32).collect()
}

/// Mutates `base` in one of several ways (bytes, truncation, huge numbers, splices, bit flips).
pub fn mutate(base: &[u8], rng: &mut prh::rng::Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len().min(4096));
                b[i] = rng.next_u64() as u8;
            }
        }
        1 => b.truncate(rng.below(b.len())),
        2 => {
            let i = rng.below(b.len().min(1024).saturating_sub(8).max(1));
            let v = (rng.next_u64() >> rng.below(40)).to_le_bytes();
            let end = (i + 8).min(b.len());
            b[i..end].copy_from_slice(&v[..end - i]);
        }
        3 => {
            let i = rng.below(b.len());
            let j = rng.below(b.len());
            let (lo, hi) = (i.min(j), i.max(j).min(i.min(j) + 512));
            let chunk = b[lo..hi].to_vec();
            b.splice(lo..lo, chunk);
        }
        4 => {
            // A digit in a text header (npy shape, safetensors offsets) made huge.
            let from = rng.below(b.len().min(2048));
            if let Some(at) = (from..b.len().min(4096)).find(|&i| b[i].is_ascii_digit()) {
                b.splice(at..at, b"99999999999".iter().copied());
            }
        }
        _ => {
            for _ in 0..64 {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
    }
    b
}

/// Runs the shell command `script` once this process has ended, however it ends: a detached
/// shell (in the background of a shell that exits at once, so nothing is left to reap; in its
/// own process group, so a Ctrl-C to the tests does not reach it) waits for this process to
/// exit, then runs it. The servers the tests start are stopped on drop; this stops them too
/// when the test process is killed before it can drop them (a signal, a CI timeout), so no
/// test leaves a server listening. `script` must be harmless after a normal drop (the drop
/// stopped the server and removed its directory).
pub fn after_exit(script: &str) {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let detached = format!(
        "(while kill -0 {} 2>/dev/null; do sleep 1; done; {script}) >/dev/null 2>&1 &",
        std::process::id()
    );
    let started = Command::new("sh")
        .args(["-c", &detached])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .expect("sh starts");
    assert!(started.success(), "the clean-up shell did not start");
}

/// The sweep id `prh align … --workers 0` printed (`sweep 7: submit …`).
pub fn sweep_id(printed: &str) -> i64 {
    printed
        .strip_prefix("sweep ")
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no sweep id in {printed:?}"))
}

pub mod browser;
pub mod http;
pub mod postgres;
pub mod python;
pub mod race;
pub mod s3;
pub mod slurm;
