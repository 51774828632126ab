//! `prh trajectory`: one model's alignment across its training checkpoints.

use anyhow::{Result, bail};

use super::Ctx;
use super::args::{MetricArgs, ViewArgs};
use super::pairs::{Fill, compute, label, metric_flags, one_spec, to_rows, with_reduce};
use prh::analysis;
use prh::sweep::{self, Selector};

#[derive(clap::Args)]
pub struct TrajectoryArgs {
    #[command(flatten)]
    pub metric: MetricArgs,
    /// The model whose checkpoints are followed.
    #[arg(long)]
    pub model: String,
    /// Reference models (their latest checkpoints).
    #[arg(long)]
    pub against: String,
    #[command(flatten)]
    pub view: ViewArgs,
}

pub fn run(ctx: &Ctx, a: TrajectoryArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let (spec, prep, kind) = one_spec(&a.metric)?;
    if a.view.compute {
        compute(
            &mut reg,
            Fill::cells(spec, prep, a.metric.reduce, true),
            Selector::Names(vec![a.model.clone()]),
            a.against.parse()?,
        )?;
    }
    let cks = reg.catalog.checkpoints(Some(&a.model))?;
    if cks.is_empty() {
        bail!("model {} has no checkpoints", a.model);
    }
    let refs = sweep::select_models(&reg, &a.against.parse()?)?;
    let ri = analysis::latest(&reg, &refs)?;
    let x_ids: Vec<prh::catalog::CheckpointId> = cks.iter().map(|c| c.id).collect();
    let y_ids: Vec<prh::catalog::CheckpointId> = refs.iter().map(|m| ri[m]).collect();
    let hint = format!(
        "prh align {} --x {} --y {} --all-checkpoints",
        metric_flags(&spec, prep, a.metric.reduce),
        a.model,
        a.against
    );
    let mut pairs =
        analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &y_ids, &hint)?;
    let steps: std::collections::HashMap<prh::catalog::CheckpointId, Option<i64>> =
        cks.iter().map(|c| (c.id, c.step)).collect();
    for p in &mut pairs {
        p.x_step = steps.get(&p.x_checkpoint_id).copied().flatten();
    }
    let points = analysis::trajectory(&pairs);
    if let Some(p) = &a.view.plot {
        prh::plot::trajectory(p, &points, &a.model, &label(&spec, a.metric.reduce))?;
        eprintln!("plot: {}", p.display());
    }
    a.view
        .out
        .rows(&with_reduce(to_rows(&points), a.metric.reduce))
}
