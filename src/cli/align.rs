//! `prh align` (sweep selected model pairs through the cache) and `prh log` (ingest a new
//! checkpoint and align it against named models in one command).

use std::io::IsTerminal;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::compare::{MetricArgs, StatsArgs};
use super::ingest::IngestArgs;
use super::{Ctx, FormatArg};
use prh::output;
use prh::sweep::{self, PairResult, Progress, Selector, SweepRequest};

/// Options shared by `align` and `log`.
#[derive(clap::Args, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Memory for derived data held at once, in MiB.
    #[arg(long, default_value_t = 4096)]
    pub mem_mib: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

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

/// A progress bar on stderr: cells done / total and ETA; hidden when stderr is not a terminal.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(quiet: bool) -> Self {
        let pb = ProgressBar::hidden();
        if !quiet && std::io::stderr().is_terminal() {
            pb.set_draw_target(ProgressDrawTarget::stderr());
        }
        pb.set_style(
            ProgressStyle::with_template("{msg:30} [{bar:30}] {pos}/{len} cells, ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Bar(pb)
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, cells: u64) {
        self.0.inc(cells);
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl SweepArgs {
    /// The library request for these options.
    pub fn request(&self, x: Selector, y: Selector, all_checkpoints: bool) -> Result<SweepRequest> {
        Ok(SweepRequest {
            x,
            y,
            dataset: None,
            pool: None,
            all_checkpoints,
            x_checkpoint: None,
            specs: self.metric.specs()?,
            prep: self.metric.prep()?,
            mem_budget: self.mem_mib << 20,
            null: self.stats.null,
            bootstrap: self.stats.bootstrap,
            seed: self.stats.seed,
            alpha: self.stats.alpha,
            reduce: self.metric.reduce,
        })
    }
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

pub fn run_align(ctx: &Ctx, a: AlignArgs) -> Result<()> {
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

#[derive(clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Models to align the new checkpoint against: names (a,b), modality=…, family=… or all.
    #[arg(long)]
    pub against: String,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

pub fn run_log(ctx: &Ctx, a: LogArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let report = reg.ingest(&a.ingest.file, &a.ingest.request()?)?;
    eprintln!(
        "{}: {} @ {} ({} layers{})",
        a.ingest.file.display(),
        report.model,
        report.checkpoint,
        report.layers.len(),
        if report.unchanged() {
            ", already ingested"
        } else {
            ""
        }
    );
    let mut req = a.sweep.request(
        Selector::Names(vec![report.model.clone()]),
        a.against.parse()?,
        false,
    )?;
    req.x_checkpoint = Some(report.checkpoint.clone());
    req.dataset = Some(report.dataset.clone());
    req.pool = Some(a.ingest.pool.clone());
    let bar = Bar::new(a.sweep.quiet);
    let results = sweep::sweep(&mut reg, &req, &bar)?;
    drop(bar);
    print_results(&results, a.ingest.format)
}
