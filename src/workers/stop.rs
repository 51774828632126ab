//! Stopping a worker the way schedulers do: Slurm sends SIGTERM at preemption and at the time
//! limit (then SIGKILL after its KillWait, 30 s by default), Kubernetes at pod termination (then
//! SIGKILL after the grace period, 30 s by default), a user presses Ctrl-C (SIGINT). The first
//! signal asks the worker to stop: it claims nothing more, and the unit in hand may finish
//! within the grace period, else it is given back to the catalog for another worker at once.
//! A second signal ends the grace period.
//!
//! The handler only stores the time of the signal (`clock_gettime` is async-signal-safe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When the first stop signal came (CLOCK_MONOTONIC, ns); 0 = none. 1 = the grace is over.
static STOP_AT_NS: AtomicU64 = AtomicU64::new(0);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

extern "C" fn on_signal(_: libc::c_int) {
    let now = monotonic_ns().max(2);
    if STOP_AT_NS
        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // The second signal: no more grace.
        STOP_AT_NS.store(1, Ordering::SeqCst);
    }
}

/// Makes SIGTERM and SIGINT requests to stop (see the module's documentation) instead of
/// ending the process at once.
pub fn stop_on_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic and calls clock_gettime.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    STOP_AT_NS.load(Ordering::SeqCst) != 0
}

/// Whether a stop was asked for more than `grace` ago (or twice).
pub fn grace_over(grace: Duration) -> bool {
    match STOP_AT_NS.load(Ordering::SeqCst) {
        0 => false,
        at => monotonic_ns().saturating_sub(at) >= grace.as_nanos() as u64,
    }
}
