//! Shared by the benches that run the real `prh` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Whether this is a smoke run. `cargo bench` passes `--bench` to a bench binary; `cargo test`
/// runs every bench too (`test = true` in Cargo.toml) without it. A smoke run uses tiny sizes,
/// finishes in seconds and exercises the bench's code and assertions in CI; its figures mean
/// nothing and are labelled so.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// `full` under `cargo bench`, `small` in a smoke run (see [`smoke`]).
pub fn size<T>(full: T, small: T) -> T {
    if smoke() { small } else { full }
}

/// Prints the line that marks a smoke run's figures as meaningless (nothing in a real run).
pub fn announce(bench: &str) {
    if smoke() {
        println!(
            "{bench}: smoke run at tiny sizes (cargo test); `cargo bench --bench {bench}` measures"
        );
    }
}

/// A `prh` binary under measurement and the registry it runs on.
pub struct Subject {
    pub label: String,
    pub bin: PathBuf,
    pub reg: PathBuf,
}

/// This build's `prh` on `reg`, then — when `PRH_BENCH_BASELINE` names another `prh` binary
/// (a build of an earlier commit, say) — that binary on its own copy of `reg` (made now, before
/// either has run, see [`baseline_copy`]), so a bench can time both step by step, side by side
/// in one run.
pub fn subjects(reg: &Path) -> Vec<Subject> {
    let mut out = vec![Subject {
        label: "this build".into(),
        bin: env!("CARGO_BIN_EXE_prh").into(),
        reg: reg.to_path_buf(),
    }];
    if let Some(base) = std::env::var_os("PRH_BENCH_BASELINE") {
        let copy = reg.with_extension("baseline");
        baseline_copy(Path::new(&base), reg, &copy);
        out.push(Subject {
            label: format!("baseline {}", Path::new(&base).display()),
            bin: base.into(),
            reg: copy,
        });
    }
    out
}

