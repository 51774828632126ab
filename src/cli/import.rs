//! `prh import`: merge a bundle into this registry.

use std::path::PathBuf;

use anyhow::Result;

use super::Ctx;
use super::args::FormatArg;
use prh::bundle;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Bundle written by `prh export`.
    pub bundle: PathBuf,
    /// Serve the bundle's cached cells (and null samples) as they are. Without it they are
    /// held apart (`imported_cells`) until `prh verify --recompute N` recomputes them, and
    /// sweeps compute their own.
    #[arg(long)]
    pub trust_cells: bool,
    /// Recompute this many of the bundle's cached cells before importing anything; one wrong
    /// value refuses the bundle.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub check_cells: usize,
    /// Seed for choosing the cells to check.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Roll the import back if merging takes longer than this.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub max_seconds: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let opts = bundle::ImportOptions {
        trust_cells: a.trust_cells,
        check_cells: a.check_cells,
        seed: a.seed,
        max_seconds: a.max_seconds,
    };
    let r = bundle::import(&mut reg, &a.bundle, &opts)?;
    match a.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        _ => println!(
            "imported {}: {} new blobs ({} already here), {} datasets, {} models, {} checkpoints, {} representations, {} scores, {} cached cells served ({} recomputed and equal), {} held until `prh verify --recompute` checks them",
            a.bundle.display(),
            r.merged.blobs_new,
            r.merged.blobs_present,
            r.merged.datasets_new,
            r.merged.models_new,
            r.merged.checkpoints_new,
            r.merged.representations_new,
            r.merged.scores_new,
            r.merged.cells_new,
            r.cells_checked,
            r.merged.cells_quarantined
        ),
    }
    Ok(())
}
