//! `prh ingest` end to end: idempotence, discovery, listings, and every bad input refused with
//! one clear error naming the file, the registry left exactly as it was.

use crate::common;

use std::io::Write;

use common::{Env, fixture, noise, write_npy};

fn base_env() -> Env {
    let env = Env::new();
    env.ok(&["init"]);
    let good = env.path("good.npy");
    write_npy(&good, &[20, 3, 8], &noise(20 * 3 * 8, 1));
    env.ok(&[
        "ingest",
        good.to_str().unwrap(),
        "--model",
        "m1",
        "--dataset",
        "ds",
        "--modality",
        "language",
        "--checkpoint",
        "step-1",
        "--step",
        "1",
    ]);
    env
}

/// Ingests `file` as a new checkpoint of m1 and checks the failure.
fn refused(env: &Env, file: &std::path::Path, extra: &[&str], needle: &str) {
    let before = env.snapshot();
    let mut args = vec![
        "ingest",
        file.to_str().unwrap(),
        "--model",
        "m1",
        "--dataset",
        "ds",
        "--checkpoint",
        "step-2",
    ];
    args.extend_from_slice(extra);
    let err = env.fails(&args);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(file.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(env.snapshot(), before, "registry changed after: {err}");
}

#[test]
fn same_file_twice_adds_nothing_and_says_so() {
    let env = base_env();
    let before = env.snapshot();
    let out = env.ok(&[
        "ingest",
        env.path("good.npy").to_str().unwrap(),
        "--model",
        "m1",
        "--dataset",
        "ds",
        "--checkpoint",
        "step-1",
    ]);
    assert!(
        out.contains("already ingested") && out.contains("nothing new"),
        "{out}"
    );
    assert_eq!(env.snapshot(), before);
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    assert_eq!(reps.as_array().unwrap().len(), 3);
    for field in [
        "hash",
        "model",
        "checkpoint",
        "dataset",
        "layer",
        "pool",
        "dtype",
        "n",
        "d",
    ] {
        assert!(reps[0].get(field).is_some(), "reps JSON lacks {field}");
    }
    assert_eq!(reps[2]["layer"], 2);
    assert_eq!(reps[0]["n"], 20);
    assert_eq!(reps[0]["d"], 8);
    assert_eq!(reps[0]["hash"].as_str().unwrap().len(), 64);
}

#[test]
fn not_a_float_matrix() {
    let env = base_env();
    let p = env.path("ints.npy");
    let mut b = prh::formats::npy::encode_f32(&[20, 8], &[1.0; 160]);
    let i = b.windows(3).position(|w| w == b"<f4").unwrap();
    b[i..i + 3].copy_from_slice(b"<i4");
    std::fs::write(&p, b).unwrap();
    refused(&env, &p, &[], "not a float matrix");
}

#[test]
fn wrong_rank() {
    let env = base_env();
    let p = env.path("vec.npy");
    write_npy(&p, &[20], &[1.0; 20]);
    refused(&env, &p, &[], "wrong rank");
    let p4 = env.path("four.npy");
    write_npy(&p4, &[20, 2, 2, 2], &[1.0; 160]);
    refused(&env, &p4, &[], "wrong rank");
}

#[test]
fn n_differs_from_the_dataset() {
    let env = base_env();
    let p = env.path("short.npy");
    write_npy(&p, &[19, 8], &noise(19 * 8, 2));
    refused(&env, &p, &[], "dataset ds has n = 20");
}

#[test]
fn nan_or_inf_present() {
    let env = base_env();
    let p = env.path("nan.npy");
    let mut d = noise(20 * 3 * 8, 3);
    d[2 * 24 + 8 + 5] = f32::NAN; // row 2, layer 1, column 5
    write_npy(&p, &[20, 3, 8], &d);
    refused(
        &env,
        &p,
        &[],
        "NaN or Inf present in array[1] at row 2, column 5",
    );
    let p2 = env.path("inf.npy");
    let mut d = noise(20 * 8, 4);
    d[7] = f32::INFINITY;
    write_npy(&p2, &[20, 8], &d);
    refused(&env, &p2, &[], "NaN or Inf");
}

#[test]
fn truncated_or_corrupt_files() {
    let env = base_env();
    let full = std::fs::read(env.path("good.npy")).unwrap();
    let p = env.path("cut.npy");
    std::fs::write(&p, &full[..full.len() - 10]).unwrap();
    refused(&env, &p, &[], "truncated");
    let st = std::fs::read(fixture("reference/pipeline_y.safetensors")).unwrap();
    let ps = env.path("cut.safetensors");
    std::fs::write(&ps, &st[..st.len() / 2]).unwrap();
    refused(&env, &ps, &[], "truncated");
    let pt = std::fs::read(fixture("reference/pipeline_x.pt")).unwrap();
    let pp = env.path("cut.pt");
    std::fs::write(&pp, &pt[..pt.len() / 3]).unwrap();
    refused(&env, &pp, &[], "zip");
    let garbage = env.path("garbage.npz");
    std::fs::write(&garbage, b"PK\x03\x04 definitely not a zip").unwrap();
    refused(&env, &garbage, &[], "not a valid .npz");
}

#[test]
fn unknown_dtype() {
    let env = base_env();
    let p = env.path("fp8.safetensors");
    let header = br#"{"layer.0":{"dtype":"F8_E4M3","shape":[20,8],"data_offsets":[0,160]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(&[0u8; 160]);
    std::fs::write(&p, b).unwrap();
    refused(&env, &p, &[], "dtype F8_E4M3");
    let c = env.path("complex.npy");
    let mut b = prh::formats::npy::encode_f32(&[20, 4], &[1.0; 80]);
    let i = b.windows(3).position(|w| w == b"<f4").unwrap();
    b[i..i + 3].copy_from_slice(b"<c8");
    std::fs::write(&c, b).unwrap();
    refused(&env, &c, &[], "not a float matrix");
}

/// A torch.save-style zip whose pickle calls os.system.
fn hostile_pt(path: &std::path::Path) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(
        b"\x80\x02}q\x00X\x05\x00\x00\x00featsq\x01cos\nsystem\nX\x05\x00\x00\x00touchq\x02\x85Rs.",
    )
    .unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    z.finish().unwrap();
}

