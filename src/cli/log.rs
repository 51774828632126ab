//! `prh log`: ingest a new checkpoint and align it against named models in one command.

use anyhow::Result;

use super::Ctx;
use super::align::print_results;
use super::args::SweepArgs;
use super::ingest::IngestArgs;
use super::progress::Bar;
use prh::sweep::{self, Selector};

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

pub fn run(ctx: &Ctx, a: LogArgs) -> Result<()> {
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
