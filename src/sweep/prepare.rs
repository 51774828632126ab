//! Each checkpoint's layers loaded, prepared (clamp thresholds cached by layer set) and
//! derived once, kept in a memory-bounded LRU while the pairs that need it are scored.

use super::*;
use crate::metrics::derived::{SEARCH_BYTES, dense_fits};
use crate::metrics::graph;
use crate::store::BlobStore;

/// Loads layers as f32 (in parallel), verifying every blob's hash.
pub fn load_layers(reg: &Registry, layers: &[BlobHash]) -> Result<Vec<Array2<f32>>> {
    let store = &reg.store;
    layers
        .par_iter()
        .map(|h| store.get(h)?.to_f32_verified())
        .collect()
}

/// One layer of `ck` read from `store` and derived ([`Derived::from_blob`]); a bad row is an
/// error naming the checkpoint.
pub fn derive_layer(
    store: &dyn BlobStore,
    ck: &CheckpointLayers,
    h: &BlobHash,
    threshold: Option<f32>,
    normalize: bool,
    budget: usize,
) -> Result<Derived> {
    Derived::from_blob(store.get(h)?, threshold, normalize, budget)
        .map_err(|e| e.prefixed(&format!("{} @ {}", ck.model, ck.checkpoint)))
}

/// The layout of a layer set from its layers' recorded layouts: the common one, or `None`
/// when any is unrecorded or they differ (then the set is clamped over the checkpoint).
pub fn set_layout<'a>(mut layouts: impl Iterator<Item = Option<&'a str>>) -> Option<Layout> {
    let first = layouts.next()?.and_then(Layout::from_name)?;
    layouts
        .all(|l| l.and_then(Layout::from_name) == Some(first))
        .then_some(first)
}

/// A checkpoint's preparation: each layer's cache key and clamp threshold, and the key of the
/// whole layer set (for null and bootstrap samples, which belong to all layers together).
#[derive(Debug, Clone)]
pub struct CheckpointPrep {
    pub keys: Vec<String>,
    pub thresholds: Vec<Option<f32>>,
    pub set_key: String,
}

/// The preparation of a checkpoint at the scope `prep` resolves to for its layout; thresholds
/// are computed once and cached in `clamp_thresholds`.
pub fn checkpoint_prep(
    reg: &Registry,
    ck: &CheckpointLayers,
    prep: Prep,
) -> Result<CheckpointPrep> {
    let scope = prep.scope.resolve(ck.layout, ck.layers.len());
    let layers = ck.layers.len();
    let Some(q) = prep.clamp_q.filter(|&q| q < 1.0) else {
        let key = prep.key(None, scope);
        return Ok(CheckpointPrep {
            keys: vec![key.clone(); layers],
            thresholds: vec![None; layers],
            set_key: key,
        });
    };
    match scope {
        Scope::Checkpoint => {
            let t = clamp_threshold_cached(reg, &ck.layers, q, prep.rule)?;
            let key = prep.key(Some(t), scope);
            Ok(CheckpointPrep {
                keys: vec![key.clone(); layers],
                thresholds: vec![Some(t); layers],
                set_key: key,
            })
        }
        Scope::Layer => {
            let singles: Vec<&[BlobHash]> = ck.layers.iter().map(std::slice::from_ref).collect();
            let thresholds = clamp_thresholds_cached(reg, &singles, q, prep.rule)?;
            Ok(CheckpointPrep {
                keys: thresholds
                    .iter()
                    .map(|&t| prep.key(Some(t), scope))
                    .collect(),
                thresholds: thresholds.into_iter().map(Some).collect(),
                // Each layer's threshold follows from its hash, which the sample's key names.
                set_key: Prep {
                    scope: ClampScope::Layer,
                    ..prep
                }
                .kind(),
            })
        }
    }
}

/// The key of a checkpoint's layer set in `clamp_thresholds`: BLAKE3 of its layer hashes in
/// layer order.
pub fn layers_key(layers: &[BlobHash]) -> String {
    let mut h = blake3::Hasher::new();
    for l in layers {
        h.update(&l.0);
    }
    h.finalize().to_hex().to_string()
}

