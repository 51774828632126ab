//! One representation's kNN graph searched in blocks of rows by several workers
//! (docs/design.md §13): each block is a part stored in the catalog; the worker that stores
//! the last part merges them into the graph, which is then the same as one search's.

use super::*;
use crate::metrics::derived::Knn;
use crate::metrics::derived::dense_fits;
use crate::metrics::graph;

/// A block of rows of one layer's graph, as a unit of work.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphBlock {
    pub checkpoint: CheckpointId,
    /// The layer's stored index.
    pub layer_id: i64,
    /// Rows searched (end excluded).
    pub rows: (i64, i64),
    /// `model @ checkpoint layer L: kNN graph rows a–b of n`.
    pub label: String,
}

/// The largest k any metric of `specs` needs a graph for (a graph for k serves every smaller
/// k), if any.
pub fn graph_k(specs: &[MetricSpec]) -> Option<usize> {
    knn_ks(specs).into_iter().max()
}

/// Rows in blocks of about `rows_per` (a multiple of [`graph::ROW_TILE`], the search's row
/// tiles), as even as that allows; `None` when n fits one block.
fn row_blocks(n: usize, rows_per: usize) -> Option<Vec<(usize, usize)>> {
    let tile = graph::ROW_TILE;
    let per = rows_per.max(1).div_ceil(tile) * tile;
    if rows_per == 0 || n <= per {
        return None;
    }
    let size = n.div_ceil(n.div_ceil(per)).div_ceil(tile) * tile;
    Some(
        (0..n)
            .step_by(size)
            .map(|a| (a, (a + size).min(n)))
            .collect(),
    )
}