#[test]
fn pickle_global_outside_the_allowed_set() {
    let env = base_env();
    let p = env.path("evil.pt");
    hostile_pt(&p);
    refused(&env, &p, &[], "refusing pickle global os.system");
}

#[test]
fn modality_disagrees_with_the_registry() {
    let env = base_env();
    let p = env.path("other.npy");
    write_npy(&p, &[20, 8], &noise(160, 5));
    refused(
        &env,
        &p,
        &["--modality", "vision"],
        "registered with modality language",
    );
}

#[test]
fn new_model_without_modality_is_refused() {
    let env = base_env();
    let p = env.path("other.npy");
    write_npy(&p, &[20, 8], &noise(160, 6));
    let before = env.snapshot();
    let err = env.fails(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "fresh",
        "--dataset",
        "ds",
    ]);
    assert!(err.contains("--modality"), "{err}");
    assert_eq!(env.snapshot(), before);
}

#[test]
fn a_checkpoint_layer_never_silently_changes() {
    let env = base_env();
    let p = env.path("changed.npy");
    write_npy(&p, &[20, 3, 8], &noise(20 * 3 * 8, 99));
    let before = env.snapshot();
    let err = env.fails(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "m1",
        "--dataset",
        "ds",
        "--checkpoint",
        "step-1",
    ]);
    assert!(
        err.contains("already holds a different representation"),
        "{err}"
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn unknown_dataset_is_created_with_n_from_the_file_and_said() {
    let env = base_env();
    let p = env.path("new.npy");
    write_npy(&p, &[7, 4], &noise(28, 7));
    let out = env.ok(&[
        "ingest",
        p.to_str().unwrap(),
        "--model",
        "v",
        "--dataset",
        "fresh",
        "--modality",
        "vision",
    ]);
    assert!(out.contains("new dataset fresh with n = 7"), "{out}");
    let ds = env.json(&["ls", "datasets", "--format", "json"]);
    assert!(
        ds.as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "fresh" && d["n"] == 7)
    );
}

