//! `prh demo`: builds a demo registry and shows prh working end to end: on a synthetic zoo
//! (the default), or with `--real` on seven real pretrained models' features (embedded).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::align::print_results;
use super::args::FormatArg;
use super::progress::Bar;
use prh::catalog::RepFilter;
use prh::demo::ZooSpec;
use prh::layers::Reduce;
use prh::metrics::{Metric, MetricSpec, Prep};
use prh::output::{self, Format};
use prh::real_zoo;
use prh::registry::{IngestReport, Registry};
use prh::views::{NullSpec, TrendQuery, View};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory of the demo registry (its feature files go to DIR/inputs) [default: prh-demo,
    /// or prh-demo-real with --real].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use the real zoo: features of 4 vision and 3 language pretrained models on 498 Tux
    /// Paint stamps and their captions (fixtures/real_zoo, embedded in prh; made by
    /// examples/real_zoo).
    #[arg(long)]
    pub real: bool,
    /// Permutations of the null for each pair's p-value and calibrated score (0 = none)
    /// [default: 0, or 200 with --real].
    #[arg(long, value_name = "P")]
    pub null: Option<usize>,
    /// Do not write the trend and matrix plots.
    #[arg(long)]
    pub no_plots: bool,
}

/// What the end of a demo shows: language models (x) against vision models (y).
struct Show {
    dir: PathBuf,
    x: Vec<String>,
    y: Vec<String>,
    /// The score the trend sets the language models' alignment against, and its label.
    x_perf: &'static str,
    null: usize,
    plots: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    if a.real {
        return run_real(a);
    }
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("prh-demo"));
    let zoo = ZooSpec::demo();
    let mut reg = Registry::init(&dir)?;
    println!(
        "demo registry: {} ({} model checkpoints, n = {} samples, dataset demo_{})",
        dir.display(),
        zoo.models.len(),
        zoo.n,
        zoo.n
    );
    let reports = zoo.ingest_into(&mut reg, &dir.join("inputs"), &format!("demo_{}", zoo.n))?;
    summarize(&reg, &reports, &dir)?;
    let names = |modality: &str| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for z in zoo.models.iter().filter(|z| z.modality == modality) {
            if !v.contains(&z.name) {
                v.push(z.name.clone());
            }
        }
        v
    };
    show(
        &mut reg,
        &Show {
            dir,
            x: names("language"),
            y: names("vision"),
            x_perf: "bpb",
            null: a.null.unwrap_or(0),
            plots: !a.no_plots,
        },
    )
}

fn run_real(a: DemoArgs) -> Result<()> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("prh-demo-real"));
    let manifest = real_zoo::Manifest::embedded()?;
    let mut reg = Registry::init(&dir)?;
    let (x, y) = (manifest.names("language"), manifest.names("vision"));
    println!(
        "real-zoo demo registry: {} ({} vision and {} language pretrained models; n = {} image-caption pairs, dataset {}: {})",
        dir.display(),
        y.len(),
        x.len(),
        manifest.dataset.n,
        manifest.dataset.name,
        manifest.dataset.source
    );
    let reports = real_zoo::ingest_into(&mut reg, &dir.join("inputs"), &manifest)?;
    summarize(&reg, &reports, &dir)?;
    show(
        &mut reg,
        &Show {
            dir,
            x,
            y,
            x_perf: "category_knn10",
            null: a.null.unwrap_or(200),
            plots: !a.no_plots,
        },
    )
}

/// Prints what was ingested: files and representations, the models, their scores.
fn summarize(reg: &Registry, reports: &[IngestReport], dir: &Path) -> Result<()> {
    let new_rows: usize = reports
        .iter()
        .map(|r| r.layers.iter().filter(|l| l.new_row).count())
        .sum();
    let total: usize = reports.iter().map(|r| r.layers.len()).sum();
    println!(
        "ingested {} files: {total} representations ({new_rows} new)\n",
        reports.len()
    );
    println!("models:");
    output::render(
        &reg.catalog.models()?,
        Format::Table,
        &mut std::io::stdout(),
    )?;
    println!("\nscores:");
    output::render(
        &reg.catalog.scores(None)?,
        Format::Table,
        &mut std::io::stdout(),
    )?;
    let reps = reg.catalog.reps(&RepFilter::default())?;
    println!(
        "\n{} representations stored as {} blobs under {}",
        reps.len(),
        reg.catalog.blob_hashes()?.len(),
        dir.join("blobs").display()
    );
    Ok(())
}

