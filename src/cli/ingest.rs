//! `prh ingest FILE --model M --dataset D ...`.

use std::path::PathBuf;

use anyhow::Result;

use super::args::FormatArg;
use super::{Ctx, parse_scores};
use prh::registry::IngestRequest;
use prh::samples::SampleIds;

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Feature file: .npy (n×d or n×L×d), .npz, .safetensors, or platonic-rep .pt.
    pub file: PathBuf,
    /// Model name (created on first use; then --modality is required).
    #[arg(long)]
    pub model: String,
    /// Dataset name (created on first use with n taken from the file).
    #[arg(long)]
    pub dataset: String,
    /// Modality of a new model (language, vision, audio, ...); must agree for a known model.
    #[arg(long)]
    pub modality: Option<String>,
    /// Model family (e.g. llama, dinov2), for selecting models later.
    #[arg(long)]
    pub family: Option<String>,
    /// How tokens or patches were pooled into one vector per sample (avg, cls, last, ...).
    #[arg(long, default_value = "avg")]
    pub pool: String,
    /// Checkpoint name (default: "final").
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Training step of the checkpoint (orders checkpoints in trajectories).
    #[arg(long)]
    pub step: Option<i64>,
    /// Scores of the checkpoint as NAME=VALUE (repeatable), e.g. --score bpb=0.61.
    #[arg(long = "score", value_name = "NAME=VALUE")]
    pub scores: Vec<String>,
    /// Number of model parameters (a .pt file's num_params is used otherwise).
    #[arg(long)]
    pub num_params: Option<i64>,
    /// Provenance of the features as KEY=VALUE (repeatable): precision, batch size, prompt,
    /// pooling detail, code revision, ... Stored with the checkpoint, shown by `ls
    /// checkpoints` and `show`, a column of the `reps` query table, carried by bundles.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// File with the sample id of each row, one per line, in row order: the ingest is refused
    /// (nothing written) unless they are the dataset's samples in the dataset's order; a
    /// dataset this ingest creates records them.
    #[arg(long, value_name = "FILE", conflicts_with = "ids_digest")]
    pub ids: Option<PathBuf>,
    /// The digest of the rows' sample ids instead (`b3sum` of the ids file; `prh dataset ls`
    /// shows each dataset's), checked the same way.
    #[arg(long, value_name = "HEX")]
    pub ids_digest: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

impl IngestArgs {
    /// The library request these arguments describe.
    pub fn request(&self) -> Result<IngestRequest> {
        Ok(IngestRequest {
            model: self.model.clone(),
            dataset: self.dataset.clone(),
            modality: self.modality.clone(),
            family: self.family.clone(),
            pool: self.pool.clone(),
            checkpoint: self.checkpoint.clone(),
            step: self.step,
            scores: parse_scores(&self.scores)?,
            num_params: self.num_params,
            meta: self
                .meta
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                        .ok_or_else(|| super::invalid(format!("meta {s:?} is not KEY=VALUE")))
                })
                .collect::<Result<_>>()?,
            sample_ids: match (&self.ids, &self.ids_digest) {
                (Some(p), _) => {
                    let text = std::fs::read_to_string(p).map_err(|e| prh::Error::io(p, e))?;
                    Some(SampleIds::Ids(prh::samples::parse_lines(&text)))
                }
                (None, Some(d)) => Some(SampleIds::digest_of(d)?),
                (None, None) => None,
            },
        })
    }
}

pub fn run(ctx: &Ctx, a: IngestArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let report = reg.ingest(&a.file, &a.request()?)?;
    match a.format {
        FormatArg::Json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        _ => {
            if report.dataset_created {
                println!(
                    "new dataset {} with n = {} (taken from the file)",
                    report.dataset, report.n
                );
            }
            if report.model_created {
                println!("new model {}", report.model);
            }
            if report.unchanged() {
                println!(
                    "{}: already ingested as {} @ {} ({} layers); nothing new",
                    a.file.display(),
                    report.model,
                    report.checkpoint,
                    report.layers.len()
                );
                return Ok(());
            }
            if report.layouts_recorded > 0 {
                println!(
                    "{}: recorded the layout of {} layers ingested before layouts were kept ({})",
                    a.file.display(),
                    report.layouts_recorded,
                    report.layout
                );
            }
            let new_rows = report.layers.iter().filter(|l| l.new_row).count();
            let new_blobs = report.layers.iter().filter(|l| l.new_blob).count();
            println!(
                "{}: {} @ {} on {}: {} layers (n = {}, {}), {} new representations, {} new blobs",
                a.file.display(),
                report.model,
                report.checkpoint,
                report.dataset,
                report.layers.len(),
                report.n,
                match report.layout {
                    "layers" => "per-layer arrays: clamped layer by layer",
                    _ => "one tensor: clamped over all layers",
                },
                new_rows,
                new_blobs
            );
            for l in &report.layers {
                println!(
                    "  layer {:>3}  {}  {} × {} {}{}",
                    l.layer,
                    &l.hash.to_hex()[..16],
                    report.n,
                    l.d,
                    l.dtype,
                    if l.new_row { "" } else { "  (already present)" }
                );
            }
            if !report.meta_changed.is_empty() {
                println!("meta set: {}", report.meta_changed.join(", "));
            }
            if !report.scores_changed.is_empty() {
                println!("scores set: {}", report.scores_changed.join(", "));
            }
        }
    }
    Ok(())
}
