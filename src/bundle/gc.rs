//! `prh gc`: unreferenced blobs, stale cache rows and abandoned staging removed, under the
//! collector's blob guard.

use super::*;

/// How `gc` runs.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Report only; remove nothing.
    pub dry_run: bool,
    /// Unnamed blobs in a shared object store younger than this are kept
    /// ([`crate::store::BlobStore::age`]).
    pub min_age: std::time::Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            min_age: crate::store::ORPHAN_MIN_AGE,
        }
    }
}

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Blobs removed: rows no representation references, and files no row names.
    pub blobs: Vec<String>,
    /// Their size.
    pub blob_bytes: u64,
    /// Cached cells of metric versions this prh no longer computes, or of removed blobs.
    pub cells: usize,
    /// Cached null and bootstrap draws of such metric versions.
    pub null_samples: usize,
    /// Staging leftovers of processes that are gone, or older than an hour.
    pub tmp_entries: usize,
    /// Blobs no row names that a shared object store has held for less than `min_age`: kept
    /// (a writer elsewhere may be about to name them); a later gc takes them.
    pub young_blobs_kept: usize,
    /// Nothing was removed; the report says what would have been.
    pub dry_run: bool,
}

/// Removes blobs no representation references, blob files no catalog row names, cache rows of
/// metric versions this prh no longer computes or of blobs that are gone, and staging leftovers
/// of processes that are gone (or older than an hour). Holds the catalog's blob guard
/// exclusively ([`crate::catalog::Catalog::blob_guard`]: a file lock for SQLite, an advisory
/// lock for PostgreSQL, so every machine sharing the catalog takes part), so an ingest that has
/// published its blobs but not yet committed its rows is never disturbed.
pub fn gc(reg: &mut Registry, opts: GcOptions) -> Result<GcReport> {
    let dry_run = opts.dry_run;
    let mut rep = GcReport {
        dry_run,
        ..Default::default()
    };
    // No writer is between publishing a blob and committing its rows while gc decides and
    // deletes (see `lock`).
    let _guard = reg.catalog.blob_guard(GuardMode::Collector)?;
    let current: Vec<(&str, u32)> = crate::metrics::ALL
        .iter()
        .map(|m| (m.name(), m.version()))
        .collect();
    let plan = reg.catalog.gc_plan(&current)?;
    let known = reg.catalog.blob_hashes()?.into_iter().collect();
    let hour = std::time::Duration::from_secs(3600);
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map(|e| e > hour).unwrap_or(false))
            .unwrap_or(false)
    };
    // Under the exclusive blob guard no writer (on any machine sharing the catalog) is
    // between publishing a blob and committing its rows, so a stored blob without rows is
    // garbage — except, in a shared object store, one written within the last hour, which a
    // writer that does not take the guard (an older prh) may still be about to name.
    let mut orphan_files = Vec::new();
    for h in stray_blobs(reg, &known)? {
        if reg.store.age(&h)?.is_some_and(|a| a < opts.min_age) {
            rep.young_blobs_kept += 1;
        } else {
            orphan_files.push(h);
        }
    }
    rep.cells = plan.stale_cells;
    rep.null_samples = plan.stale_draws;
    for (h, b) in &plan.unreferenced {
        rep.blobs.push(h.to_hex());
        rep.blob_bytes += *b;
    }
    for h in &orphan_files {
        rep.blobs.push(h.to_hex());
        rep.blob_bytes += reg.store.get(h).map_or(0, |b| b.bytes().len() as u64);
    }
    let mut tmp_old = Vec::new();
    if let Ok(entries) = fs::read_dir(reg.root.join("tmp")) {
        for e in entries.flatten() {
            if old(&e.path()) || owner_is_gone(&e.file_name().to_string_lossy()) {
                tmp_old.push(e.path());
            }
        }
    }
    rep.tmp_entries = tmp_old.len();
    if dry_run {
        return Ok(rep);
    }
    let unreferenced: Vec<BlobHash> = plan.unreferenced.iter().map(|(h, _)| *h).collect();
    reg.catalog.gc_apply(&current, &unreferenced)?;
    for h in unreferenced.iter().chain(&orphan_files) {
        let _ = reg.store.delete(h);
    }
    for p in &tmp_old {
        let _ = if p.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        };
    }
    Ok(rep)
}
