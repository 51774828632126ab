//! The reliability suite: real processes on real registries. Crashes, concurrency,
//! corruption, hostile bundles, export/import round trips, malformed input files.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, fixture, mutate, noise, write_npy};
use prh::rng::Rng;
use serde_json::Value;

fn prh(env: &Env) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prh"));
    c.arg("--registry").arg(env.reg());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn demo_like(env: &Env) {
    env.ok(&["init"]);
    common::two_models(env, &[120, 4, 16]);
}

/// Entries in the registry's staging directory.
fn staged(env: &Env) -> usize {
    std::fs::read_dir(env.reg().join("tmp")).map_or(0, |d| d.count())
}

#[test]
fn killed_ingests_leave_a_registry_that_verifies_and_resumes() {
    let env = Env::new();
    env.ok(&["init"]);
    let big = env.path("big.npy");
    write_npy(&big, &[256, 16, 2048], &noise(256 * 16 * 2048, 9));
    let mut rng = Rng::new(42);
    let started = Instant::now();
    // Kills that landed while the ingest had a blob staged (written, not yet published or
    // committed): the case this test is about. Every round waits for staging to begin.
    let mut mid_write = 0;
    let mut kills = 0;
    while kills < 12 && started.elapsed() < Duration::from_secs(60) {
        // Each round a new model, so every ingest stages its blobs (a repeated one would find
        // them stored and stage nothing); the staging area starts empty.
        let model = format!("k{kills}");
        let _ = std::fs::remove_dir_all(env.reg().join("tmp"));
        std::fs::create_dir_all(env.reg().join("tmp")).unwrap();
        let mut child = prh(&env)
            .args([
                "ingest",
                big.to_str().unwrap(),
                "--model",
                &model,
                "--dataset",
                "d",
                "--modality",
                "language",
            ])
            .spawn()
            .unwrap();
        let t = Instant::now();
        while staged(&env) == 0 && t.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(rng.below(40) as u64));
        let staged_at_kill = staged(&env) > 0;
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        if running && staged_at_kill {
            mid_write += 1;
        }
        kills += 1;
        let v = env.prh(&["verify"]);
        assert!(
            v.status.success(),
            "verify after kill {kills}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        // Whatever the kill left, rows never name a missing blob and no half blob is visible.
        let reps = env.json(&["ls", "reps", "--format", "json"]);
        let n = reps
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["model"] == model.as_str())
            .count();
        assert!(n == 0 || n == 16, "all layers or none: {n}");
    }
    assert!(
        mid_write > 0,
        "no kill landed while a blob was staged ({kills} kills): the test proved nothing"
    );
    env.ok(&[
        "ingest",
        big.to_str().unwrap(),
        "--model",
        "m",
        "--dataset",
        "d",
        "--modality",
        "language",
    ]);
    assert_eq!(
        env.json(&["ls", "reps", "--model", "m", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        16
    );
    env.ok(&["gc"]);
    assert!(env.prh(&["verify"]).status.success());
}

#[test]
fn four_ingests_and_two_sweeps_at_once() {
    let env = Env::new();
    env.ok(&["init"]);
    // Many small model pairs (each committed on its own), so that the two sweeps commit cells
    // all through the four ingests' run (checked below, or the test proves nothing).
    let names: Vec<String> = (0..12).map(|i| format!("z{i}")).collect();
    let zoo: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let p = env.path(&format!("{name}.npy"));
            write_npy(&p, &[1024, 2, 16], &noise(1024 * 2 * 16, 300 + i as u64));
            let modality = if i < 6 { "language" } else { "vision" };
            (p, name.as_str(), modality)
        })
        .collect();
    common::ingest_all(&env, "d", &zoo);
    let files: Vec<_> = (0..4)
        .map(|i| {
            let p = env.path(&format!("m{i}.npy"));
            write_npy(&p, &[1024, 4, 2048], &noise(1024 * 4 * 2048, 100 + i));
            p
        })
        .collect();
    let sweep = || {
        prh(&env)
            .args([
                "align",
                "--x",
                "modality=language",
                "--y",
                "modality=vision",
                "--metric",
                "mutual_knn,cka",
                "--quiet",
            ])
            .spawn()
            .unwrap()
    };
    let sweeps = vec![sweep(), sweep()];
    let t = Instant::now();
    while common::cached_cells(&env) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no sweep wrote a cell"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let at_spawn = common::cached_cells(&env);
    let mut ingests: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let modality = if i % 2 == 0 { "language" } else { "vision" };
            prh(&env)
                .args([
                    "ingest",
                    p.to_str().unwrap(),
                    "--model",
                    &format!("m{i}"),
                    "--dataset",
                    "d",
                    "--modality",
                    modality,
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    // Proof that the writers interleaved: a sweep committed cells while an ingest was running.
    let mut interleaved = false;
    while ingests.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        interleaved |= common::cached_cells(&env) > at_spawn;
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in ingests.into_iter().chain(sweeps) {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!String::from_utf8_lossy(&o.stderr).contains("locked"));
    }
    assert!(
        interleaved,
        "no sweep committed a cell while an ingest ran: nothing happened at once"
    );
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    assert_eq!(reps.as_array().unwrap().len(), 12 * 2 + 4 * 4);
    let models = env.json(&["ls", "models", "--format", "json"]);
    assert_eq!(models.as_array().unwrap().len(), 16);
    // No slot (checkpoint, dataset, layer, pool) holds two representations.
    let reps = common::open(&env)
        .catalog
        .reps(&prh::catalog::RepFilter::default())
        .unwrap();
    let slots: std::collections::HashSet<_> = reps
        .iter()
        .map(|r| (&r.model, &r.checkpoint, &r.dataset, r.layer, &r.pool))
        .collect();
    assert_eq!(slots.len(), reps.len(), "a slot holds two representations");
    assert!(env.prh(&["verify", "--recompute", "10"]).status.success());
}

