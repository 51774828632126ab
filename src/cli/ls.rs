//! `prh ls …`: list models, checkpoints, representations, scores or datasets.

use anyhow::Result;
use clap::ValueEnum;

use super::Ctx;
use super::args::FormatArg;
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

pub fn run(ctx: &Ctx, a: LsArgs) -> Result<()> {
    let reg = ctx.open()?;
    let out = &mut std::io::stdout();
    let f = a.format.into();
    let a = LsArgs {
        model: a.model.as_deref().map(prh::names::nfc),
        ..a
    };
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