/// The graph blocks a request needs before its pairs: every layer of a checkpoint in a pair
/// with missing cells, on the large-n path, with more than `rows_per` rows, whose graph (for
/// [`graph_k`], or a larger k) is not stored; blocks whose part is stored already are left out.
/// Each blob and preparation once.
pub fn graph_blocks(
    reg: &Registry,
    req: &SweepRequest,
    pairs: &[SweepPair],
    rows_per: usize,
) -> Result<Vec<GraphBlock>> {
    let Some(k) = graph_k(&req.specs) else {
        return Ok(Vec::new());
    };
    if rows_per == 0 {
        return Ok(Vec::new());
    }
    let (xs, ys) = resolve(reg, req)?;
    let wanted: HashSet<CheckpointId> = pairs.iter().flat_map(|p| [p.x, p.y]).collect();
    let stored = reg.catalog.knn_graph_keys()?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for ck in xs.iter().chain(&ys) {
        if !wanted.contains(&ck.checkpoint_id) || dense_fits(ck.n, req.mem_budget) {
            continue;
        }
        let Some(blocks) = row_blocks(ck.n, rows_per) else {
            continue;
        };
        let cp = checkpoint_prep(reg, ck, req.prep)?;
        for (l, h) in ck.layers.iter().enumerate() {
            let key = &cp.keys[l];
            let have = stored
                .iter()
                .any(|(sh, sp, sk)| sh == h && sp == key && *sk >= k);
            if have || !seen.insert((*h, key.clone())) {
                continue;
            }
            let parts: HashSet<(i64, i64)> = reg
                .catalog
                .knn_graph_parts(h, key, k)?
                .into_iter()
                .map(|(r, _)| r)
                .collect();
            for &(a, b) in &blocks {
                let rows = (a as i64, b as i64);
                if parts.contains(&rows) {
                    continue;
                }
                out.push(GraphBlock {
                    checkpoint: ck.checkpoint_id,
                    layer_id: ck.layer_ids[l],
                    rows,
                    label: format!(
                        "{} @ {} layer {}: kNN graph rows {a}–{b} of {}",
                        ck.model, ck.checkpoint, ck.layer_ids[l], ck.n
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Searches one block of a layer's graph and stores it as a part; merges the parts into the
/// graph when they now cover every row. `checkpoints`: the request's resolved checkpoints;
/// `cache`: the worker's, for the preparations of checkpoints met before.
pub fn fill_graph_block(
    reg: &Registry,
    req: &SweepRequest,
    checkpoints: &[&CheckpointLayers],
    (checkpoint, layer_id): (CheckpointId, i64),
    rows: (i64, i64),
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<()> {
    let gone = || {
        Error::Conflict(format!(
            "checkpoint {checkpoint} has no layer {layer_id} in this sweep any more (a representation was removed?)"
        ))
    };
    let ck = checkpoints
        .iter()
        .find(|c| c.checkpoint_id == checkpoint)
        .ok_or_else(gone)?;
    let l = ck
        .layer_ids
        .iter()
        .position(|&i| i == layer_id)
        .ok_or_else(gone)?;
    let k = graph_k(&req.specs).ok_or_else(|| {
        Error::Invalid("a graph block in a sweep of metrics without neighbours".into())
    })?;
    let (a, b) = (rows.0 as usize, rows.1 as usize);
    if a >= b || b > ck.n || !a.is_multiple_of(graph::ROW_TILE) {
        return Err(Error::Invalid(format!(
            "graph block rows {a}–{b} do not fit layer {layer_id} of {} rows",
            ck.n
        )));
    }
    let cp = super::plan::known_prep(reg, ck, req.prep, &mut cache.preps)?;
    let (h, key) = (&ck.layers[l], &cp.keys[l]);
    let x = derive_layer(
        reg.store.as_ref(),
        ck,
        h,
        cp.thresholds[l],
        req.prep.normalize,
        cache.budget,
    )?;
    progress.start((b - a) as u64);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let count = |rows: usize| {
        // Tasks report out of order: count each row once.
        let was = done.fetch_max(rows, std::sync::atomic::Ordering::Relaxed);
        progress.advance(rows.saturating_sub(was) as u64);
    };
    // A stop (a signal past the worker's grace) ends the search within one task of rows.
    let stop = || progress.cancelled();
    let part = x.search_rows(k, None, a..b, &count, &stop);
    let Some(part) = part.filter(|_| !progress.cancelled()) else {
        return Err(Error::Interrupted);
    };
    reg.catalog
        .put_knn_graph_part(h, key, k, rows, &graph::encode_part(ck.n, k, a..b, part))?;
    merge_parts(reg, h, key, k, ck.n)?;
    Ok(())
}

/// Merges a layer's stored parts into its graph when they cover rows 0..n in order, and stores
/// it (damaged parts are dropped, so their blocks are searched again); the graph, when merged.
/// Parts left by a sweep planned with other blocks overlap the chain from row 0 and are passed
/// over (each part is exact for its own rows, so any chain covering 0..n gives the graph).
pub fn merge_parts(
    reg: &Registry,
    h: &BlobHash,
    key: &str,
    k: usize,
    n: usize,
) -> Result<Option<(Knn, Ties)>> {
    let parts = reg.catalog.knn_graph_parts(h, key, k)?;
    let mut next = 0usize;
    let mut read = Vec::with_capacity(parts.len());
    for ((a, b), bytes) in parts {
        let (a, b) = (a as usize, b as usize);
        if a < next {
            continue;
        }
        if a > next {
            return Ok(None);
        }
        match graph::decode_part(&bytes, n, k, a..b) {
            Some(p) => read.push(p),
            None => {
                reg.catalog.drop_knn_graph_parts(h, key, k)?;
                return Ok(None);
            }
        }
        next = b;
    }
    if next != n {
        return Ok(None);
    }
    let (knn, ties) = graph::merge_parts(k, read);
    reg.catalog
        .put_knn_graph(h, key, k, &graph::encode(&knn, &ties))?;
    reg.catalog.drop_knn_graph_parts(h, key, k)?;
    Ok(Some((knn, ties)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_split_evenly_in_multiples_of_64() {
        assert_eq!(row_blocks(1000, 1000), None);
        assert_eq!(row_blocks(1000, 0), None);
        assert_eq!(row_blocks(1000, 500), Some(vec![(0, 512), (512, 1000)]));
        let b = row_blocks(1_000_000, 65_536).unwrap();
        assert_eq!(b.len(), 16);
        assert!(b.iter().all(|&(a, _)| a % 64 == 0));
        assert_eq!((b[0].0, b[15].1), (0, 1_000_000));
        assert!(b.windows(2).all(|w| w[0].1 == w[1].0));
    }
}
