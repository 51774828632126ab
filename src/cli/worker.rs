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
    /// Seconds a claim holds without renewal (1 to 86400); the worker renews every third of it,
    /// so a worker that dies frees its unit this long after its last renewal.
    #[arg(long, default_value_t = DEFAULT_LEASE.as_secs_f64())]
    pub lease_seconds: f64,
    /// Seconds between looks for work when there is none (0.05 to 3600).
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Seconds the unit in hand may take to finish after SIGTERM or SIGINT (0 to 3600) before
    /// it is given back for another worker; the worker then exits 0. Schedulers send SIGTERM
    /// to preempt or at the time limit and SIGKILL some time after (Slurm's KillWait and
    /// Kubernetes' grace period: 30 s by default), so keep it below that. A second signal ends
    /// the grace at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    pub grace: f64,
    /// This worker's name in `prh status` (default: host:pid, and the Slurm array job and task,
    /// or the Kubernetes completion index, when the scheduler sets them).
    #[arg(long)]
    pub name: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

/// Lease lengths a worker accepts, in seconds: shorter than a second and renewals (every third
/// of it) race the catalog's round trips, so two workers take each other's units; longer than
/// a day and a killed worker's unit waits that long.
pub const LEASE_RANGE: (f64, f64) = (1.0, 86_400.0);
/// Polling intervals a worker accepts, in seconds.
pub const POLL_RANGE: (f64, f64) = (0.05, 3_600.0);
/// Grace periods a worker accepts, in seconds.
pub const GRACE_RANGE: (f64, f64) = (0.0, 3_600.0);

/// `v` seconds as a duration, refused outside `range` (NaN and infinities included).
fn seconds(v: f64, what: &str, (lo, hi): (f64, f64)) -> Result<Duration> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        anyhow::bail!(prh::Error::Invalid(format!(
            "--{what} {v}: give a number of seconds from {lo} to {hi}"
        )))
    }
}

pub fn run(ctx: &Ctx, a: WorkerArgs) -> Result<()> {
    let opts = WorkOptions {
        name: a.name.unwrap_or_else(workers::default_name),
        sweep: a.sweep,
        once: a.once,
        lease: seconds(a.lease_seconds, "lease-seconds", LEASE_RANGE)?,
        poll: seconds(a.poll, "poll", POLL_RANGE)?,
        grace: seconds(a.grace, "grace", GRACE_RANGE)?,
    };
    workers::stop_on_signals();
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