#[test]
fn corruption_is_named_by_verify_and_reads_fail_loudly() {
    let env = Env::new();
    demo_like(&env);
    env.ok(&[
        "align",
        "--x",
        "l1",
        "--y",
        "v1",
        "--metric",
        "mutual_knn",
        "--quiet",
    ]);
    let reps = env.json(&["ls", "reps", "--model", "v1", "--format", "json"]);
    let h1 = reps[1]["hash"].as_str().unwrap().to_string();
    let h2 = reps[2]["hash"].as_str().unwrap().to_string();
    let blob = |h: &str| env.reg().join("blobs").join(&h[..2]).join(h);
    // Flip one byte of one blob, delete another.
    let mut bytes = std::fs::read(blob(&h1)).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x40;
    std::fs::write(blob(&h1), &bytes).unwrap();
    std::fs::remove_file(blob(&h2)).unwrap();
    let v = env.prh(&["verify"]);
    assert_eq!(v.status.code(), Some(6));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains(&h1) && out.contains("altered"), "{out}");
    assert!(out.contains(&h2), "{out}");
    // A computation that needs the altered blob refuses instead of returning wrong numbers.
    let e = env.fails(&[
        "align", "--x", "l1", "--y", "v1", "--metric", "cka", "--quiet",
    ]);
    assert!(e.contains("corrupt") || e.contains("No such file"), "{e}");
}

