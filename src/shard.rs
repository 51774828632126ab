//! Shards: a sweep split over N processes that share no database (docs/design.md, "Shards").
//! `prh align … --shard I/N --out part-I.prh` computes a deterministic 1/N of the sweep's model
//! pairs from a registry it only reads — its catalog copied to a scratch directory, its blobs
//! read where they are — and writes the cells to a bundle sealed with the registry's key
//! ([`crate::bundle::proof`]). `prh import part-*.prh` merges the parts and serves their cells;
//! the union is the one-process sweep, cell for cell.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

use crate::bundle::{self, Staging, proof::Key};
use crate::catalog::SqliteCatalog;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::store::{BlobHash, BlobStore, FsBlobStore, OverlayBlobStore};
use crate::sweep::{self, DerivedCache, Progress, SweepPair, SweepRequest};

/// Shard `index` of `of` (`I/N`, I from 0 as array indices run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// How many shards the sweep is split into.
    pub of: usize,
}

/// The most shards a sweep is split into (more is a typo, not a plan).
pub const MAX_SHARDS: usize = 100_000;

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "--shard {s:?}: {why}; give I/N with 0 ≤ I < N, e.g. --shard $SLURM_ARRAY_TASK_ID/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let of: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if of == 0 || of > MAX_SHARDS {
            return Err(bad(&format!("N must be 1 to {MAX_SHARDS}")));
        }
        if index >= of {
            return Err(bad("I must be below N (shards count from 0)"));
        }
        Ok(Shard { index, of })
    }
}

/// Which shard each pair goes to: pairs by cells, largest first (ties in sweep order), each to
/// the shard with the fewest cells so far (the lowest index on ties). It depends only on the
/// pairs and their sizes, never on what is cached, so every shard computes the same split
/// however far the others have got, and the largest shard holds at most the mean plus one pair.
pub fn assign(cells: &[usize], of: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(cells[i]), i));
    let mut load = vec![0usize; of];
    let mut to = vec![0usize; cells.len()];
    for i in order {
        let s = (0..of).min_by_key(|&s| (load[s], s)).expect("of ≥ 1");
        load[s] += cells[i];
        to[i] = s;
    }
    to
}

/// What a shard did.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    /// `I/N`.
    pub shard: String,
    /// The sweep's digest, equal in every shard of one sweep.
    pub sweep: String,
    /// The bundle written.
    pub path: PathBuf,
    /// Pairs of the sweep in all.
    pub pairs: usize,
    /// This shard's pairs.
    pub pairs_here: usize,
    /// This shard's cells in all.
    pub cells_here: usize,
    /// This shard's cells computed now (the rest were cached in the registry).
    pub cells_computed: usize,
    /// The bundle's size.
    pub bytes: u64,
}

