//! Every container of the same features yields the same representations (docs/design.md §3).

use crate::common;

use common::{Env, fixture};
use serde_json::Value;

fn ingest_hashes(env: &Env, file: &str, model: &str) -> Value {
    env.json(&[
        "ingest",
        fixture(&format!("reference/{file}")).to_str().unwrap(),
        "--model",
        model,
        "--dataset",
        "ref",
        "--modality",
        "vision",
        "--format",
        "json",
    ])
}

fn hashes(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["hash"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn float32_containers_hash_identically_and_blob_names_are_their_blake3() {
    let env = Env::new();
    env.ok(&["init"]);
    let base = hashes(&ingest_hashes(&env, "pipeline_y.npy", "npy"));
    assert_eq!(base.len(), 4);
    for (file, model) in [
        ("pipeline_y.npz", "npz"),
        ("pipeline_y.safetensors", "safetensors"),
        ("pipeline_y_list.pt", "ptlist"),
    ] {
        let r = ingest_hashes(&env, file, model);
        assert_eq!(hashes(&r), base, "{file}");
        // Same content: no new blob was written.
        assert!(
            r["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["new_blob"] == false)
        );
    }
    for h in &base {
        let p = env.reg().join("blobs").join(&h[..2]).join(h);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), h);
        assert_eq!(bytes.len(), 32 + 150 * 96 * 4);
    }
}

#[test]
fn half_precision_containers_decode_to_the_f32_values_within_rounding() {
    let y = prh::formats::open(&fixture("reference/pipeline_y.npy")).unwrap();
    for (file, rel) in [
        ("pipeline_y_bf16.pt", 2f32.powi(-8)),
        ("pipeline_y_f16.npy", 2f32.powi(-11)),
    ] {
        let f = prh::formats::open(&fixture(&format!("reference/{file}"))).unwrap();
        assert_eq!(f.layers.len(), 4, "{file}");
        for l in 0..4 {
            let a = y.layer(l).to_f32();
            let b = f.layer(l).to_f32();
            assert_eq!(a.dim(), b.dim());
            for (x, z) in a.iter().zip(b.iter()) {
                assert!(
                    (x - z).abs() <= rel * x.abs() + 1e-6,
                    "{file} layer {l}: {x} vs {z}"
                );
            }
        }
    }
}

#[test]
fn pt_metadata_becomes_model_params_and_scores() {
    let env = Env::new();
    env.ok(&["init"]);
    ingest_hashes(&env, "pipeline_x.pt", "x");
    let models = env.json(&["ls", "models", "--format", "json"]);
    assert_eq!(models[0]["num_params"], 1234567);
    let scores = env.json(&["ls", "scores", "--format", "json"]);
    let get = |name: &str| {
        scores
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(get("loss")["value"], 2.5);
    assert_eq!(get("bpb")["value"], 0.875);
    assert_eq!(get("bpb")["higher_is_better"], false);
    // The .pt holds the same float32 features as the .npy.
    let npy = ingest_hashes(&env, "pipeline_x.npy", "x-npy");
    let reps = env.json(&["ls", "reps", "--model", "x", "--format", "json"]);
    let pt_hashes: Vec<&str> = reps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hash"].as_str().unwrap())
        .collect();
    assert_eq!(pt_hashes, hashes(&npy));
}
