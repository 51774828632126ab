//! `prh gc`: remove unreferenced blobs, stale cache rows and staging leftovers.

use anyhow::Result;

use super::Ctx;
use super::args::FormatArg;
use prh::bundle;

#[derive(clap::Args)]
pub struct GcArgs {
    /// List what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run(ctx: &Ctx, a: GcArgs) -> Result<()> {
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
            if r.young_blobs_kept > 0 {
                println!(
                    "kept: {} unnamed blobs written to the shared store within the last hour (a writer elsewhere may still name them; a later gc removes them)",
                    r.young_blobs_kept
                );
            }
            if r.dry_run {
                for b in &r.blobs {
                    println!("  blob {b}");
                }
            }
        }
    }
    Ok(())
}
