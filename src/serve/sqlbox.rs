//! The SQL console's queries run in a child prh (`prh query … --format parquet`) under the
//! server's SQL budget: at most `seconds` of wall time and `mib` of address space. A query past
//! either is stopped (the child killed, or its allocation refused) and answered 400, and the
//! server goes on; a polars query cannot be cancelled or bounded in memory inside the server's
//! own process. A client that leaves stops its query too.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polars::prelude::DataFrame;

use super::Job;
use crate::error::{Error, ErrorKind, Result};
use crate::sweep::Progress;

/// What one console query may spend.
#[derive(Debug, Clone, Copy)]
pub struct SqlBudget {
    /// Wall time, from starting the child to its result.
    pub seconds: u64,
    /// Address space of the child (its data, the tables it loads, code and thread stacks).
    pub mib: u64,
}

/// Threads of the child: each reserves address space (a stack, a malloc arena), which would
/// count against the budget on a many-core machine.
const CHILD_THREADS: &str = "2";

/// Runs `q` on the registry at `root` in a child prh within `budget`; its result.
pub(super) fn run(root: &Path, q: &str, budget: SqlBudget, job: &Job) -> Result<DataFrame> {
    let out = Scratch(std::env::temp_dir().join(format!(
        "prh-sql-{}-{}.parquet",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let out = &out.0;
    let exe = std::env::current_exe().map_err(|e| Error::io("the prh executable", e))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("query")
        .arg("--registry")
        .arg(root)
        .args(["--format", "parquet", "--out"])
        .arg(out)
        .arg("--")
        .arg(q)
        .env("POLARS_MAX_THREADS", CHILD_THREADS)
        .env("RAYON_NUM_THREADS", CHILD_THREADS)
        .env("MALLOC_ARENA_MAX", CHILD_THREADS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let bytes = budget.mib.saturating_mul(1 << 20);
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
    // which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| Error::io(&exe, e))?;
    let mut stderr = child.stderr.take().expect("piped");
    // Read stderr beside the wait (a child that writes much would otherwise block on it).
    let said = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.by_ref().take(64 << 10).read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(budget.seconds);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| Error::io(&exe, e))? {
            break Some(s);
        }
        if Instant::now() >= deadline || job.cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let said = said.join().unwrap_or_default();
    let Some(status) = status else {
        crate::sweep::go_on(job)?;
        return Err(over(format!(
            "the query ran longer than the SQL budget of {} s",
            budget.seconds
        )));
    };
    if status.success() {
        let f = std::fs::File::open(out).map_err(|e| Error::io(out, e))?;
        use polars_io::prelude::SerReader;
        return polars_io::parquet::read::ParquetReader::new(f)
            .finish()
            .map_err(|e| Error::Internal(format!("reading the query's result: {e}")));
    }
    if said.contains("memory allocation of") || said.contains("capacity overflow") {
        return Err(over(format!(
            "the query needed more memory than the SQL budget of {} MiB",
            budget.mib
        )));
    }
    // A child killed by a signal other than the budget's is a bug.
    let kind = status
        .code()
        .and_then(ErrorKind::from_exit_code)
        .unwrap_or(ErrorKind::Internal);
    let mut msg = None;
    let mut hint = None;
    for line in said.lines() {
        if let Some(m) = line.strip_prefix("error: ") {
            msg.get_or_insert_with(|| m.to_string());
        } else if let Some(h) = line.strip_prefix("hint: ") {
            hint.get_or_insert_with(|| h.to_string());
        }
    }
    let e = Error::of_kind(
        kind,
        msg.unwrap_or_else(|| format!("the query failed ({status}): {}", said.trim())),
    );
    Err(match hint {
        Some(h) => e.hint(h),
        None => e,
    })
}

/// Numbers the result files of the server's queries.
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A file removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A query past the budget: the client's to narrow.
fn over(msg: String) -> Error {
    Error::Invalid(msg).hint(
        "narrow the query (a WHERE, a GROUP BY, fewer joins), or run it with `prh query` on a machine of your own, where no budget applies; the server's budget is set by `prh serve --sql-seconds/--sql-mib`",
    )
}
