//! `prh verify`: re-hash blobs and recompute cached cells.

use anyhow::{Result, bail};

use super::Ctx;
use super::args::FormatArg;
use prh::Error;
use prh::bundle;

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

pub fn run(ctx: &Ctx, a: VerifyArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let r = bundle::verify(&mut reg, a.recompute, a.seed)?;
    match a.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        _ => {
            println!(
                "checked {} blobs and {} kNN graphs, recomputed {} cells ({} imported cells now trusted): {} problem(s){}",
                r.blobs_checked,
                r.graphs_checked,
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
        bail!(Error::Corrupt(format!(
            "verify found {} problem(s)",
            r.problems.len()
        )));
    }
    Ok(())
}
