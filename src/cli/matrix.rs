//! `prh matrix`: the model × model alignment table (and heatmap).

use anyhow::Result;
use serde_json::Value;

use super::Ctx;
use super::args::{MetricArgs, ViewArgs};
use super::pairs::{Fill, compute, label, metric_flags, one_spec};
use prh::analysis;
use prh::sweep;

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
    let (spec, prep, kind) = one_spec(&a.metric)?;
    if a.view.compute {
        compute(
            &mut reg,
            Fill::cells(spec, prep, a.metric.reduce, false),
            a.x.parse()?,
            a.y.parse()?,
        )?;
    }
    let mut xm = sweep::select_models(&reg, &a.x.parse()?)?;
    let mut ym = sweep::select_models(&reg, &a.y.parse()?)?;
    let lower = a.lower_is_better.then_some(true);
    if let Some(p) = &a.perf {
        xm = analysis::order_by_perf(&reg, &xm, p, lower)?;
        ym = analysis::order_by_perf(&reg, &ym, p, lower)?;
    }
    let xi = analysis::latest(&reg, &xm)?;
    let yi = analysis::latest(&reg, &ym)?;
    let x_ids: Vec<prh::catalog::CheckpointId> = xm.iter().map(|m| xi[m]).collect();
    let y_ids: Vec<prh::catalog::CheckpointId> = ym.iter().map(|m| yi[m]).collect();
    let hint = format!(
        "prh align {} --x {} --y {}",
        metric_flags(&spec, prep, a.metric.reduce),
        a.x,
        a.y
    );
    let pairs = analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &y_ids, &hint)?;
    let m = analysis::matrix(&pairs, &xm, &ym);
    if let Some(p) = &a.view.plot {
        prh::plot::matrix(p, &m, &label(&spec, a.metric.reduce))?;
        eprintln!("plot: {}", p.display());
    }
    let rows: Vec<Value> = m
        .rows
        .iter()
        .zip(&m.values)
        .map(|(r, vals)| {
            let mut o = serde_json::Map::new();
            o.insert("model".into(), r.clone().into());
            o.insert("reduce".into(), a.metric.reduce.key().into());
            for (c, v) in m.cols.iter().zip(vals) {
                o.insert(c.clone(), v.map(Value::from).unwrap_or(Value::Null));
            }
            Value::Object(o)
        })
        .collect();
    a.view.out.rows(&rows)
}
