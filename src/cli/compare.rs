//! `prh compare A B --metric M ...`: one-shot alignment of two feature files, no registry.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ndarray::Array2;

use super::args::{FormatArg, MetricArgs, StatsArgs};
use prh::formats;
use prh::layers::{self, LayerTable};
use prh::metrics::Layout;
use prh::output::{self, Format};
use prh::stats::{self, Resampling};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// First feature file (n×d or n×L×d; any format `prh ingest` reads).
    pub a: PathBuf,
    /// Second feature file (same n, same sample order).
    pub b: PathBuf,
    #[command(flatten)]
    pub metric: MetricArgs,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Also print every layer-pair score (rows = layers of A).
    #[arg(long)]
    pub table: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

/// Reads every layer of a feature file as f32, with the layout the file gave them in.
pub fn read_layers(path: &std::path::Path) -> Result<(Vec<Array2<f32>>, Layout)> {
    let f = formats::open(path)?;
    Ok((f.finite_layers()?, f.layout))
}

pub fn run(a: CompareArgs) -> Result<()> {
    let specs = a.metric.specs()?;
    let prep = a.metric.prep()?;
    let (la, layout_a) = read_layers(&a.a)?;
    let (lb, layout_b) = read_layers(&a.b)?;
    if la[0].nrows() != lb[0].nrows() {
        bail!(prh::Error::Invalid(format!(
            "{} has n = {} samples but {} has n = {}; alignment needs features of the same samples in the same order",
            a.a.display(),
            la[0].nrows(),
            a.b.display(),
            lb[0].nrows()
        )));
    }
    let n = la[0].nrows();
    for s in &specs {
        s.validate(n)?;
    }
    let (da, _) = layers::derive_checkpoint(&la, prep, layout_a)
        .with_context(|| a.a.display().to_string())?;
    let (db, _) = layers::derive_checkpoint(&lb, prep, layout_b).with_context(|| b_name(&a))?;
    let multi = la.len() > 1 || lb.len() > 1;
    let mut results = Vec::new();
    for s in &specs {
        let t: LayerTable = layers::layer_table(s, &da, &db)?;
        let reduce = a.metric.reduce;
        let (value, layers) = reduce.apply(&t.table)?;
        let mut obj = serde_json::Map::new();
        obj.insert("metric".into(), s.metric.name().into());
        obj.insert("params".into(), s.params_json());
        obj.insert("reduce".into(), reduce.key().into());
        obj.insert("value".into(), value.into());
        if let (true, Some(l)) = (multi, layers) {
            obj.insert("best_layers".into(), serde_json::json!(l));
        }
        let [bi, bj] = layers.unwrap_or([da.len() - 1, db.len() - 1]);
        if let Some(ties) = s.tied_rows(&da[bi], &db[bj]) {
            obj.insert("ties".into(), ties.into());
        }
        if a.table {
            obj.insert("table".into(), serde_json::json!(t.table));
        }
        let sample = |how, count| stats::draws(how, s, reduce, (&da, &db), a.stats.seed, 0..count);
        if a.stats.null > 0 {
            let draws = sample(Resampling::Permutation, a.stats.null)?;
            let sum = stats::summarize(value, &draws, s.max_attainable(), a.stats.alpha);
            obj.insert("null_mean".into(), sum.null_mean.into());
            obj.insert("null_sd".into(), sum.null_sd.into());
            obj.insert("p_value".into(), sum.p_value.into());
            obj.insert("z".into(), sum.z.into());
            obj.insert("tau".into(), sum.tau.into());
            obj.insert("calibrated".into(), sum.calibrated.into());
            obj.insert("chance_adjusted".into(), sum.chance_adjusted.into());
        }
        if a.stats.bootstrap > 0 {
            let draws = sample(Resampling::Bootstrap, a.stats.bootstrap)?;
            obj.insert("ci95".into(), serde_json::json!(stats::ci95(&draws)));
        }
        results.push((obj, t));
    }
    let out = &mut std::io::stdout();
    match a.format {
        FormatArg::Json => {
            let v: Vec<serde_json::Value> = results
                .into_iter()
                .map(|(o, _)| serde_json::Value::Object(o))
                .collect();
            if v.len() == 1 {
                println!("{}", serde_json::to_string_pretty(&v[0])?);
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        f => {
            let rows: Vec<serde_json::Value> = results
                .iter()
                .map(|(o, _)| {
                    let mut r = serde_json::Map::new();
                    r.insert("metric".into(), o["metric"].clone());
                    r.insert("params".into(), params_text(&o["params"]).into());
                    r.insert("reduce".into(), o["reduce"].clone());
                    r.insert("value".into(), o["value"].clone());
                    if let Some(l) = o.get("best_layers") {
                        r.insert("best_layers".into(), format!("{},{}", l[0], l[1]).into());
                    }
                    for k in ["ties", "null_mean", "p_value", "z", "calibrated"] {
                        if let Some(v) = o.get(k) {
                            r.insert(k.into(), v.clone());
                        }
                    }
                    if let Some(ci) = o.get("ci95") {
                        r.insert(
                            "ci95".into(),
                            format!(
                                "{:.4}..{:.4}",
                                ci[0].as_f64().unwrap_or(f64::NAN),
                                ci[1].as_f64().unwrap_or(f64::NAN)
                            )
                            .into(),
                        );
                    }
                    serde_json::Value::Object(r)
                })
                .collect();
            output::render_values(&rows, Format::from(f), out)?;
            if a.table && matches!(f, FormatArg::Table) {
                for (o, t) in &results {
                    println!(
                        "\n{} layer pairs (rows = layers of {}):",
                        o["metric"].as_str().unwrap_or(""),
                        a.a.display()
                    );
                    for (i, row) in t.table.iter().enumerate() {
                        let cells: Vec<String> = row.iter().map(|v| format!("{v:>9.6}")).collect();
                        println!("  {i:>3}  {}", cells.join(" "));
                    }
                }
            }
        }
    }
    Ok(())
}

fn b_name(a: &CompareArgs) -> String {
    a.b.display().to_string()
}

fn params_text(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map(String::from).unwrap_or(v.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
