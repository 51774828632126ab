//! `prh ls …` and `prh show HASH`.

use anyhow::{Result, bail};
use clap::ValueEnum;
use serde::Serialize;

use super::{Ctx, FormatArg};
use prh::catalog::RepFilter;
use prh::output;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum What {
    Models,
    Checkpoints,
    Reps,
    Scores,
    Datasets,
}

/// JSON fields (stable): models: name, modality, family, num_params;
/// checkpoints: model, checkpoint, step, created_at; reps: hash, model, checkpoint, dataset,
/// layer, pool, dtype, n, d; scores: model, checkpoint, name, value, higher_is_better;
/// datasets: name, n, description, has_ids.
#[derive(clap::Args)]
pub struct LsArgs {
    /// What to list.
    #[arg(value_enum)]
    what: What,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Only this dataset (reps).
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: FormatArg,
}

pub fn run_ls(ctx: &Ctx, a: LsArgs) -> Result<()> {
    let reg = ctx.open()?;
    let out = &mut std::io::stdout();
    let f = a.format.into();
    match a.what {
        What::Models => {
            let mut rows = reg.catalog.models()?;
            if let Some(m) = &a.model {
                rows.retain(|r| &r.name == m);
            }
            output::render(&rows, f, out)?
        }
        What::Checkpoints => output::render(&reg.catalog.checkpoints(a.model.as_deref())?, f, out)?,
        What::Reps => {
            let rows = reg.catalog.reps(&RepFilter {
                model: a.model,
                dataset: a.dataset,
                ..Default::default()
            })?;
            output::render(&rows, f, out)?
        }
        What::Scores => output::render(&reg.catalog.scores(a.model.as_deref())?, f, out)?,
        What::Datasets => output::render(&reg.catalog.datasets()?, f, out)?,
    }
    Ok(())
}

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

pub fn run_show(ctx: &Ctx, a: ShowArgs) -> Result<()> {
    let reg = ctx.open()?;
    if a.hash.len() < 4 || !a.hash.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{:?} is not a hash prefix (give at least 4 hex digits)",
            a.hash
        );
    }
    let reps = reg.catalog.reps(&RepFilter {
        hash_prefix: Some(a.hash.clone()),
        ..Default::default()
    })?;
    let mut hashes: Vec<&str> = reps.iter().map(|r| r.hash.as_str()).collect();
    hashes.dedup();
    match hashes.len() {
        0 => bail!("no representation has a hash starting with {}", a.hash),
        1 => {}
        k => bail!(
            "{} is ambiguous: {k} blobs start with it; give more digits",
            a.hash
        ),
    }
    let mut meta = reg.catalog.all_checkpoint_meta()?;
    let rows: Vec<Shown> = reps
        .into_iter()
        .map(|r| Shown {
            meta: meta.remove(&r.checkpoint_id).unwrap_or_default(),
            blob: reg
                .store
                .path(&r.hash.parse().expect("catalog hashes are valid"))
                .display()
                .to_string(),
            hash: r.hash,
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
