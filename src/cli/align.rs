//! `prh align`: sweep selected model pairs through the cache.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use super::args::{FormatArg, SweepArgs};
use super::progress::Bar;
use prh::output;
use prh::sweep::{self, PairResult};

#[derive(clap::Args)]
pub struct AlignArgs {
    /// X models: names (a,b), modality=…, family=… or all.
    #[arg(long)]
    pub x: String,
    /// Y models: names (a,b), modality=…, family=… or all.
    #[arg(long)]
    pub y: String,
    /// Every checkpoint of each model, not only the latest.
    #[arg(long)]
    pub all_checkpoints: bool,
    /// Dataset to align on (default: the only one the selected models share).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Pooling to use when a checkpoint has several.
    #[arg(long)]
    pub pool: Option<String>,
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

#[derive(Serialize)]
struct Row<'a> {
    x_model: &'a str,
    y_model: &'a str,
    x_checkpoint: &'a str,
    y_checkpoint: &'a str,
    metric: &'a str,
    reduce: &'a str,
    score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    best_layers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ties: Option<usize>,
    cells_computed: usize,
    cells_cached: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    z: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    calibrated: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ci95: Option<String>,
}

/// Prints sweep results: JSON as the documented array of objects, else a table or CSV.
pub fn print_results(results: &[PairResult], format: FormatArg) -> Result<()> {
    let out = &mut std::io::stdout();
    match format {
        FormatArg::Json => output::render(results, output::Format::Json, out)?,
        f => {
            let rows: Vec<Row> = results
                .iter()
                .map(|r| Row {
                    x_model: &r.x_model,
                    y_model: &r.y_model,
                    x_checkpoint: &r.x_checkpoint,
                    y_checkpoint: &r.y_checkpoint,
                    metric: &r.metric,
                    score: r.score,
                    reduce: &r.reduce,
                    best_layers: r.best_layers.map(|l| format!("{},{}", l[0], l[1])),
                    ties: r.ties,
                    cells_computed: r.cells_computed,
                    cells_cached: r.cells_cached,
                    p_value: r.p_value,
                    z: r.z,
                    calibrated: r.calibrated,
                    ci95: r.ci95.map(|c| format!("{:.4}..{:.4}", c[0], c[1])),
                })
                .collect();
            output::render(&rows, f.into(), out)?
        }
    }
    Ok(())
}

pub fn run(ctx: &Ctx, a: AlignArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let mut req = a
        .sweep
        .request(a.x.parse()?, a.y.parse()?, a.all_checkpoints)?;
    req.dataset = a.dataset;
    req.pool = a.pool;
    let bar = Bar::new(a.sweep.quiet);
    let results = sweep::sweep(&mut reg, &req, &bar)?;
    drop(bar);
    print_results(&results, a.format)
}
