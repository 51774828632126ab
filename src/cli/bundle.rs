//! `prh export`, `prh import`, `prh verify`, `prh gc`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::{Ctx, FormatArg};
use prh::bundle;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Bundle file to write (a tar: manifest.json, catalog.db, blobs/).
    pub out: PathBuf,
    /// Only these models (comma-separated), with their blobs and cached cells.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run_export(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let reg = ctx.open()?;
    let r = bundle::export(&reg, &a.out, a.models.as_deref())?;
    match a.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        _ => println!(
            "wrote {}: {} models, {} representations, {} blobs, {} cached cells, {} bytes",
            r.path.display(),
            r.models,
            r.representations,
            r.blobs,
            r.cells,
            r.bytes
        ),
    }
    Ok(())
}

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

pub fn run_import(ctx: &Ctx, a: ImportArgs) -> Result<()> {
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
            r.blobs_new,
            r.blobs_present,
            r.datasets_new,
            r.models_new,
            r.checkpoints_new,
            r.representations_new,
            r.scores_new,
            r.cells_new,
            r.cells_checked,
            r.cells_quarantined
        ),
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Also recompute this many cached cells and compare: cells imported from bundles first
    /// (those that match are served from then on), then randomly chosen ones.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub recompute: usize,
    /// Seed for choosing the cells.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run_verify(ctx: &Ctx, a: VerifyArgs) -> Result<()> {
    let reg = ctx.open()?;
    let r = bundle::verify(&reg, a.recompute, a.seed)?;
    match a.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        _ => {
            println!(
                "checked {} blobs, recomputed {} cells ({} imported cells now trusted): {} problem(s){}",
                r.blobs_checked,
                r.cells_recomputed,
                r.cells_promoted,
                r.problems.len(),
                if !r.unreferenced_files.is_empty() {
                    format!(
                        "; {} unreferenced blob files (prh gc removes them): {}",
                        r.unreferenced_files.len(),
                        r.unreferenced_files.join(", ")
                    )
                } else {
                    String::new()
                }
            );
            for p in &r.problems {
                println!("  {p}");
            }
        }
    }
    if !r.problems.is_empty() {
        bail!("verify found {} problem(s)", r.problems.len());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// List what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run_gc(ctx: &Ctx, a: GcArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let r = bundle::gc(&mut reg, a.dry_run)?;
    match a.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        _ => {
            let verb = if r.dry_run { "would remove" } else { "removed" };
            println!(
                "{verb}: {} blobs ({} bytes), {} stale cache cells, {} stale null samples, {} staging leftovers",
                r.blobs.len(),
                r.blob_bytes,
                r.cells,
                r.null_samples,
                r.tmp_entries
            );
            if r.dry_run {
                for b in &r.blobs {
                    println!("  blob {b}");
                }
            }
        }
    }
    Ok(())
}
