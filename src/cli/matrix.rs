//! `prh matrix`: the model × model alignment table (and heatmap).

use anyhow::Result;

use super::Ctx;
use super::args::{MetricArgs, ViewArgs};
use super::pairs::{compute, one_view};
use super::progress::Bar;
use prh::views::{CellValue, NullSpec};

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
    /// What the cells hold: each pair's score, or from its permutation null (needs --null):
    /// its p-value, its Benjamini–Hochberg q-value among the table's pairs (call a pair
    /// aligned at q ≤ 0.05 and at most 5 % of such calls are expected false), or its
    /// calibrated score. Rows then carry `values`.
    #[arg(long, value_name = "WHAT", default_value = "score", value_parser = cell_values())]
    pub values: String,
    /// Permutations of the null per model pair (computed once, cached), for --values.
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub null: usize,
    /// Seed of the permutations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Level α of the calibration threshold, for --values calibrated.
    #[arg(long, default_value_t = prh::stats::DEFAULT_ALPHA)]
    pub alpha: f64,
    #[command(flatten)]
    pub view: ViewArgs,
}

fn cell_values() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(CellValue::ALL.map(CellValue::key))
}

pub fn run(ctx: &Ctx, a: MatrixArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let view = one_view(&a.metric)?;
    let values: CellValue = a.values.parse()?;
    let lower = a.lower_is_better.then_some(true);
    // A null fills what is missing anyway; --compute fills the scores' cells.
    if a.view.compute && a.null == 0 {
        compute(&mut reg, &view, (a.x.parse()?, a.y.parse()?), false, None)?;
    }
    let null = NullSpec {
        permutations: a.null,
        seed: a.seed,
        alpha: a.alpha,
    };
    let bar = Bar::new(false);
    let m = view.value_matrix(
        &mut reg,
        (&a.x, &a.y),
        (a.perf.as_deref(), lower),
        null,
        values,
        &bar,
    )?;
    drop(bar);
    if let Some(p) = &a.view.plot {
        let label = match m.holds {
            Some(h) => format!("{} {h}", view.label()),
            None => view.label(),
        };
        prh::plot::matrix(p, &m, &label)?;
        eprintln!("plot: {}", p.display());
    }
    a.view.out.rows(&view.matrix_rows(&m))
}
