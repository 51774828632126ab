//! Observing a race from outside, so a race or fault test can prove that what it provokes
//! happened: which files a running process holds open, and whether a registry's writer lock
//! is held by someone.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether process `pid` has `file` open (read from `/proc/<pid>/fd`).
pub fn has_open(pid: u32, file: &Path) -> bool {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want))
}

/// Whether some process holds the registry lock at `reg/lock` (shared, as a writer between
/// looking at blobs and committing its rows, or exclusive, as gc). Probes with a
/// non-blocking exclusive `flock` that is released at once.
pub fn lock_is_held(reg: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(reg.join("lock"))
    else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; dropping the file releases it.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0
}

/// Polls `cond` every 200 µs until it holds (true) or `limit` passes, or `gone` says the
/// process it watches has ended (false).
pub fn wait_for(
    limit: Duration,
    mut gone: impl FnMut() -> bool,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        if gone() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}