#[test]
fn a_truncated_wal_loses_at_most_the_last_transactions_and_verify_names_the_leftovers() {
    let env = Env::new();
    demo_like(&env);
    // Hold a connection so the WAL is not checkpointed away when prh exits.
    let hold = rusqlite::Connection::open(env.reg().join("catalog.db")).unwrap();
    let _: i64 = hold
        .query_row("SELECT count(*) FROM models", [], |r| r.get(0))
        .unwrap();
    let p = env.path("late.npy");
    write_npy(&p, &[120, 4, 16], &noise(120 * 4 * 16, 77));
    env.ok(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "late",
        "--dataset",
        "d",
        "--modality",
        "vision",
    ]);
    let wal = env.reg().join("catalog.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(len > 0, "the held connection keeps the WAL");
    // Simulate a crash that lost the WAL's tail: copy the registry aside while the WAL still
    // exists (the held connection keeps it from being checkpointed away), leave out the
    // shared-memory index (a crash loses it too), and cut the copied WAL to a third.
    let crash = Env::new();
    std::fs::create_dir_all(crash.reg()).unwrap();
    copy_dir(&env.reg(), &crash.reg());
    drop(hold);
    let _ = std::fs::remove_file(crash.reg().join("catalog.db-shm"));
    let copied = crash.reg().join("catalog.db-wal");
    assert_eq!(std::fs::metadata(&copied).unwrap().len(), len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copied)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let v = crash.prh(&["verify"]);
    let out = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(v.status.success(), "{out}");
    let names = common::model_names(&crash);
    // The ingest's one transaction ends in the WAL's last frames: cut, it is lost whole, the
    // earlier models stay, and its published blobs are named as unreferenced files.
    assert!(
        !names.iter().any(|n| n == "late"),
        "the lost commit survived: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "l1") && names.iter().any(|n| n == "v1"),
        "{names:?}"
    );
    assert!(
        out.contains("unreferenced blob files"),
        "lost rows leave named blob files: {out}"
    );
    crash.ok(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "late",
        "--dataset",
        "d",
        "--modality",
        "vision",
    ]);
    assert!(crash.prh(&["verify"]).status.success());
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn export_import_round_trip_answers_every_query_the_same() {
    let env = Env::new();
    demo_like(&env);
    env.ok(&["score", "set", "--model", "l1", "bpb=0.8"]);
    env.ok(&[
        "align",
        "--x",
        "l1",
        "--y",
        "v1",
        "--metric",
        "mutual_knn,cka",
        "--null",
        "20",
        "--quiet",
    ]);
    let bundle = env.path("zoo.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["init"]);
    other.ok(&["import", bundle.to_str().unwrap()]);
    for what in ["models", "checkpoints", "reps", "scores", "datasets"] {
        // Every field, created_at included, is kept as exported.
        let a = env.json(&["ls", what, "--format", "json"]);
        let b = other.json(&["ls", what, "--format", "json"]);
        assert_eq!(a, b, "{what}");
    }
    let q = [
        "align",
        "--x",
        "l1",
        "--y",
        "v1",
        "--metric",
        "mutual_knn,cka",
        "--null",
        "20",
        "--format",
        "json",
        "--quiet",
    ];
    let a = env.json(&q);
    let b = other.json(&q);
    assert_eq!(a, b);
    assert!(
        b.as_array()
            .unwrap()
            .iter()
            .all(|r| r["cells_computed"] == 0)
    );
    // Idempotent.
    let again = other.json(&["import", bundle.to_str().unwrap(), "--format", "json"]);
    assert_eq!(again["representations_new"], 0);
    assert_eq!(again["blobs_new"], 0);
    assert!(other.prh(&["verify", "--recompute", "8"]).status.success());
    // Conflicts by name are reported, never overwritten.
    let third = Env::new();
    third.ok(&["init"]);
    let p = third.path("l1.npy");
    write_npy(&p, &[120, 4, 16], &noise(120 * 4 * 16, 999));
    third.ok(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "l1",
        "--dataset",
        "d",
        "--modality",
        "language",
    ]);
    let before = third.snapshot();
    let e = third.fails(&["import", bundle.to_str().unwrap()]);
    assert!(e.contains("conflict") && e.contains("l1"), "{e}");
    assert_eq!(third.snapshot(), before);
    // A subset export carries only its models.
    let sub = env.path("sub.prh");
    env.ok(&["export", sub.to_str().unwrap(), "--models", "v1"]);
    let fourth = Env::new();
    fourth.ok(&["init"]);
    fourth.ok(&["import", sub.to_str().unwrap()]);
    let m = fourth.json(&["ls", "models", "--format", "json"]);
    assert_eq!(m.as_array().unwrap().len(), 1);
    assert_eq!(m[0]["name"], "v1");
}

/// Rewrites one bundle entry into zero or more entries.
type Edit = Box<dyn FnMut(&str, Vec<u8>) -> Vec<(tar::Header, Vec<u8>)>>;

/// Rewrites a bundle entry by entry through `edit`, which may change names, data or headers.
fn rewrite(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(&str, Vec<u8>) -> Vec<(tar::Header, Vec<u8>)>,
) {
    let mut ar = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        for (mut h, d) in edit(&name, data) {
            out.append(&h.clone(), d.as_slice()).unwrap_or_else(|_| {
                h.set_cksum();
                out.append(&h, d.as_slice()).unwrap()
            });
        }
    }
    out.finish().unwrap();
}

