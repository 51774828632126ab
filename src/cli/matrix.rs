//! `prh matrix`: the model × model alignment table (and heatmap).

use anyhow::Result;

use super::Ctx;
use super::args::{MetricArgs, ViewArgs};
use super::pairs::{compute, one_view};

#[derive(clap::Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub metric: MetricArgs,
    /// Row models.
    #[arg(long)]
    pub x: String,
    /// Column models.
    #[arg(long)]
    pub y: String,
    /// Order rows and columns by this score (worst to best).
    #[arg(long)]
    pub perf: Option<String>,
    #[arg(long)]
    pub lower_is_better: bool,
    #[command(flatten)]
    pub view: ViewArgs,
}

pub fn run(ctx: &Ctx, a: MatrixArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let view = one_view(&a.metric)?;
    if a.view.compute {
        compute(&mut reg, &view, (a.x.parse()?, a.y.parse()?), false, None)?;
    }
    let lower = a.lower_is_better.then_some(true);
    let m = view.matrix(&reg, (&a.x, &a.y), a.perf.as_deref(), lower)?;
    if let Some(p) = &a.view.plot {
        prh::plot::matrix(p, &m, &view.label())?;
        eprintln!("plot: {}", p.display());
    }
    a.view.out.rows(&view.matrix_rows(&m))
}
