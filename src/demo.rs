//! A small deterministic synthetic zoo for `prh demo` and for tests: language-like and
//! vision-like models whose features share a latent signal that grows with each model's
//! quality, and a performance score that grows with quality too. Under the Platonic
//! Representation Hypothesis, better models should then align more.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::formats::{npy, safetensors};
use crate::registry::{IngestReport, IngestRequest, Registry};
use crate::rng::Rng;

/// One synthetic model checkpoint.
#[derive(Debug, Clone)]
pub struct ZooModel {
    pub name: String,
    pub modality: &'static str,
    pub family: &'static str,
    /// Quality in (0, 1): the share of the shared latent in the features.
    pub quality: f64,
    pub layers: usize,
    pub d: usize,
    pub checkpoint: String,
    pub step: i64,
    /// (score name, value, higher is better).
    pub score: (&'static str, f64, bool),
}

/// Shape of a zoo.
#[derive(Debug, Clone)]
pub struct ZooSpec {
    pub n: usize,
    pub latent_dim: usize,
    pub seed: u64,
    pub models: Vec<ZooModel>,
}

impl ZooSpec {
    /// The demo zoo: 6 language models (scored by bpb, lower is better), 6 vision models
    /// (scored by a higher-is-better accuracy), and 3 earlier training checkpoints of
    /// lm-large; n = 256 samples, 6 layers each.
    pub fn demo() -> Self {
        let mut models = Vec::new();
        for (i, (name, q)) in [
            ("lm-tiny", 0.15),
            ("lm-small", 0.3),
            ("lm-base", 0.45),
            ("lm-large", 0.6),
            ("lm-xl", 0.75),
            ("lm-xxl", 0.9),
        ]
        .into_iter()
        .enumerate()
        {
            models.push(ZooModel {
                name: name.into(),
                modality: "language",
                family: "lm",
                quality: q,
                layers: 6,
                d: 64 + 24 * i,
                checkpoint: "final".into(),
                step: 10_000,
                score: ("bpb", 1.3 - 0.8 * q, false),
            });
        }
        for (i, (name, q)) in [
            ("vit-s", 0.2),
            ("vit-b", 0.35),
            ("vit-l", 0.5),
            ("vit-h", 0.65),
            ("vit-g", 0.8),
            ("vit-e", 0.9),
        ]
        .into_iter()
        .enumerate()
        {
            models.push(ZooModel {
                name: name.into(),
                modality: "vision",
                family: "vit",
                quality: q,
                layers: 6,
                d: 96 + 24 * i,
                checkpoint: "final".into(),
                step: 10_000,
                score: ("accuracy", 0.3 + 0.6 * q, true),
            });
        }
        for (step, q) in [(2_500, 0.2), (5_000, 0.35), (7_500, 0.5)] {
            models.push(ZooModel {
                name: "lm-large".into(),
                modality: "language",
                family: "lm",
                quality: q,
                layers: 6,
                d: 64 + 24 * 3,
                checkpoint: format!("step-{step}"),
                step,
                score: ("bpb", 1.3 - 0.8 * q, false),
            });
        }
        ZooSpec {
            n: 256,
            latent_dim: 16,
            seed: 0,
            models,
        }
    }

    /// Features of one model: n × layers × d, row-major. Layer l mixes the shared latent
    /// (weight quality × a bump peaking at 70% depth) with the model's own private signal,
    /// through a random projection per layer and a tanh.
    pub fn features(&self, m: &ZooModel) -> Vec<f32> {
        let n = self.n;
        let r = self.latent_dim;
        let mut shared = Rng::new(self.seed);
        let z: Vec<f64> = (0..n * r).map(|_| shared.normal()).collect();
        let mut own = Rng::new(self.seed ^ fxhash(&m.name) ^ (m.step as u64).rotate_left(17));
        let private: Vec<f64> = (0..n * r).map(|_| own.normal()).collect();
        let mut out = vec![0f32; n * m.layers * m.d];
        for l in 0..m.layers {
            let depth = l as f64 / (m.layers - 1).max(1) as f64;
            let w_shared = m.quality * (-(depth - 0.7).powi(2) / 0.15).exp();
            let w_private = 1.0 - w_shared;
            let proj: Vec<f64> = (0..2 * r * m.d)
                .map(|_| own.normal() / (r as f64).sqrt())
                .collect();
            for i in 0..n {
                for j in 0..m.d {
                    let mut v = 0.0;
                    for t in 0..r {
                        v += w_shared * z[i * r + t] * proj[t * m.d + j]
                            + w_private * private[i * r + t] * proj[(r + t) * m.d + j];
                    }
                    v += 0.3 * own.normal();
                    out[(i * m.layers + l) * m.d + j] = v.tanh() as f32 * 3.0;
                }
            }
        }
        out
    }

    /// Writes every model's features to `dir` (language models as `.npy` n × L × d, vision
    /// models as `.safetensors` with one tensor per layer) and returns the paths.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<(ZooModel, PathBuf)>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut out = Vec::new();
        for m in &self.models {
            let feats = self.features(m);
            let stem = format!("{}_{}", m.name, m.checkpoint);
            let (path, bytes) = if m.modality == "vision" {
                let layers: Vec<Vec<f32>> = (0..m.layers)
                    .map(|l| {
                        (0..self.n)
                            .flat_map(|i| {
                                let at = (i * m.layers + l) * m.d;
                                feats[at..at + m.d].to_vec()
                            })
                            .collect()
                    })
                    .collect();
                let names: Vec<String> = (0..m.layers).map(|l| format!("blocks.{l}")).collect();
                let tensors: Vec<(&str, Vec<usize>, &[f32])> = names
                    .iter()
                    .zip(&layers)
                    .map(|(nm, d)| (nm.as_str(), vec![self.n, m.d], d.as_slice()))
                    .collect();
                (
                    dir.join(format!("{stem}.safetensors")),
                    safetensors::encode_f32(&tensors),
                )
            } else {
                (
                    dir.join(format!("{stem}.npy")),
                    npy::encode_f32(&[self.n, m.layers, m.d], &feats),
                )
            };
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
            out.push((m.clone(), path));
        }
        Ok(out)
    }

    /// Writes the files and ingests them into `reg` on dataset `dataset`, with scores.
    pub fn ingest_into(
        &self,
        reg: &mut Registry,
        dir: &Path,
        dataset: &str,
    ) -> Result<Vec<IngestReport>> {
        let files = self.write_files(dir)?;
        let mut reports = Vec::new();
        for (m, path) in files {
            let req = IngestRequest {
                model: m.name.clone(),
                dataset: dataset.to_string(),
                modality: Some(m.modality.to_string()),
                family: Some(m.family.to_string()),
                pool: "avg".into(),
                checkpoint: Some(m.checkpoint.clone()),
                step: Some(m.step),
                scores: vec![],
                num_params: None,
                meta: vec![],
                sample_ids: None,
            };
            reports.push(reg.ingest(&path, &req)?);
            reg.set_scores(
                &m.name,
                Some(&m.checkpoint),
                &[(m.score.0.to_string(), m.score.1)],
                Some(m.score.2),
            )?;
        }
        Ok(reports)
    }
}

/// A stable 64-bit hash of a string (FNV-1a), for per-model seeds.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
