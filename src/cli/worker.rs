//! `prh worker`: claim units of open sweeps (from `prh align --workers N`, here or on another
//! machine) and fill their cells.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use super::args::FormatArg;
use super::progress::Bar;
use prh::output;
use prh::workers::{self, DEFAULT_LEASE, WorkOptions};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Exit when no unit is left (default: wait for new sweeps, polling every --poll seconds).
    #[arg(long)]
    pub once: bool,
    /// Only units of this sweep (its id, as `prh status` shows it).
    #[arg(long)]
    pub sweep: Option<i64>,
    /// Seconds a claim holds without renewal; the worker renews every third of it, so a worker
    /// that dies frees its unit this long after its last renewal.
    #[arg(long, default_value_t = DEFAULT_LEASE.as_secs_f64())]
    pub lease_seconds: f64,
    /// Seconds between looks for work when there is none.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// This worker's name in `prh status` (default: host:pid).
    #[arg(long)]
    pub name: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run(ctx: &Ctx, a: WorkerArgs) -> Result<()> {
    let positive = |v: f64, what: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!(
                "--{what} must be a positive number of seconds"
            ))
        }
    };
    let opts = WorkOptions {
        name: a.name.unwrap_or_else(workers::default_name),
        sweep: a.sweep,
        once: a.once,
        lease: positive(a.lease_seconds, "lease-seconds")?,
        poll: positive(a.poll, "poll")?,
    };
    let mut reg = ctx.open()?;
    let bar = Bar::new(a.quiet);
    let report = workers::work(&mut reg, &opts, &bar)?;
    drop(bar);
    output::render(
        std::slice::from_ref(&report),
        a.format.into(),
        &mut std::io::stdout(),
    )?;
    Ok(())
}
