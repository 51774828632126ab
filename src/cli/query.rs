//! `prh trend`, `prh matrix`, `prh trajectory`, `prh query`: polars-powered questions.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

use super::Ctx;
use super::align::Bar;
use super::compare::{MetricArgs, StatsArgs};
use prh::analysis::{self, PairScore, TrendRequest};
use prh::engine::Reduce;
use prh::metrics::{MetricSpec, Prep};
use prh::output::{self, Format};
use prh::query;
use prh::registry::Registry;
use prh::sweep::{self, Selector, SweepRequest};

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
    fn writer(&self) -> Result<Box<dyn Write>> {
        Ok(match &self.out {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot write {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        })
    }

    /// Writes rows (JSON objects) in the chosen format.
    fn rows(&self, rows: &[Value]) -> Result<()> {
        match self.format {
            QueryFormat::Parquet => {
                let path = self
                    .out
                    .as_ref()
                    .context("--format parquet needs --out FILE")?;
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

fn to_rows<T: Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).expect("serialises"))
        .collect()
}

/// The metric a query is about: exactly one.
fn one_spec(m: &MetricArgs) -> Result<(MetricSpec, Prep, String)> {
    let specs = m.specs()?;
    if specs.len() != 1 {
        bail!("give exactly one --metric for this query");
    }
    let prep = m.prep()?;
    let kind = prep.kind();
    Ok((specs[0], prep, kind))
}

/// The metric as plots title it, with the layer aggregate unless it is the max.
fn label(spec: &MetricSpec, reduce: Reduce) -> String {
    match reduce {
        Reduce::Max => spec.metric.name().to_string(),
        r => format!("{} ({})", spec.metric, r.key()),
    }
}

/// Adds the layer aggregate to every output row.
fn with_reduce(mut rows: Vec<Value>, reduce: Reduce) -> Vec<Value> {
    for r in &mut rows {
        if let Value::Object(o) = r {
            o.insert("reduce".into(), reduce.key().into());
        }
    }
    rows
}

fn metric_flags(spec: &MetricSpec, prep: Prep, reduce: Reduce) -> String {
    let mut s = format!("--metric {}", spec.metric);
    if reduce != Reduce::Max {
        s.push_str(&format!(" --reduce {}", reduce.key()));
    }
    if spec.ties == prh::metrics::TieBreak::Expected {
        s.push_str(" --ties expected");
    }
    if spec.metric.uses_k() {
        s.push_str(&format!(" --k {}", spec.k));
    }
    if let prh::metrics::Kernel::Rbf { sigma } = spec.kernel {
        s.push_str(&format!(" --kernel rbf --sigma {sigma}"));
    }
    if prep == Prep::NONE {
        s.push_str(" --no-prep");
    }
    match prep.scope {
        prh::metrics::ClampScope::Auto => {}
        prh::metrics::ClampScope::Checkpoint => s.push_str(" --clamp-scope checkpoint"),
        prh::metrics::ClampScope::Layer => s.push_str(" --clamp-scope layer"),
    }
    s
}

/// What to fill through the sweep engine before a query.
struct Fill {
    spec: MetricSpec,
    prep: Prep,
    all_checkpoints: bool,
    null: usize,
    seed: u64,
    alpha: f64,
    reduce: Reduce,
}

/// Fills missing cells (and nulls when asked) through the sweep engine.
fn compute(
    reg: &mut Registry,
    f: Fill,
    x: Selector,
    y: Selector,
) -> Result<Vec<sweep::PairResult>> {
    let req = SweepRequest {
        x,
        y,
        dataset: None,
        pool: None,
        all_checkpoints: f.all_checkpoints,
        x_checkpoint: None,
        specs: vec![f.spec],
        prep: f.prep,
        mem_budget: 4096 << 20,
        null: f.null,
        bootstrap: 0,
        seed: f.seed,
        alpha: f.alpha,
        reduce: f.reduce,
    };
    let bar = Bar::new(false);
    Ok(sweep::sweep(reg, &req, &bar)?)
}

fn from_results(
    r: &[sweep::PairResult],
    value: impl Fn(&sweep::PairResult) -> f64,
) -> Vec<PairScore> {
    r.iter()
        .filter(|p| p.x_model != p.y_model)
        .map(|p| PairScore {
            x_model: p.x_model.clone(),
            x_checkpoint: p.x_checkpoint.clone(),
            x_checkpoint_id: p.x_checkpoint_id,
            x_step: None,
            y_model: p.y_model.clone(),
            y_checkpoint_id: p.y_checkpoint_id,
            score: value(p),
        })
        .collect()
}

#[derive(clap::Args)]
pub struct TrendArgs {
    #[command(flatten)]
    pub metric: MetricArgs,
    /// Models whose alignment and performance are related: names, modality=…, family=…, all.
    #[arg(long)]
    pub x: String,
    /// Models to align against (the mean over them is each x model's alignment).
    #[arg(long, conflicts_with = "within")]
    pub y: Option<String>,
    /// Performance score of the x models (e.g. bpb, accuracy).
    #[arg(long)]
    pub perf: String,
    /// The score is better when lower (default: its stored direction, else higher).
    #[arg(long)]
    pub lower_is_better: bool,
    /// One series per y model instead of the mean over y.
    #[arg(long)]
    pub per_y: bool,
    /// Within one set: bin models by performance and average pairwise alignment per bin.
    #[arg(long)]
    pub within: bool,
    /// Number of performance bins for --within.
    #[arg(long, default_value_t = 3)]
    pub bins: usize,
    /// Compute missing cells first instead of stopping with the align command to run.
    #[arg(long)]
    pub compute: bool,
    /// Also run the trend on permutation-calibrated scores (uses --null, default 200) and
    /// show both side by side.
    #[arg(long)]
    pub calibrated: bool,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Bootstrap resamples (over models) for the 95% interval of r.
    #[arg(long, default_value_t = 1000)]
    pub ci_resamples: usize,
    /// Draw the scatter, fitted line and r to this .svg or .png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArgs,
}

pub fn run_trend(ctx: &Ctx, a: TrendArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let (spec, prep, kind) = one_spec(&a.metric)?;
    let xm = sweep::select_models(&reg, &a.x.parse()?)?;
    let lower = a.lower_is_better.then_some(true);
    let flags = metric_flags(&spec, prep, a.metric.reduce);
    if a.within {
        if a.compute {
            compute(
                &mut reg,
                Fill {
                    spec,
                    prep,
                    all_checkpoints: false,
                    null: 0,
                    seed: a.stats.seed,
                    alpha: a.stats.alpha,
                    reduce: a.metric.reduce,
                },
                a.x.parse()?,
                a.x.parse()?,
            )?;
        }
        let ids = analysis::latest(&reg, &xm)?;
        let x_ids: Vec<i64> = xm.iter().map(|m| ids[m]).collect();
        let hint = format!("prh align {flags} --x {} --y {}", a.x, a.x);
        let pairs =
            analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &x_ids, &hint)?;
        let models: Vec<(String, i64)> = xm.iter().map(|m| (m.clone(), ids[m])).collect();
        let bins = analysis::within(&reg, &pairs, &models, &a.perf, lower, a.bins)?;
        return a.out.rows(&with_reduce(to_rows(&bins), a.metric.reduce));
    }
    let ysel =
        a.y.clone()
            .context("give --y (models to align against) or --within")?;
    let ym = sweep::select_models(&reg, &ysel.parse()?)?;
    let req = TrendRequest {
        spec,
        prep: kind.clone(),
        reduce: a.metric.reduce,
        x: xm.clone(),
        y: ym.clone(),
        perf: a.perf.clone(),
        lower_is_better: lower,
        per_y: a.per_y,
        bootstrap: a.ci_resamples,
        seed: a.stats.seed,
    };
    let (raw_pairs, calibrated_pairs) = if a.calibrated {
        let p = if a.stats.null == 0 { 200 } else { a.stats.null };
        let results = compute(
            &mut reg,
            Fill {
                spec,
                prep,
                all_checkpoints: false,
                null: p,
                seed: a.stats.seed,
                alpha: a.stats.alpha,
                reduce: a.metric.reduce,
            },
            a.x.parse()?,
            ysel.parse()?,
        )?;
        (
            from_results(&results, |r| r.score),
            Some(from_results(&results, |r| r.calibrated.unwrap_or(f64::NAN))),
        )
    } else {
        if a.compute {
            compute(
                &mut reg,
                Fill {
                    spec,
                    prep,
                    all_checkpoints: false,
                    null: 0,
                    seed: a.stats.seed,
                    alpha: a.stats.alpha,
                    reduce: a.metric.reduce,
                },
                a.x.parse()?,
                ysel.parse()?,
            )?;
        }
        let ids = analysis::latest(&reg, &xm)?;
        let yids = analysis::latest(&reg, &ym)?;
        let x_ids: Vec<i64> = xm.iter().map(|m| ids[m]).collect();
        let y_ids: Vec<i64> = ym.iter().map(|m| yids[m]).collect();
        let hint = format!("prh align {flags} --x {} --y {ysel}", a.x);
        (
            analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &y_ids, &hint)?,
            None,
        )
    };
    let raw = analysis::trend(&reg, &req, &raw_pairs)?;
    let cal = calibrated_pairs
        .map(|c| analysis::trend(&reg, &req, &c))
        .transpose()?;
    if let Some(p) = &a.plot {
        prh::plot::trend(p, &raw, &a.perf, &label(&spec, a.metric.reduce))?;
        if let Some(c) = &cal {
            let cp = p.with_file_name(format!(
                "{}-calibrated.{}",
                p.file_stem().and_then(|s| s.to_str()).unwrap_or("trend"),
                p.extension().and_then(|s| s.to_str()).unwrap_or("svg")
            ));
            let what = format!("calibrated {}", label(&spec, a.metric.reduce));
            prh::plot::trend(&cp, c, &a.perf, &what)?;
            eprintln!("plots: {} and {}", p.display(), cp.display());
        } else {
            eprintln!("plot: {}", p.display());
        }
    }
    match a.out.format {
        QueryFormat::Json => {
            let v = match &cal {
                Some(c) => serde_json::json!({"raw": raw, "calibrated": c}),
                None => serde_json::to_value(&raw)?,
            };
            let mut w = a.out.writer()?;
            serde_json::to_writer_pretty(&mut w, &v)?;
            writeln!(w)?;
        }
        QueryFormat::Table => {
            let mut w = a.out.writer()?;
            let mut rows = to_rows(&raw.models);
            if let Some(c) = &cal {
                for (r, cp) in rows.iter_mut().zip(&c.models) {
                    r["calibrated"] = cp.alignment.into();
                }
            }
            output::render_values(&rows, Format::Table, &mut w)?;
            writeln!(w)?;
            print_stats(&mut w, "raw", &raw)?;
            if let Some(c) = &cal {
                print_stats(&mut w, "calibrated", c)?;
            }
        }
        _ => {
            let mut rows = to_rows(&raw.models);
            if let Some(c) = &cal {
                for (r, cp) in rows.iter_mut().zip(&c.models) {
                    r["calibrated"] = cp.alignment.into();
                }
            }
            a.out.rows(&rows)?
        }
    }
    Ok(())
}