fn header(name: &[u8], size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

#[test]
fn hostile_bundles_are_refused_and_change_nothing() {
    let env = Env::new();
    demo_like(&env);
    let good = env.path("good.prh");
    env.ok(&["export", good.to_str().unwrap()]);
    let target = Env::new();
    target.ok(&["init"]);
    let before = target.snapshot();
    let mut first_blob = String::new();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "traversal",
            Box::new(|name: &str, d: Vec<u8>| {
                let mut v = vec![(
                    header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
                    d,
                )];
                if name == "catalog.db" {
                    v.push((
                        header(b"../../evil", 4, tar::EntryType::Regular),
                        b"evil".to_vec(),
                    ));
                }
                v
            }),
            "escapes the bundle",
        ),
        (
            "symlink",
            Box::new(|name: &str, d: Vec<u8>| {
                if name.starts_with("blobs/") {
                    let mut h = header(name.as_bytes(), 0, tar::EntryType::Symlink);
                    h.set_link_name("/etc/passwd").unwrap();
                    h.set_cksum();
                    vec![(h, Vec::new())]
                } else {
                    vec![(
                        header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
                        d,
                    )]
                }
            }),
            "not a regular file",
        ),
        (
            "hash mismatch",
            Box::new(move |name: &str, mut d: Vec<u8>| {
                if name.starts_with("blobs/") && first_blob.is_empty() {
                    first_blob = name.to_string();
                    let last = d.len() - 1;
                    d[last] ^= 1;
                }
                vec![(
                    header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
                    d,
                )]
            }),
            "does not match its hash",
        ),
        (
            "lying manifest",
            Box::new(|name: &str, d: Vec<u8>| {
                if name == "manifest.json" {
                    let mut m: Value = serde_json::from_slice(&d).unwrap();
                    m["blobs"][0]["bytes"] =
                        Value::from(m["blobs"][0]["bytes"].as_u64().unwrap() + 8);
                    let d = serde_json::to_vec(&m).unwrap();
                    vec![(
                        header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
                        d,
                    )]
                } else {
                    vec![(
                        header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
                        d,
                    )]
                }
            }),
            "manifest says",
        ),
        (
            "huge declared size",
            Box::new(|name: &str, d: Vec<u8>| {
                if name == "manifest.json" {
                    vec![(header(name.as_bytes(), 1 << 40, tar::EntryType::Regular), d)]
                } else {
                    vec![(
                        header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
                        d,
                    )]
                }
            }),
            "over the limit",
        ),
    ];
    for (label, edit, needle) in cases {
        let bad = env.path(&format!("{}.prh", label.replace(' ', "_")));
        rewrite(&good, &bad, edit);
        let e = target.fails(&["import", bad.to_str().unwrap()]);
        assert!(e.contains(needle), "{label}: {e}");
        assert_eq!(target.snapshot(), before, "{label} changed the registry");
        assert!(!target.dir.path().join("evil").exists() && !env.dir.path().join("evil").exists());
    }
    // A bundle with a missing blob (manifest lists it, archive lacks it).
    let bad = env.path("missing.prh");
    let mut dropped = false;
    rewrite(&good, &bad, |name, d| {
        if name.starts_with("blobs/") && !dropped {
            dropped = true;
            return vec![];
        }
        vec![(
            header(name.as_bytes(), d.len() as u64, tar::EntryType::Regular),
            d,
        )]
    });
    let e = target.fails(&["import", bad.to_str().unwrap()]);
    assert!(e.contains("does not hold"), "{e}");
    assert_eq!(target.snapshot(), before);
    target.ok(&["import", good.to_str().unwrap()]);
}

/// Mutates valid files at random and opens them: never a panic, a hang or a huge allocation.
#[test]
fn malformed_feature_files_never_panic() {
    let env = Env::new();
    let seeds: Vec<(String, Vec<u8>)> = [
        "reference/pipeline_x.npy",
        "reference/pipeline_y.npz",
        "reference/pipeline_y.safetensors",
        "reference/pipeline_x.pt",
        "reference/pipeline_y_list.pt",
    ]
    .iter()
    .map(|f| {
        (
            f.rsplit('.').next().unwrap().to_string(),
            std::fs::read(fixture(f)).unwrap(),
        )
    })
    .collect();
    let mut rng = Rng::new(7);
    let start = Instant::now();
    let mut tried = 0;
    let mut opened = 0;
    while start.elapsed() < Duration::from_secs(20) && tried < 1500 {
        let (ext, base) = &seeds[tried % seeds.len()];
        let b = mutate(base, &mut rng);
        let p = env.path(&format!("case.{ext}"));
        std::fs::File::create(&p).unwrap().write_all(&b).unwrap();
        let result = std::panic::catch_unwind(|| {
            if let Ok(f) = prh::formats::open(&p) {
                for i in 0..f.layers.len() {
                    let _ = f.layer(i).to_f32();
                }
                true
            } else {
                false
            }
        });
        assert!(result.is_ok(), "panic on a mutated .{ext} (case {tried})");
        opened += result.unwrap() as usize;
        tried += 1;
    }
    assert!(tried >= 100, "only {tried} cases ran");
    eprintln!("{tried} malformed files, {opened} still parsed (mutations in data bytes)");
}

#[test]
fn declared_sizes_never_allocate_before_checking_the_file() {
    let env = Env::new();
    // npy claiming 10^12 × 10^12 elements.
    let p = env.path("huge.npy");
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }";
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    std::fs::write(&p, b).unwrap();
    let e = prh::formats::open(&p).err().unwrap().to_string();
    assert!(e.contains("overflow") || e.contains("truncated"), "{e}");
    // safetensors with a header length of 2^60.
    let s = env.path("huge.safetensors");
    std::fs::write(&s, (1u64 << 60).to_le_bytes()).unwrap();
    assert!(
        prh::formats::open(&s)
            .err()
            .unwrap()
            .to_string()
            .contains("header length")
    );
    // A pickle string claiming 2 GiB.
    assert!(prh::formats::pickle::load(b"\x80\x02X\xff\xff\xff\x7f").is_err());
}

