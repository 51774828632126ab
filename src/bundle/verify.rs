//! `prh verify`: every blob re-hashed, a sample of cached cells recomputed (also used by import
//! to check a bundle's cells).

use super::*;

/// Up to `k` of `rows`, chosen uniformly at random.
pub(super) fn sample<T>(mut rows: Vec<T>, k: usize, rng: &mut Rng) -> Vec<T> {
    let mut order = rng.permutation(rows.len());
    order.truncate(k);
    // Highest index first, so each swap_remove leaves the indices still to take in place.
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.into_iter().map(|i| rows.swap_remove(i)).collect()
}

/// Recomputes one cell from blobs found by `open`; `None` for a metric or version this prh
/// does not compute.
pub(super) fn recompute_cell(
    open: &dyn Fn(&BlobHash) -> Result<Blob>,
    c: &CellRow,
) -> Result<Option<f64>> {
    let Some(spec) = MetricSpec::from_key(&c.metric, &c.params) else {
        return Ok(None);
    };
    if spec.metric.version() as i64 != c.version {
        return Ok(None);
    }
    let load = |h: &str, p: &str| -> Result<Derived> {
        let (t, norm) = prep::from_key(p)
            .ok_or_else(|| Error::Corrupt(format!("unreadable prep key {p:?}")))?;
        let budget = crate::metrics::derived::DEFAULT_BUDGET;
        Derived::from_blob(open(&h.parse()?)?, t, norm, budget)
    };
    let a = load(&c.hash_x, &c.prep_x)?;
    let b = load(&c.hash_y, &c.prep_y)?;
    spec.compute(&a, &b).map(Some)
}

/// True when a recomputed value equals the cached one (up to float rounding).
pub(super) fn same_value(cached: f64, got: f64) -> bool {
    (got - cached).abs() <= 1e-6 * (1.0 + cached.abs())
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Blobs re-hashed and their headers compared with the catalog.
    pub blobs_checked: usize,
    /// Stored kNN graphs (large-n path) read back whole: checksum, shape, indices.
    pub graphs_checked: usize,
    /// Cached cells recomputed from their blobs.
    pub cells_recomputed: usize,
    /// Imported cells that recomputed equal and are now served.
    pub cells_promoted: usize,
    /// Everything wrong, one line each; empty when the registry is sound.
    pub problems: Vec<String>,
    /// Blob files that no catalog row names (garbage for `gc`, e.g. left by a crash between
    /// publishing a blob and committing its rows; not an error).
    pub unreferenced_files: Vec<String>,
}

/// Re-hashes every blob and recomputes `recompute` randomly chosen cached cells.
pub fn verify(reg: &mut Registry, recompute: usize, seed: u64) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    if let Some(found) = reg.catalog.integrity_check()? {
        rep.problems
            .push(format!("catalog.db: integrity check: {found}"));
    }
    let rows = reg.catalog.blobs()?;
    for b in &rows {
        rep.blobs_checked += 1;
        let used = b.used_by.as_deref().unwrap_or("no representation");
        let (hash, h) = (&b.row.hash, b.row.hash.to_hex());
        match reg.store.get(hash) {
            Err(e) => rep.problems.push(format!("blob {h} ({used}): {e}")),
            Ok(blob) => {
                if let Err(e) = blob.verify() {
                    rep.problems
                        .push(format!("blob {h} ({used}): altered: {e}"));
                } else if blob.dtype.name() != b.row.dtype || blob.n != b.row.n || blob.d != b.row.d
                {
                    rep.problems.push(format!(
                        "blob {h} ({used}): header disagrees with the catalog"
                    ));
                }
            }
        }
    }
    let sizes: HashMap<BlobHash, usize> = rows.iter().map(|b| (b.row.hash, b.row.n)).collect();
    for (h, prep, k) in reg.catalog.knn_graph_keys()? {
        let bytes = reg.catalog.knn_graph(&h, &prep, k)?.unwrap_or_default();
        let n = sizes.get(&h).copied().unwrap_or(0);
        if crate::metrics::graph::decode(&bytes, n, k).is_none() {
            rep.problems.push(format!(
                "kNN graph of blob {h} ({prep}, k = {k}): damaged (derived data: the next sweep that needs it recomputes and replaces it)"
            ));
        }
        rep.graphs_checked += 1;
    }
    let known = rows.iter().map(|b| b.row.hash).collect();
    rep.unreferenced_files = stray_blobs(reg, &known)?
        .iter()
        .map(BlobHash::to_hex)
        .collect();
    if recompute > 0 {
        recompute_cells(reg, recompute, seed, &mut rep)?;
    }
    Ok(rep)
}

/// Recomputes up to `count` cells: cells imported from bundles first (those that match move
/// into `cells` and are served from then on), then randomly chosen cells of the cache.
pub(super) fn recompute_cells(
    reg: &mut Registry,
    count: usize,
    seed: u64,
    rep: &mut VerifyReport,
) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut left = count;
    for table in [CellTable::Imported, CellTable::Served] {
        for c in sample(reg.catalog.cell_rows(table)?, left, &mut rng) {
            let (hx, hy) = (
                &c.hash_x[..12.min(c.hash_x.len())],
                &c.hash_y[..12.min(c.hash_y.len())],
            );
            let what = format!(
                "{}cell {}({}) {hx}…×{hy}…",
                if table == CellTable::Served {
                    ""
                } else {
                    "imported "
                },
                c.metric,
                c.params
            );
            let open = |h: &BlobHash| reg.store.get(h);
            match recompute_cell(&open, &c) {
                Ok(None) => continue, // a metric or version this prh does not compute
                Err(e) => rep.problems.push(format!("{what}: cannot recompute: {e}")),
                Ok(Some(v)) if !same_value(c.value, v) => rep
                    .problems
                    .push(format!("{what}: cached {}, recomputed {v}", c.value)),
                Ok(Some(_)) if table == CellTable::Imported => {
                    reg.catalog.promote_cell(c.ids)?;
                    rep.cells_promoted += 1;
                }
                Ok(Some(_)) => {}
            }
            rep.cells_recomputed += 1;
            left -= 1;
        }
    }
    Ok(())
}

/// Stored blobs that no catalog row (of the hashes `known`) names.
pub(super) fn stray_blobs(reg: &Registry, known: &HashSet<BlobHash>) -> Result<Vec<BlobHash>> {
    Ok(reg
        .store
        .list()?
        .into_iter()
        .filter(|h| !known.contains(h))
        .collect())
}

/// True when a staging entry's name (`<what>-<pid>-…`) names a process that no longer runs on
/// this machine: what it left (a killed ingest's or import's files) is garbage now.
pub(super) fn owner_is_gone(name: &str) -> bool {
    let Some(pid) = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}