fn print_stats(w: &mut dyn Write, label: &str, t: &analysis::Trend) -> Result<()> {
    let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or("–".into());
    writeln!(
        w,
        "{label}: pearson r = {} (p = {}), 95% CI {}; spearman ρ = {} (p = {}); alignment = {} · perf + {}",
        f(t.pearson_r),
        f(t.pearson_p),
        t.r_ci95
            .map(|c| format!("[{:.3}, {:.3}]", c[0], c[1]))
            .unwrap_or("–".into()),
        f(t.spearman_rho),
        f(t.spearman_p),
        f(t.slope),
        f(t.intercept)
    )?;
    writeln!(w, "{label}: {}", t.verdict)?;
    Ok(())
}

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
    /// Compute missing cells first.
    #[arg(long)]
    pub compute: bool,
    /// Draw a heatmap to this .svg or .png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArgs,
}

pub fn run_matrix(ctx: &Ctx, a: MatrixArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let (spec, prep, kind) = one_spec(&a.metric)?;
    if a.compute {
        compute(
            &mut reg,
            Fill {
                spec,
                prep,
                all_checkpoints: false,
                null: 0,
                seed: 0,
                alpha: prh::stats::DEFAULT_ALPHA,
                reduce: a.metric.reduce,
            },
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
    let x_ids: Vec<i64> = xm.iter().map(|m| xi[m]).collect();
    let y_ids: Vec<i64> = ym.iter().map(|m| yi[m]).collect();
    let hint = format!(
        "prh align {} --x {} --y {}",
        metric_flags(&spec, prep, a.metric.reduce),
        a.x,
        a.y
    );
    let pairs = analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &y_ids, &hint)?;
    let m = analysis::matrix(&pairs, &xm, &ym);
    if let Some(p) = &a.plot {
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
    a.out.rows(&rows)
}

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
    /// Compute missing cells first.
    #[arg(long)]
    pub compute: bool,
    /// Draw one line per reference model to this .svg or .png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArgs,
}

pub fn run_trajectory(ctx: &Ctx, a: TrajectoryArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let (spec, prep, kind) = one_spec(&a.metric)?;
    if a.compute {
        compute(
            &mut reg,
            Fill {
                spec,
                prep,
                all_checkpoints: true,
                null: 0,
                seed: 0,
                alpha: prh::stats::DEFAULT_ALPHA,
                reduce: a.metric.reduce,
            },
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
    let x_ids: Vec<i64> = cks.iter().map(|c| c.id).collect();
    let y_ids: Vec<i64> = refs.iter().map(|m| ri[m]).collect();
    let hint = format!(
        "prh align {} --x {} --y {} --all-checkpoints",
        metric_flags(&spec, prep, a.metric.reduce),
        a.model,
        a.against
    );
    let mut pairs =
        analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &y_ids, &hint)?;
    let steps: std::collections::HashMap<i64, Option<i64>> =
        cks.iter().map(|c| (c.id, c.step)).collect();
    for p in &mut pairs {
        p.x_step = steps.get(&p.x_checkpoint_id).copied().flatten();
    }
    let points = analysis::trajectory(&pairs);
    if let Some(p) = &a.plot {
        prh::plot::trajectory(p, &points, &a.model, &label(&spec, a.metric.reduce))?;
        eprintln!("plot: {}", p.display());
    }
    a.out.rows(&with_reduce(to_rows(&points), a.metric.reduce))
}

#[derive(clap::Args)]
pub struct QueryArgs {
    /// SQL over the tables models, checkpoints, datasets, reps, scores, cells, alignment
    /// (columns in the README), run by polars.
    pub sql: String,
    #[command(flatten)]
    pub out: OutArgs,
}

pub fn run_query(ctx: &Ctx, a: QueryArgs) -> Result<()> {
    let reg = ctx.open()?;
    let mut df = query::sql(&reg, &a.sql)?;
    if let QueryFormat::Parquet = a.out.format {
        let path = a
            .out
            .out
            .as_ref()
            .context("--format parquet needs --out FILE")?;
        query::write_parquet(&mut df, path)?;
        return Ok(());
    }
    let rows = prh::frame::to_rows(&df);
    a.out.rows(&rows)
}
