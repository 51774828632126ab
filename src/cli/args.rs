//! Argument groups shared by several commands: the metric and its parameters, statistics,
//! model selection for sweeps, and output formats.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::Value;

use prh::Error;
use prh::layers::Reduce;
use prh::metrics::{ClampRule, ClampScope, MetricSpec, Prep};
use prh::output::{self, Format};
use prh::query;
use prh::sweep::{Selector, SweepRequest};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KernelArg {
    Linear,
    Rbf,
}

/// Metric parameters shared by every command that computes alignment.
#[derive(clap::Args, Clone)]
pub struct MetricArgs {
    /// Metric(s); repeat or comma-separate.
    #[arg(long = "metric", required = true, value_delimiter = ',', value_parser = metric_names())]
    pub metrics: Vec<String>,
    /// Neighbourhood size for the kNN metrics and cknna.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Kernel for cka and unbiased_cka.
    #[arg(long, value_enum, default_value = "linear")]
    pub kernel: KernelArg,
    /// RBF kernel width σ: a positive number, or `median` for each representation's own
    /// σ = √(median of its squared pairwise distances) (Aristotelian's cka_rbf).
    #[arg(long, default_value = "1", value_name = "SIGMA|median")]
    pub sigma: String,
    /// Subspace size for svcca.
    #[arg(long, default_value_t = 10)]
    pub cca_dim: usize,
    /// Ridge strength for linear_r2, relative to the mean kernel diagonal.
    #[arg(long, default_value_t = 0.1)]
    pub ridge: f64,
    /// Reproduce the official lcs_knn / edit_distance_knn as run with `pymp` installed: only
    /// the first ⌈n/4⌉ rows count (an upstream bug; see README).
    #[arg(long)]
    pub emulate_pymp: bool,
    /// Equally similar neighbours at the k boundary: `lower` keeps the lower sample index
    /// (the official number whenever `ties` is 0); `expected` gives the exact mean over
    /// uniformly random tie-breaking, the same on every platform (mutual_knn, cycle_knn).
    #[arg(long, value_enum, default_value = "lower")]
    pub ties: TiesArg,
    /// Use the rows as given: no clamp, no normalisation.
    #[arg(long, conflicts_with_all = ["clamp_q"])]
    pub no_prep: bool,
    /// Clamp quantile q of |X| (official: 0.95; 1 = no clamp).
    #[arg(long, default_value_t = 0.95)]
    pub clamp_q: f64,
    /// Which values one clamp threshold is taken over. auto (the official rule): all layers
    /// together for features given as one n × L × d tensor, each layer on its own for
    /// per-layer arrays (a .pt list, one array per layer in .npz/.safetensors); checkpoint or
    /// layer force one scope.
    #[arg(long, value_enum, default_value = "auto", conflicts_with_all = ["no_prep"])]
    pub clamp_scope: ScopeArg,
    /// How each clamp threshold is taken, by platonic-rep's two conventions: exact (the
    /// default of its compute_alignment and platonic.Alignment: the element at index ⌊q·N⌋ of
    /// |X| sorted) or sample-mean (what its measure_alignment.py runs without --precise: the
    /// mean over samples of each sample's q-quantile of |x_i|). Cells of the two never mix.
    #[arg(long, value_enum, default_value = "exact", conflicts_with_all = ["no_prep"])]
    pub clamp_rule: RuleArg,
    /// How a model pair's layer-pair scores become one score: max (the official choice, with
    /// its layers), mean, last (last layer with last layer) or layers=I,J (0-based). Nulls
    /// recompute the same aggregate per permutation.
    #[arg(long, default_value = "max", value_parser = parse_reduce)]
    pub reduce: Reduce,
}

/// The metric names `--metric` takes, from the metrics module (so `--help` lists every one).
fn metric_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(prh::metrics::ALL.iter().map(|m| m.name()))
}