/// The clamp threshold at `q` by `rule` over these layers together, from `clamp_thresholds`
/// (keyed by BLAKE3 of the ordered layer hashes, after the rule's prefix) or computed from the
/// blobs and stored there.
pub fn clamp_threshold_cached(
    reg: &Registry,
    layers: &[BlobHash],
    q: f64,
    rule: prep::ClampRule,
) -> Result<f32> {
    Ok(clamp_thresholds_cached(reg, &[layers], q, rule)?[0])
}

/// [`clamp_threshold_cached`] of several layer sets: one catalog lookup for all of them, then
/// the missing ones computed and stored.
pub fn clamp_thresholds_cached(
    reg: &Registry,
    sets: &[&[BlobHash]],
    q: f64,
    rule: prep::ClampRule,
) -> Result<Vec<f32>> {
    let keys: Vec<String> = sets
        .iter()
        .map(|s| format!("{}{}", rule.table_prefix(), layers_key(s)))
        .collect();
    let cached = reg.catalog.clamp_thresholds_at(&keys, q)?;
    sets.iter()
        .zip(keys.iter().zip(cached))
        .map(|(layers, (key, cached))| {
            if let Some(t) = cached {
                return Ok(t as f32);
            }
            let loaded = load_layers(reg, layers)?;
            let views: Vec<_> = loaded.iter().map(|l| l.view()).collect();
            let t = rule.threshold(&views, q).unwrap_or(f32::INFINITY);
            reg.catalog.put_clamp_threshold(key, q, t as f64)?;
            Ok(t)
        })
        .collect()
}

/// The derived data of one checkpoint's layers, shared.
pub(super) type Layers = Arc<Vec<Arc<Derived>>>;

/// Makes sure every large-n layer of `sides` has its kNN graph for k (docs/design.md §13):
/// read back when stored (a damaged record is ignored and replaced), else searched one at a
/// time (each search uses every core) with its progress and ETA on `progress`, and stored as
/// soon as it is found, so an interrupted sweep keeps the finished ones. Returns how many were
/// searched.
pub(super) fn ensure_graphs(
    reg: &Registry,
    sides: &[(&CheckpointLayers, &CheckpointPrep, &Layers)],
    k: usize,
    progress: &dyn Progress,
) -> Result<usize> {
    let mut todo = Vec::new();
    // The stored graphs' keys, read once when a graph for k is missing: one for a larger k
    // serves k too ([`graph::truncate`]).
    let mut keys: Option<Vec<(BlobHash, String, usize)>> = None;
    for &(ck, cp, layers) in sides {
        for (l, d) in layers.iter().enumerate() {
            if d.dense() || d.has_graph(k) {
                continue;
            }
            let (h, prep) = (&ck.layers[l], &cp.keys[l]);
            let stored = reg.catalog.knn_graph(h, prep, k)?;
            if let Some((knn, ties)) = stored.and_then(|b| graph::decode(&b, ck.n, k)) {
                d.set_graph(k, knn, ties);
                continue;
            }
            if keys.is_none() {
                keys = Some(reg.catalog.knn_graph_keys()?);
            }
            let mut larger: Vec<usize> = keys
                .iter()
                .flatten()
                .filter(|(kh, kp, kk)| kh == h && kp == prep && *kk > k)
                .map(|e| e.2)
                .collect();
            larger.sort_unstable();
            let mut read = None;
            for big in larger {
                // A damaged record is passed over, as the one for k is.
                read = reg
                    .catalog
                    .knn_graph(h, prep, big)?
                    .and_then(|b| graph::decode(&b, ck.n, big))
                    .map(|(knn, ties)| (knn, ties, big));
                if read.is_some() {
                    break;
                }
            }
            // Parts that workers searched (graph blocks) and nobody merged yet.
            if read.is_none() {
                read = merge_parts(reg, h, prep, k, ck.n)?.map(|(knn, ties)| (knn, ties, k));
            }
            match read {
                Some((knn, ties, big)) if big > k => {
                    let (knn, ties) = graph::truncate(&knn, &ties, k);
                    d.set_graph(k, knn, ties);
                }
                Some((knn, ties, _)) => d.set_graph(k, knn, ties),
                None => todo.push((ck, cp, &layers[l], l)),
            }
        }
    }
    let label = sides
        .iter()
        .map(|s| s.0.model.as_str())
        .collect::<Vec<_>>()
        .join(" × ");
    for (g, &(ck, cp, d, l)) in todo.iter().enumerate() {
        go_on(progress)?;
        let (start, last) = (Instant::now(), std::sync::atomic::AtomicUsize::new(0));
        let (knn, ties) = d.graph_with(k, &|rows| {
            // At most every 1 % of the rows.
            let pct = rows * 100 / ck.n.max(1);
            if last.swap(pct, std::sync::atomic::Ordering::Relaxed) != pct {
                let eta = start.elapsed().as_secs_f64() * (ck.n - rows) as f64 / rows.max(1) as f64;
                progress.message(&format!(
                    "{label}: kNN graph {}/{} (n = {}): {pct}%, ETA {eta:.0} s",
                    g + 1,
                    todo.len(),
                    ck.n
                ));
            }
        });
        reg.catalog
            .put_knn_graph(&ck.layers[l], &cp.keys[l], k, &graph::encode(&knn, &ties))?;
        // Parts of an unfinished split search of this graph are of no use now.
        reg.catalog
            .drop_knn_graph_parts(&ck.layers[l], &cp.keys[l], k)?;
    }
    Ok(todo.len())
}

