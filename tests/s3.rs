//! Blobs in S3: a real S3-protocol server (moto's server mode, from PyPI, in the test
//! virtualenv) on loopback, talked to over HTTP by the object_store client. The blob-store
//! contract, then a registry whose blobs live in a bucket used end to end through the CLI.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Env;
use common::s3::Moto;
use prh::store::{BlobStore, ObjectBlobStore};

fn prh(env: &Env, reg: &Path, moto: &Moto, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(reg)
        .args(args)
        .current_dir(env.dir.path())
        .envs(moto.env())
        .env_remove("PRH_REGISTRY")
        .env_remove("PRH_BLOBS")
        .env_remove("PRH_CATALOG")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "prh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn files(env: &Env) -> Vec<(PathBuf, &'static str, &'static str)> {
    let mut out = vec![];
    for (i, (model, modality)) in [("lm", "language"), ("vit", "vision"), ("lm2", "language")]
        .into_iter()
        .enumerate()
    {
        let p = env.path(&format!("{model}.npy"));
        common::write_npy(&p, &[64, 3, 24], &common::noise(64 * 3 * 24, 7 + i as u64));
        out.push((p, model, modality));
    }
    out
}

#[test]
fn blobs_in_s3_keep_the_contract_and_serve_a_whole_registry() {
    let moto = Moto::start();
    moto.bucket("prh-contract");
    moto.bucket("prh-team");
    let staging = tempfile::tempdir().unwrap();
    let store = ObjectBlobStore::open_s3_with(
        "s3://prh-contract/some/prefix",
        staging.path().into(),
        &moto.env(),
    )
    .unwrap();
    prh::store::conformance::check(&store);
    assert_eq!(
        std::fs::read_dir(staging.path()).unwrap().count(),
        0,
        "staging left behind"
    );

    // A registry with its blobs in the bucket, and the same inputs in a local one.
    let env = Env::new();
    let (team, local) = (env.path("team"), env.path("local"));
    prh(
        &env,
        &team,
        &moto,
        &["init", "--blobs", "s3://prh-team/lab/zoo"],
    );
    let config = std::fs::read_to_string(team.join("config.json")).unwrap();
    assert!(
        config.contains("s3://prh-team/lab/zoo") && !config.contains("prh-test-secret"),
        "{config}"
    );
    prh(&env, &local, &moto, &["init"]);
    for (path, model, modality) in files(&env) {
        for reg in [&team, &local] {
            prh(
                &env,
                reg,
                &moto,
                &[
                    "ingest",
                    path.to_str().unwrap(),
                    "--model",
                    model,
                    "--dataset",
                    "ds",
                    "--modality",
                    modality,
                ],
            );
        }
    }
    assert!(
        !team.join("blobs").exists(),
        "blobs went to the local directory"
    );
    let align = [
        "align",
        "--metric",
        "mutual_knn",
        "--x",
        "modality=language",
        "--y",
        "vit",
        "--null",
        "20",
        "--format",
        "json",
        "-q",
    ];
    let scores = |out: String| -> Vec<(String, f64)> {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["x_model"].as_str().unwrap().into(),
                    r["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        scores(prh(&env, &team, &moto, &align)),
        scores(prh(&env, &local, &moto, &align))
    );
    // The bucket holds exactly the catalog's blobs, under the prefix.
    let s3 =
        ObjectBlobStore::open_s3_with("s3://prh-team/lab/zoo", staging.path().into(), &moto.env())
            .unwrap();
    let reps: serde_json::Value = serde_json::from_str(&prh(
        &env,
        &team,
        &moto,
        &["ls", "reps", "--format", "json"],
    ))
    .unwrap();
    let mut want: Vec<String> = reps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hash"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    want.dedup();
    let have: Vec<String> = s3.list().unwrap().iter().map(|h| h.to_hex()).collect();
    assert_eq!(have, want);
    assert!(
        s3.location(&s3.list().unwrap()[0])
            .starts_with("s3://prh-team/lab/zoo/blobs/")
    );
    // verify re-reads every blob from the bucket; export → import moves the registry local.
    let v = prh(&env, &team, &moto, &["verify"]);
    assert!(
        v.contains(&format!("checked {} blobs", want.len())) && v.contains(": 0 problem(s)"),
        "{v}"
    );
    let bundle = env.path("zoo.prh");
    prh(&env, &team, &moto, &["export", bundle.to_str().unwrap()]);
    let moved = env.path("moved");
    prh(&env, &moved, &moto, &["init"]);
    prh(&env, &moved, &moto, &["import", bundle.to_str().unwrap()]);
    assert_eq!(
        scores(prh(&env, &moved, &moto, &align)),
        scores(prh(&env, &local, &moto, &align))
    );
    // gc through the bucket: a stray blob there is kept while it is young (a writer elsewhere
    // may still name it), then found and removed, the rest kept.
    let (stray, _) = s3
        .put(&mut &b"not referenced by the catalog"[..], None)
        .unwrap();
    let kept: serde_json::Value =
        serde_json::from_str(&prh(&env, &team, &moto, &["gc", "--format", "json"])).unwrap();
    assert_eq!(kept["young_blobs_kept"], 1, "{kept}");
    assert!(s3.exists(&stray).unwrap());
    prh(&env, &team, &moto, &["gc", "--min-age", "0"]);
    assert!(!s3.exists(&stray).unwrap());
    assert_eq!(s3.list().unwrap().len(), want.len());
    // A bucket that does not exist: one line naming the store, no credentials in it.
    let bad = env.path("bad");
    prh(
        &env,
        &bad,
        &moto,
        &["init", "--blobs", "s3://no-such-bucket/x"],
    );
    let o = Command::new(env!("CARGO_BIN_EXE_prh"))
        .arg("--registry")
        .arg(&bad)
        .args([
            "ingest",
            files(&env)[0].0.to_str().unwrap(),
            "--model",
            "m",
            "--dataset",
            "ds",
            "--modality",
            "language",
        ])
        .envs(moto.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("blob store") && !err.contains("prh-test-secret"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