/// `strace` (Debian's package; installed with apt-get when missing and running as root).
fn strace() -> &'static str {
    let found = || {
        Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found() {
        assert!(
            common::postgres::is_root(),
            "this test needs strace: run `sudo apt-get install strace`"
        );
        let st = Command::new("apt-get")
            .args(["install", "-y", "-q", "strace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .expect("apt-get runs");
        assert!(st.success() && found(), "apt-get install strace failed");
    }
    "strace"
}

/// The path inside the first `<…>` of an strace line (`-y` prints a descriptor's path so).
fn fd_path(line: &str) -> Option<&str> {
    let start = line.find('<')? + 1;
    Some(&line[start..start + line[start..].find('>')?])
}

/// The first two quoted arguments of an strace line.
fn quoted(line: &str) -> Vec<&str> {
    line.split('"').skip(1).step_by(2).take(2).collect()
}

#[test]
fn every_blob_is_fsynced_before_it_is_renamed_into_place() {
    let env = Env::new();
    env.ok(&["init"]);
    let p = env.path("f.npy");
    write_npy(&p, &[64, 4, 32], &noise(64 * 4 * 32, 5));
    let log = env.path("trace.txt");
    let o = Command::new(strace())
        .args(["-f", "-y", "-qq", "-o"])
        .arg(&log)
        .args(["-e", "trace=fsync,fdatasync,rename,renameat,renameat2"])
        .arg(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(env.reg())
        .args([
            "ingest",
            p.to_str().unwrap(),
            "--model",
            "m",
            "--dataset",
            "d",
        ])
        .args(["--modality", "language"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trace = std::fs::read_to_string(&log).unwrap();
    let mut synced: Vec<&str> = Vec::new();
    let mut published = 0;
    for line in trace.lines() {
        if line.contains("fsync(") || line.contains("fdatasync(") {
            synced.extend(fd_path(line));
        } else if line.contains("rename") {
            let args = quoted(line);
            let (from, to) = (args[0], args[1]);
            if to.contains("/blobs/") {
                assert!(
                    synced.contains(&from),
                    "{from} renamed to {to} before it was fsynced:\n{trace}"
                );
                published += 1;
            }
        }
    }
    assert_eq!(published, 4, "one rename per layer's blob:\n{trace}");
}

#[test]
fn two_imports_at_once_both_land_and_the_registry_verifies() {
    // A "not yet tried" case of the shared-registry issue: two bundles imported into one
    // registry by two processes at the same time.
    let make = |model: &str, seed: u64| {
        let src = Env::new();
        src.ok(&["init"]);
        let p = src.path("f.npy");
        write_npy(&p, &[48, 3, 16], &noise(48 * 3 * 16, seed));
        src.ok(&[
            "ingest",
            p.to_str().unwrap(),
            "--model",
            model,
            "--dataset",
            "d",
            "--modality",
            "language",
        ]);
        let b = src.path("b.prh");
        src.ok(&["export", b.to_str().unwrap()]);
        (src, b)
    };
    let ((_a, ba), (_b, bb)) = (make("alpha", 1), make("beta", 2));
    let mut overlapped = 0;
    for round in 0..5 {
        let env = Env::new();
        env.ok(&["init"]);
        let spawn = |b: &std::path::Path| {
            std::process::Command::new(env!("CARGO_BIN_EXE_prh"))
                .arg("--registry")
                .arg(env.reg())
                .args(["import", b.to_str().unwrap()])
                .output()
        };
        let timed = |b: &std::path::Path| {
            let t0 = std::time::Instant::now();
            let o = spawn(b).unwrap();
            (o, t0, std::time::Instant::now())
        };
        let ((oa, a0, a1), (ob, b0, b1)) = std::thread::scope(|s| {
            let ta = s.spawn(|| timed(&ba));
            let tb = s.spawn(|| timed(&bb));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        // The two processes were alive at the same time (else this proves nothing).
        if a0 < b1 && b0 < a1 {
            overlapped += 1;
        }
        for o in [&oa, &ob] {
            assert!(
                o.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert_eq!(
            common::model_names(&env),
            ["alpha", "beta"],
            "round {round}"
        );
        assert!(env.prh(&["verify"]).status.success(), "round {round}");
    }
    assert!(overlapped > 0, "no round ran the two imports at once");
}