/// Derived data of checkpoints, evicted least-recently-used beyond a byte budget.
pub struct DerivedCache {
    pub(super) budget: usize,
    pub(super) used: usize,
    pub(super) clock: u64,
    pub(super) entries: HashMap<CheckpointId, (Layers, usize, u64)>,
    /// Layers whose tied rows at k are stored (blob, prep key, k): a worker stores each once
    /// per sweep, not once per unit.
    pub(super) ties_stored: HashSet<(BlobHash, String, usize)>,
    /// Checkpoints' preparations (clamp thresholds read from the catalog) met so far.
    pub(super) preps: HashMap<CheckpointId, CheckpointPrep>,
}

impl DerivedCache {
    /// An empty cache holding at most `budget` bytes of derived data. A worker keeps one
    /// across the units of a sweep (one preparation), so a checkpoint met again is not derived
    /// again.
    pub fn new(budget: usize) -> Self {
        DerivedCache {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
            ties_stored: HashSet::new(),
            preps: HashMap::new(),
        }
    }

    /// Drops a checkpoint's derived data (the sweep is done with it).
    pub(super) fn forget(&mut self, checkpoint_id: CheckpointId) {
        if let Some(e) = self.entries.remove(&checkpoint_id) {
            self.used -= e.1;
        }
    }

    pub(super) fn get(
        &mut self,
        reg: &Registry,
        ck: &CheckpointLayers,
        thresholds: &[Option<f32>],
        prep: Prep,
    ) -> Result<Layers> {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&ck.checkpoint_id) {
            e.2 = self.clock;
            return Ok(e.0.clone());
        }
        let (store, budget) = (reg.store.as_ref(), self.budget);
        let derived = ck
            .layers
            .par_iter()
            .zip(thresholds.par_iter())
            .map(|(h, &threshold)| {
                derive_layer(store, ck, h, threshold, prep.normalize, budget).map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let size = derived_bytes(ck, self.budget);
        while self.used + size > self.budget && !self.entries.is_empty() {
            let (&oldest, _) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.2)
                .expect("non-empty");
            let e = self.entries.remove(&oldest).expect("present");
            self.used -= e.1;
        }
        let arc = Arc::new(derived);
        self.entries
            .insert(ck.checkpoint_id, (arc.clone(), size, self.clock));
        self.used += size;
        Ok(arc)
    }
}

/// Bytes of a checkpoint's derived data under `budget`, roughly: features, and Gram matrices
/// (dense path) or neighbour lists and one tile of similarities (large-n path).
pub(super) fn derived_bytes(ck: &CheckpointLayers, budget: usize) -> usize {
    if dense_fits(ck.n, budget) {
        ck.f32_bytes + ck.layers.len() * ck.n * ck.n * 4 * 2
    } else {
        2 * ck.f32_bytes + ck.layers.len() * ck.n * 256 + SEARCH_BYTES
    }
}
