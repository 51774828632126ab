//! An advisory lock on a directory (`flock` on `<dir>/lock`): the SQLite catalog's blob guard
//! (`<directory of catalog.db>/lock`, see `Catalog::blob_guard`) that keeps `gc` from deleting
//! a blob that a writer is about to name.
//!
//! Writers (ingest, import) hold it shared from the moment they look at which blobs exist until
//! their catalog rows are committed; `gc` holds it exclusively while it decides what is
//! unreferenced and deletes it. Many writers run at once; gc waits for them, and they for gc.
//! The kernel releases the lock when a process dies, so a killed writer never wedges gc.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// A held lock; released when dropped.
pub struct RegistryLock {
    _file: File,
}

impl RegistryLock {
    /// Waits for and takes the lock shared (writers).
    pub fn shared(root: &Path) -> Result<Self> {
        Self::take(root, libc::LOCK_SH)
    }

    /// Waits for and takes the lock exclusively (gc).
    pub fn exclusive(root: &Path) -> Result<Self> {
        Self::take(root, libc::LOCK_EX)
    }

    fn take(root: &Path, op: libc::c_int) -> Result<Self> {
        let path = root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(RegistryLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(&path, e));
            }
        }
    }
}