/// Computes shard `shard` of `req`'s sweep from `reg` (which is only read) into the bundle
/// `out`. The scratch copy of the catalog lives under `scratch` (the system's temporary
/// directory when `None`) while it runs.
pub fn run(
    reg: Registry,
    req: &SweepRequest,
    shard: Shard,
    out: &Path,
    scratch: Option<&Path>,
    progress: &dyn Progress,
) -> Result<ShardReport> {
    if out.exists() {
        return Err(Error::Conflict(format!(
            "{} exists; a shard never overwrites a file (remove it to run the shard again)",
            out.display()
        )));
    }
    let key = Key::get_or_create(&reg)?;
    let base = scratch.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let dir = Staging::under(&base, &format!("prh-shard-{}-of-{}", shard.index, shard.of))?;
    let copy = dir.path().join("catalog.db");
    reg.catalog.working_copy(&copy)?;
    let top = FsBlobStore::new(dir.path());
    top.create_dirs()?;
    let Registry { catalog, store, .. } = reg;
    drop(catalog);
    let base: Arc<dyn BlobStore> = Arc::from(store);
    let mut work = Registry::with_parts(
        dir.path(),
        Box::new(SqliteCatalog::open(&copy)?),
        Box::new(OverlayBlobStore {
            base: base.clone(),
            top: Box::new(top),
        }),
    )?;
    // Planned on the copy: planning stores clamp thresholds, which the registry must not get.
    let pairs = sweep::sweep_pairs(&work, req)?;
    let digest = digest(req, &pairs)?;
    let to = assign(&pairs.iter().map(|p| p.total).collect::<Vec<_>>(), shard.of);
    let mine: Vec<&SweepPair> = pairs
        .iter()
        .zip(&to)
        .filter(|(_, s)| **s == shard.index)
        .map(|(p, _)| p)
        .collect();

    let todo: usize = mine.iter().map(|p| p.cells).sum();
    progress.start(todo as u64);
    let mut cache = DerivedCache::new(req.mem_budget);
    // The sweep's checkpoints, resolved once for all of this shard's pairs.
    let (xs, ys) = sweep::resolve_request(&work, req)?;
    for p in mine.iter().filter(|p| p.cells > 0) {
        progress.message(&p.label);
        let pair = (p.x, p.y);
        sweep::fill_resolved(&mut work, req, (&xs, &ys), pair, None, &mut cache, progress)?;
    }

    let mut models: Vec<String> = mine
        .iter()
        .flat_map(|p| [p.x_model.clone(), p.y_model.clone()])
        .collect();
    models.sort();
    models.dedup();
    let held_there = |h: &BlobHash| -> Result<bool> { base.exists(h) };
    let prove = |catalog: &str| key.prove(catalog, &digest, shard.index, shard.of);
    let written = bundle::export_shard(&work, out, &models, &held_there, &prove)?;
    Ok(ShardReport {
        shard: format!("{}/{}", shard.index, shard.of),
        sweep: digest,
        path: out.to_path_buf(),
        pairs: pairs.len(),
        pairs_here: mine.len(),
        cells_here: mine.iter().map(|p| p.total).sum(),
        cells_computed: todo,
        bytes: written.bytes,
    })
}

/// The sweep's digest: its pairs (by model and checkpoint name, in sweep order), metrics and
/// preparation. Every shard of one sweep reading one registry computes the same.
fn digest(req: &SweepRequest, pairs: &[SweepPair]) -> Result<String> {
    let labels: Vec<&str> = pairs.iter().map(|p| p.label.as_str()).collect();
    let text = serde_json::to_string(&(labels, &req.specs, &req.prep, &req.dataset, &req.pool))
        .map_err(|e| Error::Internal(format!("a sweep serialises: {e}")))?;
    Ok(blake3::hash(text.as_bytes()).to_hex()[..32].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_as_array_indices_run() {
        assert_eq!("3/4".parse::<Shard>().unwrap(), Shard { index: 3, of: 4 });
        for bad in ["4/4", "1/0", "x/2", "2", "-1/3"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.to_string().contains("0 ≤ I < N"), "{bad}: {e}");
        }
    }

    #[test]
    fn pairs_are_split_evenly_whatever_their_sizes() {
        // 16 equal pairs over 4 shards: 4 each.
        let to = assign(&[10; 16], 4);
        for s in 0..4 {
            assert_eq!(to.iter().filter(|&&t| t == s).count(), 4);
        }
        // Unequal pairs: no shard holds more than the mean plus the largest pair.
        let cells: Vec<usize> = (0..37).map(|i| 1 + (i * 7919) % 50).collect();
        let to = assign(&cells, 5);
        let mut load = [0usize; 5];
        for (c, s) in cells.iter().zip(&to) {
            load[*s] += c;
        }
        let mean = cells.iter().sum::<usize>() / 5;
        assert!(load.iter().all(|&l| l <= mean + 50), "{load:?}");
        // Fewer pairs than shards: the rest are empty, nobody gets two.
        assert_eq!(assign(&[5, 9], 4), vec![1, 0]);
    }
}
