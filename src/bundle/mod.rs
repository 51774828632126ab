//! Sharing a registry (docs/design.md §10): `export` writes one tar file (a consistent snapshot of
//! the catalog plus every blob it references and a manifest), `import` merges one into a
//! registry after verifying everything, `verify` re-hashes blobs and recomputes cached cells,
//! `gc` removes what nothing references.
//!
//! Bundle format (tar, entries in this order):
//! - `manifest.json`: `{"format": "prh-bundle", "format_version": 1, "prh_version", "schema_version",
//!   "catalog": {"bytes", "blake3"}, "blobs": [{"hash", "bytes"}, ...]}`, and in a shard's
//!   bundle `"shard": {"registry", "sweep", "index", "of", "seal"}` ([`proof`]); a shard's
//!   bundle leaves out the blobs the registry it was computed from holds.
//! - `catalog.db`: the SQLite catalog snapshot (`VACUUM INTO`, consistent while others write)
//! - `blobs/<hash[0:2]>/<hash>`: every blob the snapshot references, byte for byte.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::snapshot;
use crate::catalog::{CellRow, CellTable, GuardMode, MIGRATIONS, MergeCounts, MergeOptions};
use crate::error::{Error, Result};
use crate::matrix;
use crate::metrics::{Derived, MetricSpec, Scope, prep};
use crate::registry::Registry;
use crate::rng::Rng;
use crate::store::{Blob, BlobHash};

/// Identifies a bundle.
pub const FORMAT: &str = "prh-bundle";
/// Version of the bundle layout.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted, in bytes.
const MAX_MANIFEST: u64 = 256 << 20;

/// The manifest at the head of every bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub prh_version: String,
    pub schema_version: usize,
    pub catalog: FileEntry,
    pub blobs: Vec<BlobEntry>,
    /// Present in a shard's bundle only: which shard of which registry's sweep, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardProof>,
}

/// Size and hash of the catalog snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub bytes: u64,
    pub blake3: String,
}

/// One blob in a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobEntry {
    pub hash: String,
    pub bytes: u64,
}

/// A directory of its own, removed when dropped: under the registry's `tmp/` for bundles, a
/// shard's scratch directory for its working copy.
pub(crate) struct Staging(pub(super) PathBuf);

impl Staging {
    fn new(reg: &Registry, what: &str) -> Result<Self> {
        Staging::under(&reg.root.join("tmp"), what)
    }

    /// A new directory `what-PID-NANOS` in `dir`.
    pub(crate) fn under(dir: &Path, what: &str) -> Result<Self> {
        let p = dir.join(format!(
            "{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(Staging(p))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

mod export;
mod gc;
mod import;
pub mod proof;
mod verify;

pub use export::*;
pub use gc::*;
pub use import::*;
pub use proof::ShardProof;
pub use verify::*;