fn parse_reduce(s: &str) -> std::result::Result<Reduce, String> {
    s.parse().map_err(|e: prh::error::Error| e.to_string())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TiesArg {
    Lower,
    Expected,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuleArg {
    Exact,
    SampleMean,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    Auto,
    Checkpoint,
    Layer,
}

impl MetricArgs {
    /// The metric specs asked for.
    pub fn specs(&self) -> Result<Vec<MetricSpec>> {
        self.metrics
            .iter()
            .map(|m| Ok(MetricSpec::from_options(m, &|name| self.option(name))?))
            .collect()
    }

    /// The value of metric option `name` (see [`prh::metrics::spec::OPTIONS`]) as given.
    fn option(&self, name: &str) -> Option<String> {
        Some(match name {
            "k" => self.k.to_string(),
            "kernel" => self.kernel.to_possible_value()?.get_name().to_string(),
            "sigma" => self.sigma.clone(),
            "cca_dim" => self.cca_dim.to_string(),
            "ridge" => self.ridge.to_string(),
            "ties" => self.ties.to_possible_value()?.get_name().to_string(),
            "emulate_pymp" => self.emulate_pymp.to_string(),
            _ => return None,
        })
    }

    /// The preparation asked for.
    pub fn prep(&self) -> Result<Prep> {
        if self.no_prep {
            return Ok(Prep::NONE);
        }
        if !(self.clamp_q > 0.0 && self.clamp_q <= 1.0) {
            bail!(Error::Invalid(format!(
                "--clamp-q must be in (0, 1], got {}",
                self.clamp_q
            )));
        }
        Ok(Prep {
            clamp_q: (self.clamp_q < 1.0).then_some(self.clamp_q),
            scope: match self.clamp_scope {
                ScopeArg::Auto => ClampScope::Auto,
                ScopeArg::Checkpoint => ClampScope::Checkpoint,
                ScopeArg::Layer => ClampScope::Layer,
            },
            rule: match self.clamp_rule {
                RuleArg::Exact => ClampRule::Exact,
                RuleArg::SampleMean => ClampRule::SampleMean,
            },
            normalize: true,
        })
    }
}

/// Statistics flags shared by `compare`, `align` and `log`.
#[derive(clap::Args, Clone)]
pub struct StatsArgs {
    /// Permutation null with P permutations of the y samples per model pair, each scored as
    /// the real pair (max over layer pairs included): adds null_mean, null_sd, p_value, z,
    /// tau (the ⌈(1 − α)(P + 1)⌉-th smallest of the score and the null scores),
    /// calibrated = clamp((score − tau) / (max − tau), 0, 1) (Gröger, Wen & Brbić 2026) and
    /// chance_adjusted = (score − null_mean) / (max − null_mean).
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub null: usize,
    /// Significance level α of the calibration threshold tau, in (0, 1).
    #[arg(long, default_value_t = prh::stats::DEFAULT_ALPHA, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Bootstrap with B resamples of the samples: adds ci95, the 95% percentile interval.
    #[arg(long, value_name = "B", default_value_t = 0)]
    pub bootstrap: usize,
    /// Seed of the permutations and resamples (results are reproducible for a seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_alpha(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if a > 0.0 && a < 1.0 => Ok(a),
        _ => Err(format!("{s} is not a level in (0, 1)")),
    }
}

/// Options shared by `align` and `log`.
#[derive(clap::Args, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Memory for derived data held at once, in MiB.
    #[arg(long, default_value_t = prh::metrics::derived::DEFAULT_BUDGET >> 20)]
    pub mem_mib: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
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

/// Output format flag shared by commands.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum FormatArg {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// JSON (an array of objects for listings).
    Json,
    /// CSV with a header row.
    Csv,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Json => Format::Json,
            FormatArg::Csv => Format::Csv,
        }
    }
}

/// Output formats of queries.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum QueryFormat {
    #[default]
    Table,
    Json,
    Csv,
    /// Apache Parquet (needs --out).
    Parquet,
}

/// What the chart commands (trend, matrix, trajectory) share.
#[derive(clap::Args, Clone)]
pub struct ViewArgs {
    /// Compute missing cells first instead of stopping with the `prh align` command to run.
    #[arg(long)]
    pub compute: bool,
    /// Draw the chart to this .svg or .png (trend: scatter, fitted line and r; matrix:
    /// heatmap; trajectory: one line per reference model).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArgs,
}

/// Output options shared by the query commands.
#[derive(clap::Args, Clone)]
pub struct OutArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: QueryFormat,
    /// Write the output to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

impl OutArgs {
    pub fn writer(&self) -> Result<Box<dyn Write>> {
        Ok(match &self.out {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot write {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        })
    }

    /// Writes rows (JSON objects) in the chosen format.
    pub fn rows(&self, rows: &[Value]) -> Result<()> {
        match self.format {
            QueryFormat::Parquet => {
                let path = self
                    .out
                    .as_ref()
                    .ok_or_else(|| super::invalid("--format parquet needs --out FILE"))?;
                let mut df = prh::frame::from_rows(rows)?;
                query::write_parquet(&mut df, path)?;
            }
            QueryFormat::Json => output::render_values(rows, Format::Json, &mut self.writer()?)?,
            QueryFormat::Csv => output::render_values(rows, Format::Csv, &mut self.writer()?)?,
            QueryFormat::Table => output::render_values(rows, Format::Table, &mut self.writer()?)?,
        }
        Ok(())
    }
}