#[test]
fn registry_discovery_walks_up_and_names_init_when_missing() {
    let env = Env::new();
    let bin = env!("CARGO_BIN_EXE_prh");
    let run = |dir: &std::path::Path, args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .current_dir(dir)
            .env_remove("PRH_REGISTRY")
            .output()
            .unwrap()
    };
    let o = run(env.dir.path(), &["ls", "models"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("prh init"));
    assert!(run(env.dir.path(), &["init"]).status.success());
    assert!(env.dir.path().join(".prh/catalog.db").is_file());
    let sub = env.path("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    let o = run(&sub, &["ls", "models", "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    // PRH_REGISTRY is honoured.
    let o = std::process::Command::new(bin)
        .args(["init"])
        .env("PRH_REGISTRY", env.path("viaenv"))
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(env.path("viaenv/catalog.db").is_file());
}

#[test]
fn scores_datasets_show_and_csv() {
    let env = base_env();
    let ids = env.path("ids.txt");
    std::fs::write(
        &ids,
        (0..20).map(|i| format!("img_{i}\n")).collect::<String>(),
    )
    .unwrap();
    env.ok(&["dataset", "add", "wit", "--ids", ids.to_str().unwrap()]);
    let err = env.fails(&["dataset", "add", "wit", "--n", "5"]);
    assert!(err.contains("already exists with n = 20"), "{err}");
    env.ok(&[
        "score",
        "set",
        "--model",
        "m1",
        "mmlu=0.35",
        "--higher-is-better",
    ]);
    env.ok(&["score", "set", "--model", "m1", "bpb=0.9"]);
    let csv = env.ok(&["ls", "scores", "--format", "csv"]);
    assert_eq!(
        csv,
        "model,checkpoint,name,value,higher_is_better\nm1,step-1,bpb,0.9,false\nm1,step-1,mmlu,0.35,true\n"
    );
    let err = env.fails(&["score", "set", "--model", "nope", "x=1"]);
    assert!(err.contains("nope"), "{err}");
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    let h = reps[1]["hash"].as_str().unwrap();
    let shown = env.ok(&["show", &h[..10]]);
    assert!(
        shown.contains("20 × 8 f32") && shown.contains("layer 1"),
        "{shown}"
    );
    assert!(env.fails(&["show", "zzzz"]).contains("not a hash prefix"));
}

#[test]
fn provenance_is_stored_listed_queried_and_carried_by_bundles() {
    let env = base_env();
    let good = env.path("good.npy");
    let g = good.to_str().unwrap();
    let ingest = |extra: &[&str]| {
        let mut args = vec![
            "ingest",
            g,
            "--model",
            "m1",
            "--dataset",
            "ds",
            "--checkpoint",
            "step-2",
        ];
        args.extend_from_slice(extra);
        env.ok(&args)
    };
    let out = ingest(&[
        "--meta",
        "precision=bf16",
        "--meta",
        "batch_size=64",
        "--meta",
        "prompt=a photo of {}, in a = b",
    ]);
    assert!(
        out.contains("meta set: precision, batch_size, prompt"),
        "{out}"
    );
    let cks = env.json(&["ls", "checkpoints", "--format", "json"]);
    let ck = cks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["checkpoint"] == "step-2")
        .unwrap();
    assert_eq!(
        ck["meta"],
        serde_json::json!({"batch_size": "64", "precision": "bf16", "prompt": "a photo of {}, in a = b"})
    );
    // The same again changes nothing; a new value is an update, reported.
    assert!(ingest(&["--meta", "precision=bf16"]).contains("nothing new"));
    assert!(ingest(&["--meta", "precision=f16"]).contains("meta set: precision"));
    // show and the reps query table carry it.
    let reps = env.json(&["ls", "reps", "--format", "json"]);
    let h = reps.as_array().unwrap()[0]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = env.json(&["show", &h[..12], "--format", "json"]);
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["meta"]["precision"] == "f16"),
        "{shown}"
    );
    let q = env.json(&[
        "query",
        "SELECT DISTINCT checkpoint, meta FROM reps ORDER BY checkpoint",
        "--format",
        "json",
    ]);
    assert_eq!(q[0]["meta"], "{}");
    let m: serde_json::Value = serde_json::from_str(q[1]["meta"].as_str().unwrap()).unwrap();
    assert_eq!(m["precision"], "f16");
    // Bad entries are refused before anything is written.
    let before = env.snapshot();
    for (bad, want) in [
        ("no-equals-sign", "not KEY=VALUE"),
        ("=empty key", "invalid meta key"),
        ("note=two\nlines", "control characters"),
    ] {
        let o = env.prh(&[
            "ingest",
            g,
            "--model",
            "m1",
            "--dataset",
            "ds",
            "--checkpoint",
            "step-3",
            "--meta",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{bad}: {err}");
    }
    assert_eq!(env.snapshot(), before);
    // A bundle carries it; a conflicting value is reported and nothing imported.
    let bundle = env.path("b.prh");
    env.ok(&["export", bundle.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["init"]);
    other.ok(&["import", bundle.to_str().unwrap()]);
    assert_eq!(
        other.json(&["ls", "checkpoints", "--format", "json"]),
        env.json(&["ls", "checkpoints", "--format", "json"])
    );
    ingest(&["--meta", "precision=f32"]);
    let conflicting = env.path("c.prh");
    env.ok(&["export", conflicting.to_str().unwrap()]);
    let o = other.prh(&["import", conflicting.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("meta precision of m1 @ step-2: f16 here, f32 in the bundle"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_name_typed_with_a_combining_accent_is_the_same_name() {
    // "café" precomposed (NFC) and as e + U+0301 (NFD: macOS file names, some keyboards) were
    // two models that print alike; every name is NFC now, on the way in and on lookup.
    let env = Env::new();
    env.ok(&["init"]);
    let (nfc, nfd) = ("caf\u{e9}", "cafe\u{301}");
    let file = |name: &str, seed: u64| {
        let p = env.path(name);
        write_npy(&p, &[32, 2, 8], &noise(32 * 2 * 8, seed));
        p.to_str().unwrap().to_string()
    };
    let (a, b, v) = (file("a.npy", 1), file("b.npy", 2), file("v.npy", 3));
    env.ok(&[
        "ingest",
        &a,
        "--model",
        nfd,
        "--dataset",
        "d\u{e9}j\u{e0}",
        "--modality",
        "language",
        "--checkpoint",
        "s1",
        "--step",
        "1",
    ]);
    // The precomposed spelling finds that model (no --modality needed) and dataset.
    env.ok(&[
        "ingest",
        &b,
        "--model",
        nfc,
        "--dataset",
        "de\u{301}ja\u{300}",
        "--checkpoint",
        "s2",
        "--step",
        "2",
    ]);
    env.ok(&[
        "ingest",
        &v,
        "--model",
        "vit",
        "--dataset",
        "d\u{e9}j\u{e0}",
        "--modality",
        "vision",
    ]);
    assert_eq!(
        common::model_names(&env),
        [nfc, "vit"],
        "stored once, as NFC"
    );
    assert_eq!(
        env.json(&["ls", "datasets", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for name in [nfc, nfd] {
        let reps = env.json(&["ls", "reps", "--model", name, "--format", "json"]);
        assert_eq!(reps.as_array().unwrap().len(), 4, "{name:?}");
        env.ok(&["score", "set", "--model", name, "acc\u{e9}=0.5"]);
        env.ok(&["align", "--metric", "cka", "--x", name, "--y", "vit", "-q"]);
        let t = env.json(&[
            "trajectory",
            "--metric",
            "cka",
            "--model",
            name,
            "--against",
            "vit",
            "--compute",
            "--format",
            "json",
        ]);
        assert_eq!(t.as_array().unwrap().len(), 2, "{name:?}: {t}");
    }
    let scores = env.json(&["ls", "scores", "--format", "json"]);
    assert_eq!(
        scores.as_array().unwrap().len(),
        1,
        "one score, set twice: {scores}"
    );
    // The dashboard's model page by either spelling.
    let s = crate::common::http::Server::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_prh")),
        &env.reg(),
        &[],
    );
    for name in [nfc, nfd] {
        let r = crate::common::http::get(
            s.addr,
            &format!("/api/model/{}", crate::common::http::enc(name)),
        );
        assert_eq!(r.status, 200, "{name:?}: {}", r.text());
    }
}

#[test]
fn rows_whose_sample_ids_are_not_the_datasets_in_order_are_refused() {
    let env = Env::new();
    env.ok(&["init"]);
    let ids: Vec<String> = (0..20).map(|i| format!("img_{i:04}")).collect();
    let write_ids = |name: &str, ids: &[String]| {
        let p = env.path(name);
        std::fs::write(&p, ids.join("\n") + "\n").unwrap();
        p
    };
    let good_ids = write_ids("ids.txt", &ids);
    let mut swapped = ids.clone();
    swapped.swap(3, 11);
    let swapped_ids = write_ids("swapped.txt", &swapped);
    // A dataset an ingest creates with --ids records them: listed with their digest
    // (`b3sum ids.txt`) and printed back in order.
    let feats = env.path("f.npy");
    write_npy(&feats, &[20, 2, 8], &noise(20 * 2 * 8, 2));
    let ingest = |model: &str, extra: &[&str]| {
        let mut a = vec![
            "ingest",
            feats.to_str().unwrap(),
            "--model",
            model,
            "--dataset",
            "wit",
            "--modality",
            "vision",
        ];
        a.extend_from_slice(extra);
        env.prh(&a)
    };
    assert!(
        ingest("a", &["--ids", good_ids.to_str().unwrap()])
            .status
            .success()
    );
    let digest = blake3::hash(&std::fs::read(&good_ids).unwrap())
        .to_hex()
        .to_string();
    let ls = env.json(&["dataset", "ls", "--format", "json"]);
    assert_eq!(ls[0]["ids_digest"], digest.as_str(), "{ls}");
    assert_eq!(
        env.ok(&["dataset", "ids", "wit"]),
        std::fs::read_to_string(&good_ids).unwrap()
    );
    // The same ids, or their digest: accepted. Two rows swapped: refused, nothing written,
    // the error names the first row out of place and says it is a reordering.
    assert!(ingest("b", &["--ids-digest", &digest]).status.success());
    let before = env.snapshot();
    let out = ingest("c", &["--ids", swapped_ids.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "a conflict");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("row 3 is sample \"img_0011\", but sample 3 of dataset wit is \"img_0003\"")
            && err.contains("the same 20 samples in another order (2 rows out of place"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
    let wrong = blake3::hash(swapped.join("\n").as_bytes())
        .to_hex()
        .to_string();
    let out = ingest("c", &["--ids-digest", &wrong]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest to"));
    assert_eq!(env.snapshot(), before, "a refused ingest wrote something");
    // A dataset made without ids cannot check them, and says how to get one that can.
    env.ok(&["dataset", "add", "plain", "--n", "20"]);
    let out = env.prh(&[
        "ingest",
        feats.to_str().unwrap(),
        "--model",
        "d",
        "--dataset",
        "plain",
        "--modality",
        "vision",
        "--ids",
        good_ids.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("records no sample ids"), "{err}");
}
