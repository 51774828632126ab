//! `prh show HASH`: one representation by (a prefix of) its hash.

use anyhow::{Result, bail};
use serde::Serialize;

use super::Ctx;
use super::args::FormatArg;
use prh::Error;
use prh::catalog::RepFilter;
use prh::output;
use prh::store::BlobHash;

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A hash or a unique prefix of one (at least 4 hex digits).
    hash: String,
    #[arg(long, value_enum, default_value_t)]
    format: FormatArg,
}

#[derive(Serialize)]
struct Shown {
    hash: String,
    model: String,
    modality: String,
    checkpoint: String,
    dataset: String,
    layer: i64,
    pool: String,
    dtype: String,
    n: usize,
    d: usize,
    /// How the file gave the checkpoint's layers (`stacked`, `layers`; null if not recorded).
    layout: Option<String>,
    blob: String,
    /// The checkpoint's provenance (`--meta`).
    meta: std::collections::BTreeMap<String, String>,
}

pub fn run(ctx: &Ctx, a: ShowArgs) -> Result<()> {
    let reg = ctx.open()?;
    if a.hash.len() < 4 || !a.hash.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(Error::Invalid(format!(
            "{:?} is not a hash prefix (give at least 4 hex digits)",
            a.hash
        )));
    }
    let reps = reg.catalog.reps(&RepFilter {
        hash_prefix: Some(a.hash.clone()),
        ..Default::default()
    })?;
    let mut hashes: Vec<BlobHash> = reps.iter().map(|r| r.hash).collect();
    hashes.dedup();
    match hashes.len() {
        0 => bail!(Error::NotFound(format!(
            "no representation has a hash starting with {}",
            a.hash
        ))),
        1 => {}
        k => bail!(Error::Invalid(format!(
            "{} is ambiguous: {k} blobs start with it; give more digits",
            a.hash
        ))),
    }
    let mut meta = reg.catalog.checkpoint_meta()?;
    let rows: Vec<Shown> = reps
        .into_iter()
        .map(|r| Shown {
            meta: meta.remove(&r.checkpoint_id).unwrap_or_default(),
            blob: reg.store.location(&r.hash),
            hash: r.hash.to_hex(),
            model: r.model,
            modality: r.modality,
            checkpoint: r.checkpoint,
            dataset: r.dataset,
            layer: r.layer,
            pool: r.pool,
            dtype: r.dtype,
            n: r.n,
            d: r.d,
            layout: r.layout,
        })
        .collect();
    match a.format {
        FormatArg::Table => {
            let r = &rows[0];
            println!("hash      {}", r.hash);
            println!("shape     {} × {} {}", r.n, r.d, r.dtype);
            println!("blob      {}", r.blob);
            for r in &rows {
                println!(
                    "used by   {} ({}) @ {}, dataset {}, layer {}, pool {}, layout {}",
                    r.model,
                    r.modality,
                    r.checkpoint,
                    r.dataset,
                    r.layer,
                    r.pool,
                    r.layout.as_deref().unwrap_or("not recorded")
                );
                for (k, v) in &r.meta {
                    println!("  meta    {k} = {v}");
                }
            }
        }
        f => output::render(&rows, f.into(), &mut std::io::stdout())?,
    }
    Ok(())
}
