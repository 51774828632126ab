//! `prh demo`: builds a demo registry from a synthetic zoo and shows prh working end to end.

use std::path::PathBuf;

use anyhow::Result;

use prh::catalog::RepFilter;
use prh::demo::ZooSpec;
use prh::output::{self, Format};
use prh::registry::Registry;

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
    Ok(())
}
