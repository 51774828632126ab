//! `prh demo`: builds a demo registry from a synthetic zoo and shows prh working end to end.

use std::path::PathBuf;

use anyhow::Result;

use super::align::print_results;
use super::args::FormatArg;
use super::progress::Bar;
use prh::analysis;
use prh::catalog::RepFilter;
use prh::demo::ZooSpec;
use prh::metrics::{Metric, MetricSpec, Prep};
use prh::output::{self, Format};
use prh::registry::Registry;
use prh::sweep::{self, Selector, SweepRequest};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory of the demo registry (its generated feature files go to DIR/inputs).
    #[arg(long, default_value = "prh-demo")]
    pub dir: PathBuf,
    /// Do not write the trend and matrix plots.
    #[arg(long)]
    pub no_plots: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let zoo = ZooSpec::demo();
    let mut reg = Registry::init(&a.dir)?;
    println!(
        "demo registry: {} ({} model checkpoints, n = {} samples, dataset demo_{})",
        a.dir.display(),
        zoo.models.len(),
        zoo.n,
        zoo.n
    );
    let reports = zoo.ingest_into(&mut reg, &a.dir.join("inputs"), &format!("demo_{}", zoo.n))?;
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
        a.dir.join("blobs").display()
    );

    // Align every language model with every vision model (latest checkpoints), cached.
    let req = SweepRequest {
        x: Selector::Modality("language".into()),
        y: Selector::Modality("vision".into()),
        dataset: None,
        pool: None,
        all_checkpoints: false,
        x_checkpoint: None,
        specs: vec![MetricSpec::new(Metric::MutualKnn)],
        prep: Prep::OFFICIAL,
        mem_budget: 1 << 30,
        null: 0,
        bootstrap: 0,
        seed: 0,
        alpha: prh::stats::DEFAULT_ALPHA,
        reduce: prh::engine::Reduce::Max,
    };
    let bar = Bar::new(false);
    let t = std::time::Instant::now();
    let results = sweep::sweep(&mut reg, &req, &bar)?;
    drop(bar);
    let computed: usize = results.iter().map(|r| r.cells_computed).sum();
    let cached: usize = results.iter().map(|r| r.cells_cached).sum();
    println!(
        "\nalignment (mutual_knn, k = 10, best over layer pairs): {computed} cells computed, {cached} from the cache, {:.2} s",
        t.elapsed().as_secs_f64()
    );
    print_results(&results, FormatArg::Table)?;

    // Alignment vs. performance: better language models (lower bpb) should align more.
    let names = |modality: &str| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for z in zoo.models.iter().filter(|z| z.modality == modality) {
            if !v.contains(&z.name) {
                v.push(z.name.clone());
            }
        }
        v
    };
    let (xm, ym) = (names("language"), names("vision"));
    let spec = MetricSpec::new(Metric::MutualKnn);
    let kind = prh::query::OFFICIAL_PREP;
    let xi = analysis::latest(&reg, &xm)?;
    let yi = analysis::latest(&reg, &ym)?;
    let x_ids: Vec<prh::catalog::CheckpointId> = xm.iter().map(|m| xi[m]).collect();
    let y_ids: Vec<prh::catalog::CheckpointId> = ym.iter().map(|m| yi[m]).collect();
    let pairs = analysis::cached_pairs(
        &reg,
        &spec,
        kind,
        prh::engine::Reduce::Max,
        &x_ids,
        &y_ids,
        "prh align",
    )?;
    let req = analysis::TrendRequest {
        spec,
        prep: kind.to_string(),
        reduce: prh::engine::Reduce::Max,
        x: xm.clone(),
        y: ym.clone(),
        perf: "bpb".into(),
        lower_is_better: None,
        per_y: false,
        bootstrap: 1000,
        seed: 0,
    };
    let trend = analysis::trend(&reg, &req, &pairs)?;
    println!("\ntrend: each language model's mean alignment to the vision models vs. its bpb");
    output::render(&trend.models, Format::Table, &mut std::io::stdout())?;
    println!(
        "pearson r = {:.3}, spearman ρ = {:.3}; {}",
        trend.pearson_r.unwrap_or(f64::NAN),
        trend.spearman_rho.unwrap_or(f64::NAN),
        trend.verdict
    );
    if !a.no_plots {
        let tp = a.dir.join("trend.svg");
        let mp = a.dir.join("matrix.svg");
        prh::plot::trend(&tp, &trend, "bpb", "mutual_knn")?;
        let order = analysis::order_by_perf(&reg, &xm, "bpb", None)?;
        let yorder = analysis::order_by_perf(&reg, &ym, "accuracy", None)?;
        prh::plot::matrix(
            &mp,
            &analysis::matrix(&pairs, &order, &yorder),
            "mutual_knn",
        )?;
        println!("\nplots: {} and {}", tp.display(), mp.display());
    }
    println!(
        "\nnext: prh --registry {} trend --metric mutual_knn --x modality=language --y modality=vision --perf bpb --calibrated",
        a.dir.display()
    );
    Ok(())
}
