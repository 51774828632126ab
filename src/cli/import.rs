//! `prh import`: merge a bundle into this registry.

use std::path::PathBuf;

use anyhow::Result;

use super::Ctx;
use super::args::FormatArg;
use prh::bundle;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Bundles written by `prh export` or by shards (`prh align … --shard I/N --out F`),
    /// merged one after another, each all or nothing.
    #[arg(required = true, value_name = "BUNDLE")]
    pub bundles: Vec<PathBuf>,
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
    let mut reports = Vec::with_capacity(a.bundles.len());
    for path in &a.bundles {
        let r = bundle::import(&mut reg, path, &opts).map_err(|e| {
            let done = reports.len();
            anyhow::Error::new(e).context(if done == 0 {
                format!("{}: nothing imported from it", path.display())
            } else {
                format!(
                    "{}: nothing imported from it; the {done} bundle(s) before it are imported",
                    path.display()
                )
            })
        })?;
        if !matches!(a.format, FormatArg::Json) {
            println!("{}", describe(path, &r));
        }
        reports.push(r);
    }
    if matches!(a.format, FormatArg::Json) {
        // One bundle: its report; several: an array of them, in order.
        match reports.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            all => println!("{}", serde_json::to_string_pretty(all)?),
        }
    }
    Ok(())
}

/// One line on what importing `path` did.
fn describe(path: &std::path::Path, r: &bundle::ImportReport) -> String {
    let shard = match &r.shard {
        Some(s) if s.own => format!(
            " (shard {} of sweep {}, sealed by this registry: its cells served as they are)",
            s.shard, s.sweep
        ),
        Some(s) => format!(
            " (shard {} of another registry's sweep {}: treated as any foreign bundle)",
            s.shard, s.sweep
        ),
        None => String::new(),
    };
    format!(
        "imported {}{shard}: {} new blobs ({} already here), {} datasets, {} models, {} checkpoints, {} representations, {} scores, {} cached cells served ({} recomputed and equal), {} held until `prh verify --recompute` checks them",
        path.display(),
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
    )
}
