//! `prh trend`: alignment vs. performance over models — correlations, fit, interval, verdict, plot.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::Ctx;
use super::args::{MetricArgs, OutArgs, QueryFormat, StatsArgs, ViewArgs};
use super::pairs::{
    Fill, compute, from_results, label, metric_flags, one_spec, to_rows, with_reduce,
};
use prh::analysis::{self, TrendRequest};
use prh::output::{self, Format};
use prh::sweep;

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
    /// Also run the trend on permutation-calibrated scores (uses --null, default 200) and
    /// show both side by side.
    #[arg(long)]
    pub calibrated: bool,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Bootstrap resamples (over models) for the 95% interval of r.
    #[arg(long, default_value_t = 1000)]
    pub ci_resamples: usize,
    #[command(flatten)]
    pub view: ViewArgs,
}

pub fn run(ctx: &Ctx, a: TrendArgs) -> Result<()> {
    let mut reg = ctx.open()?;
    let (spec, prep, kind) = one_spec(&a.metric)?;
    let xm = sweep::select_models(&reg, &a.x.parse()?)?;
    let lower = a.lower_is_better.then_some(true);
    let flags = metric_flags(&spec, prep, a.metric.reduce);
    let fill =
        Fill::cells(spec, prep, a.metric.reduce, false).stats(0, a.stats.seed, a.stats.alpha);
    if a.within {
        if a.view.compute {
            compute(&mut reg, fill, a.x.parse()?, a.x.parse()?)?;
        }
        let ids = analysis::latest(&reg, &xm)?;
        let x_ids: Vec<prh::catalog::CheckpointId> = xm.iter().map(|m| ids[m]).collect();
        let hint = format!("prh align {flags} --x {} --y {}", a.x, a.x);
        let pairs =
            analysis::cached_pairs(&reg, &spec, &kind, a.metric.reduce, &x_ids, &x_ids, &hint)?;
        let models: Vec<(String, prh::catalog::CheckpointId)> =
            xm.iter().map(|m| (m.clone(), ids[m])).collect();
        let bins = analysis::within(&reg, &pairs, &models, &a.perf, lower, a.bins)?;
        return a
            .view
            .out
            .rows(&with_reduce(to_rows(&bins), a.metric.reduce));
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
    // The model-pair scores: raw from the cache (or computed with --compute), and with
    // --calibrated both from one sweep with a permutation null.
    let (raw_pairs, calibrated_pairs) = if a.calibrated {
        let p = if a.stats.null == 0 { 200 } else { a.stats.null };
        let results = compute(
            &mut reg,
            fill.stats(p, a.stats.seed, a.stats.alpha),
            a.x.parse()?,
            ysel.parse()?,
        )?;
        (
            from_results(&results, |r| r.score),
            Some(from_results(&results, |r| r.calibrated.unwrap_or(f64::NAN))),
        )
    } else {
        if a.view.compute {
            compute(&mut reg, fill, a.x.parse()?, ysel.parse()?)?;
        }
        let ids = analysis::latest(&reg, &xm)?;
        let yids = analysis::latest(&reg, &ym)?;
        let x_ids: Vec<prh::catalog::CheckpointId> = xm.iter().map(|m| ids[m]).collect();
        let y_ids: Vec<prh::catalog::CheckpointId> = ym.iter().map(|m| yids[m]).collect();
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
    if let Some(p) = &a.view.plot {
        plot(
            p,
            &raw,
            cal.as_ref(),
            &a.perf,
            &label(&spec, a.metric.reduce),
        )?;
    }
    write(&a.view.out, &raw, cal.as_ref())
}

/// The scatter plot(s): the raw trend at `p`, the calibrated one beside it (`NAME-calibrated`).
fn plot(
    p: &Path,
    raw: &analysis::Trend,
    cal: Option<&analysis::Trend>,
    perf: &str,
    what: &str,
) -> Result<()> {
    prh::plot::trend(p, raw, perf, what)?;
    let Some(c) = cal else {
        eprintln!("plot: {}", p.display());
        return Ok(());
    };
    let cp = p.with_file_name(format!(
        "{}-calibrated.{}",
        p.file_stem().and_then(|s| s.to_str()).unwrap_or("trend"),
        p.extension().and_then(|s| s.to_str()).unwrap_or("svg")
    ));
    prh::plot::trend(&cp, c, perf, &format!("calibrated {what}"))?;
    eprintln!("plots: {} and {}", p.display(), cp.display());
    Ok(())
}

/// Writes the trend(s) in the chosen format: JSON objects, or one row per model (with a
/// `calibrated` column when there is one) followed, in a table, by the statistics.
fn write(out: &OutArgs, raw: &analysis::Trend, cal: Option<&analysis::Trend>) -> Result<()> {
    if let QueryFormat::Json = out.format {
        let v = match cal {
            Some(c) => serde_json::json!({"raw": raw, "calibrated": c}),
            None => serde_json::to_value(raw)?,
        };
        let mut w = out.writer()?;
        serde_json::to_writer_pretty(&mut w, &v)?;
        writeln!(w)?;
        return Ok(());
    }
    let mut rows = to_rows(&raw.models);
    if let Some(c) = cal {
        for (r, cp) in rows.iter_mut().zip(&c.models) {
            r["calibrated"] = cp.alignment.into();
        }
    }
    let QueryFormat::Table = out.format else {
        return out.rows(&rows);
    };
    let mut w = out.writer()?;
    output::render_values(&rows, Format::Table, &mut w)?;
    writeln!(w)?;
    print_stats(&mut w, "raw", raw)?;
    if let Some(c) = cal {
        print_stats(&mut w, "calibrated", c)?;
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