/// A copy of `reg` at the schema of the (older) binary `base`: `base init` makes the registry,
/// the blobs are copied, and every table both schemas define alike gets `reg`'s rows. A table
/// the two define differently must still be empty in `reg` (a bench copies before computing).
fn baseline_copy(base: &Path, reg: &Path, copy: &Path) {
    let status = Command::new(base)
        .arg("init")
        .arg(copy)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{} init", base.display());
    let status = Command::new("cp")
        .arg("-a")
        .arg(reg.join("blobs"))
        .arg(copy)
        .status()
        .unwrap();
    assert!(status.success(), "copying the blobs for the baseline");
    let db = rusqlite::Connection::open(copy.join("catalog.db")).unwrap();
    db.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    db.execute(
        "ATTACH ?1 AS src",
        [reg.join("catalog.db").to_str().unwrap()],
    )
    .unwrap();
    let columns = |schema: &str, table: &str| -> Vec<String> {
        let mut st = db
            .prepare(&format!(
                "SELECT name FROM pragma_table_info(?1, '{schema}')"
            ))
            .unwrap();
        st.query_map([table], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let tables: Vec<String> = db
        .prepare(
            "SELECT name FROM src.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in tables {
        if columns("src", &t) == columns("main", &t) {
            db.execute(&format!("INSERT INTO main.{t} SELECT * FROM src.{t}"), [])
                .unwrap();
        } else {
            let rows: i64 = db
                .query_row(&format!("SELECT count(*) FROM src.{t}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(
                rows, 0,
                "table {t} differs in the baseline's schema and has rows"
            );
        }
    }
}

/// Runs `bin --registry REG ARGS...`, asserting success: seconds, JSON output and the process's
/// own peak RSS in KiB, polled from its /proc/PID/status VmHWM every 20 ms (from 5 ms after the
/// spawn, once it runs prh). Not `wait4`'s ru_maxrss: that includes the high-water mark of the
/// image before exec, i.e. of this bench process, which a spawned child shares until then. A
/// run shorter than 5 ms reports 0.
/// Runs this build's prh on `reg` with the standard environment, asserting success; its
/// standard output.
pub fn prh_ok(reg: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(reg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn prh_measured(bin: &Path, reg: &Path, args: &[&str]) -> (f64, serde_json::Value, i64) {
    let t = Instant::now();
    let child = Command::new(bin)
        .arg("--registry")
        .arg(reg)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let peak = PeakRss::watch(child.id());
    let out = child.wait_with_output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let rss = peak.kib();
    assert!(
        out.status.success(),
        "prh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, serde_json::from_slice(&out.stdout).unwrap(), rss)
}

/// A field of `/proc/WHO/status` in KiB (`who`: a pid, or `self`), e.g. `VmHWM:`.
pub fn proc_status_kib(who: &str, field: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{who}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's peak resident set, polled from its VmHWM every 20 ms (from 5 ms after
/// [`PeakRss::watch`]) until [`PeakRss::kib`].
pub struct PeakRss {
    stop: std::sync::mpsc::Sender<()>,
    poll: std::thread::JoinHandle<i64>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let poll = std::thread::spawn(move || {
            let (who, mut peak) = (pid.to_string(), 0i64);
            let mut wait = std::time::Duration::from_millis(5);
            while stopped.recv_timeout(wait).is_err() {
                wait = std::time::Duration::from_millis(20);
                peak = peak.max(proc_status_kib(&who, "VmHWM:").unwrap_or(0));
            }
            peak
        });
        PeakRss { stop, poll }
    }

    /// The peak seen, in KiB (0 for a process gone within 5 ms).
    pub fn kib(self) -> i64 {
        let _ = self.stop.send(());
        self.poll.join().unwrap()
    }
}

/// `prh align` of every language model with every vision model for one metric (plus `extra`
/// flags): the seconds it took, the cells it computed and its peak RSS in KiB.
pub fn align_language_vision(s: &Subject, metric: &str, extra: &[&str]) -> (f64, u64, i64) {
    let mut args = vec![
        "align",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--metric",
        metric,
        "--format",
        "json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let (secs, v, rss) = prh_measured(&s.bin, &s.reg, &args);
    (secs, cells_computed(&v), rss)
}

/// Sum of `cells_computed` over an `align --format json` result.
pub fn cells_computed(v: &serde_json::Value) -> u64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells_computed"].as_u64().unwrap())
        .sum()
}

/// Layers of the cache benches' zoo: 24 per model (4 in a smoke run).
pub fn cache_layers() -> usize {
    size(24, 4)
}

/// One model of the cache benches: its layers' distinct blob hashes, the prep key of its
/// checkpoint's threshold, and their cache side ids.
pub struct CacheModel {
    pub hashes: Vec<prh::store::BlobHash>,
    pub preps: Vec<String>,
    pub ids: Vec<i64>,
}

impl CacheModel {
    fn new(seed: usize) -> CacheModel {
        let hashes: Vec<prh::store::BlobHash> = (0..cache_layers())
            .map(|l| {
                prh::store::BlobHash(
                    *blake3::hash(format!("model {seed} layer {l}").as_bytes()).as_bytes(),
                )
            })
            .collect();
        let t = 1.0f32 + seed as f32 / 100.0;
        let prep = format!("clamp(q=0.95,t=0x{:08x});l2", t.to_bits());
        let preps = vec![prep; cache_layers()];
        let ids = prh::catalog::side_ids(&hashes, &preps);
        CacheModel { hashes, preps, ids }
    }

    pub fn side(&self) -> prh::catalog::CellSide<'_> {
        prh::catalog::CellSide {
            hashes: &self.hashes,
            preps: &self.preps,
            ids: &self.ids,
        }
    }
}

/// About a million cached cells: 60 × 29 model pairs of 24 × 24 layer pairs of mutual_knn with
/// the official preparation's prep keys (3 × 2 pairs of 4 × 4 in a smoke run).
pub struct CacheZoo {
    pub key: prh::catalog::MetricKey,
    pub xs: Vec<CacheModel>,
    pub ys: Vec<CacheModel>,
    /// One pair's cells.
    pub cells: Vec<prh::catalog::NewCell>,
}

impl CacheZoo {
    pub fn new() -> CacheZoo {
        let key = prh::catalog::MetricKey {
            metric: "mutual_knn",
            version: 1,
            params: "k=10".into(),
            symmetric: true,
        };
        let l = cache_layers();
        let cells = (0..l)
            .flat_map(|i| (0..l).map(move |j| (0, i, j, (i * l + j) as f64 / 1e3, 1e-4)))
            .collect();
        CacheZoo {
            key,
            xs: (0..size(60, 3)).map(CacheModel::new).collect(),
            ys: (0..size(29, 2))
                .map(|i| CacheModel::new(1000 + i))
                .collect(),
            cells,
        }
    }

    pub fn pairs(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    /// Every cell of the zoo.
    pub fn n(&self) -> usize {
        self.pairs() * self.cells.len()
    }

    /// Stores every pair's cells (one transaction per pair, as a cold sweep does); seconds.
    pub fn store(&self, cat: &mut dyn prh::catalog::Catalog) -> f64 {
        let t = Instant::now();
        for x in &self.xs {
            for y in &self.ys {
                cat.store_cells(
                    std::slice::from_ref(&self.key),
                    x.side(),
                    y.side(),
                    &self.cells,
                )
                .unwrap();
            }
        }
        t.elapsed().as_secs_f64()
    }

    /// Finds every pair's cells again (one lookup per pair, what a warm sweep asks); seconds.
    pub fn find(&self, cat: &dyn prh::catalog::Catalog) -> f64 {
        let t = Instant::now();
        let mut found = 0;
        for x in &self.xs {
            for y in &self.ys {
                found += cat
                    .cached_cells(&self.key, x.side(), y.side())
                    .unwrap()
                    .len();
            }
        }
        assert_eq!(found, self.n(), "every stored cell found again");
        t.elapsed().as_secs_f64()
    }
}

/// Ingests the files of a zoo (`ZooSpec::write_files`) into `reg`, on dataset `zoo`.
pub fn ingest_zoo(reg: &mut prh::registry::Registry, files: &[(prh::demo::ZooModel, PathBuf)]) {
    for (m, path) in files {
        reg.ingest(
            path,
            &prh::registry::IngestRequest {
                model: m.name.clone(),
                dataset: "zoo".into(),
                modality: Some(m.modality.into()),
                pool: "avg".into(),
                ..Default::default()
            },
        )
        .unwrap();
    }
}

/// The sweep benches' zoo: 4 language × 4 vision models, n = 1024, 12 layers each,
/// d = 768–1024, with a latent signal that grows with quality (2 × 2 models, n = 96, 3 layers,
/// d = 24–40 in a smoke run).
pub fn sweep_zoo() -> prh::demo::ZooSpec {
    let mut models = Vec::new();
    for i in 0..size(4, 2) {
        for (modality, prefix) in [("language", "lm"), ("vision", "vit")] {
            models.push(prh::demo::ZooModel {
                name: format!("{prefix}{i}"),
                modality,
                family: prefix,
                quality: 0.2 + 0.2 * i as f64,
                layers: size(12, 3),
                d: size(768, 24)
                    + size(64, 8) * i
                    + if modality == "vision" { size(32, 4) } else { 0 },
                checkpoint: "final".into(),
                step: 1,
                score: ("acc", i as f64, true),
            });
        }
    }
    prh::demo::ZooSpec {
        n: size(1024, 96),
        latent_dim: size(16, 4),
        seed: 7,
        models,
    }
}