/// Aligns every language model with every vision model (latest checkpoints, cached), then
/// shows the table, the trend of the language models' alignment against their performance,
/// and the plots: through [`View`], as `prh align`, `prh trend`, `prh matrix` and the dashboard.
fn show(reg: &mut Registry, s: &Show) -> Result<()> {
    let view = View {
        spec: MetricSpec::new(Metric::MutualKnn),
        prep: Prep::OFFICIAL,
        reduce: Reduce::Max,
    };
    let (x, y) = (s.x.join(","), s.y.join(","));
    let null = (s.null > 0).then_some(NullSpec {
        permutations: s.null,
        seed: 0,
        alpha: prh::stats::DEFAULT_ALPHA,
    });
    let bar = Bar::new(false);
    let t = std::time::Instant::now();
    let results = view.fill(reg, (x.parse()?, y.parse()?), false, null, &bar)?;
    drop(bar);
    let computed: usize = results.iter().map(|r| r.cells_computed).sum();
    let cached: usize = results.iter().map(|r| r.cells_cached).sum();
    println!(
        "\nalignment (mutual_knn, k = 10, best over layer pairs{}): {computed} cells computed, {cached} from the cache, {:.2} s",
        if s.null > 0 {
            format!(", {} permutations", s.null)
        } else {
            String::new()
        },
        t.elapsed().as_secs_f64()
    );
    print_results(&results, FormatArg::Table)?;

    // Alignment vs. performance: under the hypothesis, better models align more.
    let trend = view.trend(
        reg,
        &TrendQuery {
            x: &x,
            y: &y,
            perf: s.x_perf,
            lower_is_better: None,
            per_y: false,
            bootstrap: 1000,
            seed: 0,
        },
    )?;
    println!(
        "\ntrend: each language model's mean alignment to the vision models vs. its {}",
        s.x_perf
    );
    output::render(&trend.models, Format::Table, &mut std::io::stdout())?;
    println!(
        "pearson r = {:.3}, spearman ρ = {:.3}; {}",
        trend.pearson_r.unwrap_or(f64::NAN),
        trend.spearman_rho.unwrap_or(f64::NAN),
        trend.verdict
    );
    // Each side ordered by its own score (the vision models have no bpb).
    let matrix = view.matrix(reg, (&x, &y), Some(s.x_perf), None)?;
    println!(
        "\nmatrix (mutual_knn; rows by {}, columns by {}, worst to best):",
        matrix.row_order.as_deref().unwrap_or("name"),
        matrix.col_order.as_deref().unwrap_or("name")
    );
    let rows: Vec<serde_json::Value> = matrix
        .rows
        .iter()
        .zip(&matrix.values)
        .map(|(r, vals)| {
            let mut o = serde_json::Map::new();
            o.insert("model".into(), r.clone().into());
            for (c, v) in matrix.cols.iter().zip(vals) {
                o.insert(c.clone(), v.map(|v| format!("{v:.3}")).into());
            }
            o.into()
        })
        .collect();
    output::render_values(&rows, Format::Table, &mut std::io::stdout())?;
    if s.plots {
        let tp = s.dir.join("trend.svg");
        let mp = s.dir.join("matrix.svg");
        prh::plot::trend(&tp, &trend, s.x_perf, "mutual_knn")?;
        prh::plot::matrix(&mp, &matrix, "mutual_knn")?;
        println!("\nplots: {} and {}", tp.display(), mp.display());
    }
    println!(
        "\nnext: prh --registry {} trend --metric mutual_knn --x modality=language --y modality=vision --perf {} --calibrated",
        s.dir.display(),
        s.x_perf
    );
    Ok(())
}
