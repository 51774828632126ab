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
    /// Seconds an unnamed blob in a shared object store (S3) must have existed before gc
    /// removes it: a writer on another machine running an older prh may be between uploading
    /// it and committing its rows. 0 when nobody else writes.
    #[arg(long, value_name = "SECONDS", default_value_t = prh::store::ORPHAN_MIN_AGE.as_secs())]
    pub min_age: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run(ctx: &Ctx, a: GcArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let r = bundle::gc(
        &mut reg,
        bundle::GcOptions {
            dry_run: a.dry_run,
            min_age: std::time::Duration::from_secs(a.min_age),
        },
    )?;
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
                    "kept: {} unnamed blobs written to the shared store less than {} s ago (a writer elsewhere may still name them; a later gc removes them, or --min-age 0)",
                    r.young_blobs_kept, a.min_age
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
