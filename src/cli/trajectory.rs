//! `prh trajectory`: one model's alignment across its training checkpoints.

use anyhow::Result;

use super::Ctx;
use super::args::{MetricArgs, ViewArgs};
use super::pairs::{compute, one_view, to_rows, with_reduce};
use prh::sweep::Selector;

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
    let view = one_view(&a.metric)?;
    if a.view.compute {
        let sel = (Selector::Names(vec![a.model.clone()]), a.against.parse()?);
        compute(&mut reg, &view, sel, true, None)?;
    }
    let points = view.trajectory(&reg, &a.model, &a.against)?;
    if let Some(p) = &a.view.plot {
        prh::plot::trajectory(p, &points, &a.model, &view.label())?;
        eprintln!("plot: {}", p.display());
    }
    a.view.out.rows(&with_reduce(to_rows(&points), view.reduce))
}
