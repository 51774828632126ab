//! `prh demo`: builds a demo registry from a synthetic zoo and shows prh working end to end.

use std::path::PathBuf;

use anyhow::Result;

use super::FormatArg;
use super::align::{Bar, print_results};
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
    println!(
        "\nnext: prh --registry {} align --metric cka --x modality=language --y modality=vision",
        a.dir.display()
    );
    Ok(())
}
