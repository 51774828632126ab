//! `prh trend`: alignment vs. performance over models — correlations, fit, interval, verdict, plot.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::Ctx;
use super::args::{MetricArgs, OutArgs, QueryFormat, StatsArgs, ViewArgs};
use super::pairs::{compute, one_view, to_rows, with_reduce};
use super::progress::Bar;
use prh::analysis;
use prh::output::{self, Format};

use prh::views::{NullSpec, TrendQuery};

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
    let view = one_view(&a.metric)?;
    let lower = a.lower_is_better.then_some(true);
    if a.within {
        if a.view.compute {
            compute(&mut reg, &view, (a.x.parse()?, a.x.parse()?), false, None)?;
        }
        let bins = view.within(&reg, &a.x, &a.perf, lower, a.bins)?;
        return a.view.out.rows(&with_reduce(to_rows(&bins), view.reduce));
    }
    let ysel =
        a.y.clone()
            .ok_or_else(|| super::invalid("give --y (models to align against) or --within"))?;
    let q = TrendQuery {
        x: &a.x,
        y: &ysel,
        perf: &a.perf,
        lower_is_better: lower,
        per_y: a.per_y,
        bootstrap: a.ci_resamples,
        seed: a.stats.seed,
    };
    let null = |permutations| NullSpec {
        permutations,
        seed: a.stats.seed,
        alpha: a.stats.alpha,
    };
    // The raw trend from the cache (filled first with --compute); with --calibrated both
    // from one sweep with a permutation null.
    let (raw, cal) = if a.calibrated {
        let p = if a.stats.null == 0 { 200 } else { a.stats.null };
        let bar = Bar::new(false);
        let (raw, cal) = view.calibrated_trend(&mut reg, &q, null(p), &bar)?;
        (raw, Some(cal))
    } else {
        if a.view.compute {
            compute(
                &mut reg,
                &view,
                (a.x.parse()?, ysel.parse()?),
                false,
                Some(null(0)),
            )?;
        }
        (view.trend(&reg, &q)?, None)
    };
    if let Some(p) = &a.view.plot {
        plot(p, &raw, cal.as_ref(), &a.perf, &view.label())?;
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
