//! Alignment sweeps over the registry with a content-addressed cache (DESIGN.md §5).
//!
//! A sweep selects x and y model checkpoints, forms every layer-pair cell's cache key
//! (hash_x, hash_y, metric, metric version, canonical params, prep_x, prep_y), asks the cache
//! which cells are missing, computes only those, and commits each model pair's cells in one
//! transaction as it goes, so an interrupted sweep resumes where it stopped. Symmetric metrics
//! store one orientation (hash_x ≤ hash_y). Each checkpoint's derived data is computed once and
//! kept in a memory-bounded LRU while the pairs that need it are scored.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use rayon::prelude::*;
use serde::Serialize;

use crate::catalog::{CellSide, CheckpointId, DrawKey, MetricKey, NewCell, RepFilter, side_ids};
use crate::error::{Error, Result};
use crate::layers::Reduce;
use crate::metrics::{ClampScope, Derived, Layout, MetricSpec, Prep, Scope, Ties, prep};
use crate::registry::Registry;
use crate::stats::{self, Resampling};
use crate::store::BlobHash;

/// Which models a side of a sweep takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// Every model.
    All,
    /// Models by name.
    Names(Vec<String>),
    /// Models of one modality (`modality=vision`).
    Modality(String),
    /// Models of one family (`family=llama`).
    Family(String),
}

impl FromStr for Selector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "all" {
            return Ok(Selector::All);
        }
        if let Some(v) = s.strip_prefix("modality=") {
            return Ok(Selector::Modality(v.to_string()));
        }
        if let Some(v) = s.strip_prefix("family=") {
            return Ok(Selector::Family(v.to_string()));
        }
        let names: Vec<String> = s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        if names.is_empty() || names.iter().any(|n| n.contains('=')) {
            return Err(Error::Invalid(format!(
                "bad model selector {s:?}: use names (a,b), modality=…, family=… or all"
            )));
        }
        Ok(Selector::Names(names))
    }
}

/// A checkpoint with its layers on the sweep's dataset and pool.
#[derive(Debug, Clone)]
pub struct CheckpointLayers {
    /// The checkpoint's id in the catalog.
    pub checkpoint_id: CheckpointId,
    /// Its model's name.
    pub model: String,
    /// Its name.
    pub checkpoint: String,
    /// Each layer's blob, in layer order.
    pub layers: Vec<BlobHash>,
    /// Stored layer indices, in order.
    pub layer_ids: Vec<i64>,
    /// Samples (rows of every layer).
    pub n: usize,
    /// Bytes the f32 features occupy (for the memory budget).
    pub f32_bytes: usize,
    /// How the layers were given, when every layer recorded the same layout.
    pub layout: Option<Layout>,
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// The models on one side of every pair.
    pub x: Selector,
    /// The models on the other side.
    pub y: Selector,
    /// The dataset the features were taken on (the only one they share when `None`).
    pub dataset: Option<String>,
    /// The pooling (the only one they share when `None`).
    pub pool: Option<String>,
    /// Every checkpoint of the x models, not only the latest.
    pub all_checkpoints: bool,
    /// Use this checkpoint of the x models instead of the latest (for `prh log`).
    pub x_checkpoint: Option<String>,
    /// The metrics, each computed for every layer pair of every model pair.
    pub specs: Vec<MetricSpec>,
    /// How features are prepared before a metric sees them (clamp, normalise).
    pub prep: Prep,
    /// Upper bound on derived data held in memory at once, in bytes.
    pub mem_budget: usize,
    /// Permutations for a null per model pair (0 = none).
    pub null: usize,
    /// Bootstrap resamples per model pair (0 = none).
    pub bootstrap: usize,
    /// Seed of the permutations and resamples.
    pub seed: u64,
    /// Level of the calibration threshold τ (see [`stats::summarize`]).
    pub alpha: f64,
    /// How each model pair's layer-pair table becomes its score (nulls included).
    pub reduce: Reduce,
}

/// One model pair's alignment for one metric.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub x_model: String,
    pub y_model: String,
    pub x_checkpoint: String,
    pub y_checkpoint: String,
    pub metric: String,
    /// The aggregate over layer pairs: `max`, `mean`, `last` or `layers=I,J`.
    pub reduce: String,
    /// The layer-pair table aggregated by `reduce`.
    pub score: f64,
    /// [x_layer, y_layer] the score comes from (the argmax for `max`; none for `mean`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_layers: Option<[i64; 2]>,
    /// kNN metrics: rows of the best layer pair whose k-th and (k+1)-th neighbours tie on
    /// either side (where the official number depends on the platform's sort).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ties: Option<usize>,
    pub cells_computed: usize,
    pub cells_cached: usize,
    /// Mean of the permutation null (with `--null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_sd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    /// The calibration threshold τ at level α (see [`stats::summarize`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// clamp((score − τ) / (max attainable − τ), 0, 1), the published calibrated score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<f64>,
    /// (score − null mean) / (max attainable − null mean).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chance_adjusted: Option<f64>,
    /// Bootstrap 95% interval of the score (with `--bootstrap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci95: Option<[f64; 2]>,
    #[serde(skip)]
    pub table: Vec<Vec<f64>>,
    #[serde(skip)]
    pub x_checkpoint_id: CheckpointId,
    #[serde(skip)]
    pub y_checkpoint_id: CheckpointId,
}

/// Progress callbacks (a progress bar in the CLI, nothing in tests).
pub trait Progress: Sync {
    fn start(&self, _total_cells: u64) {}
    fn advance(&self, _cells: u64) {}
    fn message(&self, _msg: &str) {}
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}

/// A checkpoint as the cell cache sees it: its layers' blobs, prep keys and side ids.
fn side<'a>(ck: &'a CheckpointLayers, set: &'a PairSet) -> CellSide<'a> {
    CellSide {
        hashes: &ck.layers,
        preps: &set.preps[&ck.checkpoint_id].keys,
        ids: &set.side_ids[&ck.checkpoint_id],
    }
}

/// The cache identity of a metric spec.
fn metric_key(spec: &MetricSpec) -> MetricKey {
    MetricKey {
        metric: spec.metric.name(),
        version: spec.metric.version(),
        params: spec.params_key(),
        symmetric: spec.metric.symmetric(),
    }
}

/// Resolves a selector to model names (sorted), erroring on unknown names.
pub fn select_models(reg: &Registry, sel: &Selector) -> Result<Vec<String>> {
    let models = reg.catalog.models()?;
    let out: Vec<String> = match sel {
        Selector::All => models.iter().map(|m| m.name.clone()).collect(),
        Selector::Modality(m) => models
            .iter()
            .filter(|x| &x.modality == m)
            .map(|x| x.name.clone())
            .collect(),
        Selector::Family(f) => models
            .iter()
            .filter(|x| x.family.as_deref() == Some(f.as_str()))
            .map(|x| x.name.clone())
            .collect(),
        Selector::Names(names) => {
            for n in names {
                if !models.iter().any(|m| &m.name == n) {
                    return Err(Error::NotFound(format!(
                        "no model named {n} in the registry"
                    )));
                }
            }
            names.clone()
        }
    };
    if out.is_empty() {
        return Err(Error::NotFound(format!(
            "selector {sel:?} matches no model"
        )));
    }
    Ok(out)
}

/// The checkpoints (latest, or all) of the given models with their layers on `dataset`/`pool`.
pub fn resolve_checkpoints(
    reg: &Registry,
    models: &[String],
    dataset: &str,
    pool: Option<&str>,
    all_checkpoints: bool,
    checkpoint: Option<&str>,
) -> Result<Vec<CheckpointLayers>> {
    let mut out = Vec::new();
    for m in models {
        let cks = if let Some(c) = checkpoint {
            vec![
                reg.catalog
                    .checkpoint(m, c)?
                    .ok_or_else(|| Error::NotFound(format!("model {m} has no checkpoint {c}")))?,
            ]
        } else if all_checkpoints {
            reg.catalog.checkpoints(Some(m))?
        } else {
            reg.catalog.latest_checkpoint(m)?.into_iter().collect()
        };
        for ck in cks {
            let reps = reg.catalog.reps(&RepFilter {
                model: Some(m.clone()),
                checkpoint_id: Some(ck.id),
                dataset: Some(dataset.to_string()),
                pool: pool.map(String::from),
                ..Default::default()
            })?;
            if reps.is_empty() {
                if all_checkpoints {
                    continue;
                }
                return Err(Error::NotFound(format!(
                    "model {m} checkpoint {} has no features on dataset {dataset}{}",
                    ck.checkpoint,
                    pool.map(|p| format!(" with pool {p}")).unwrap_or_default()
                )));
            }
            let pools: HashSet<&str> = reps.iter().map(|r| r.pool.as_str()).collect();
            if pools.len() > 1 {
                let mut p: Vec<&str> = pools.into_iter().collect();
                p.sort();
                return Err(Error::Invalid(format!(
                    "model {m} checkpoint {} has several poolings ({}); choose one with --pool",
                    ck.checkpoint,
                    p.join(", ")
                )));
            }
            out.push(CheckpointLayers {
                checkpoint_id: ck.id,
                model: m.clone(),
                checkpoint: ck.checkpoint.clone(),
                layers: reps
                    .iter()
                    .map(|r| Ok(r.hash))
                    .collect::<Result<Vec<_>>>()?,
                layer_ids: reps.iter().map(|r| r.layer).collect(),
                n: reps[0].n,
                f32_bytes: reps.iter().map(|r| r.n * r.d * 4).sum(),
                layout: set_layout(reps.iter().map(|r| r.layout.as_deref())),
            });
        }
    }
    Ok(out)
}

/// The dataset to sweep: the one given, or the only one the selected models share.
pub fn choose_dataset(reg: &Registry, models: &[String], given: Option<&str>) -> Result<String> {
    if let Some(d) = given {
        if reg.catalog.dataset(d)?.is_none() {
            return Err(Error::NotFound(format!("no dataset named {d}")));
        }
        return Ok(d.to_string());
    }
    let mut common: Option<HashSet<String>> = None;
    for m in models {
        let ds: HashSet<String> = reg
            .catalog
            .reps(&RepFilter {
                model: Some(m.clone()),
                ..Default::default()
            })?
            .into_iter()
            .map(|r| r.dataset)
            .collect();
        common = Some(match common {
            None => ds,
            Some(c) => c.intersection(&ds).cloned().collect(),
        });
    }
    let mut c: Vec<String> = common.unwrap_or_default().into_iter().collect();
    c.sort();
    match c.len() {
        1 => Ok(c.remove(0)),
        0 => Err(Error::Conflict(
            "the selected models share no dataset; ingest their features on one dataset".into(),
        )),
        _ => Err(Error::Invalid(format!(
            "the selected models share several datasets ({}); choose one with --dataset",
            c.join(", ")
        ))),
    }
}

/// Loads layers as f32 (in parallel), verifying every blob's hash.
pub fn load_layers(reg: &Registry, layers: &[BlobHash]) -> Result<Vec<Array2<f32>>> {
    let store = &reg.store;
    layers
        .par_iter()
        .map(|h| store.get(h)?.to_f32_verified())
        .collect()
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
            let t = clamp_threshold_cached(reg, &ck.layers, q)?;
            let key = prep.key(Some(t), scope);
            Ok(CheckpointPrep {
                keys: vec![key.clone(); layers],
                thresholds: vec![Some(t); layers],
                set_key: key,
            })
        }
        Scope::Layer => {
            let singles: Vec<&[BlobHash]> = ck.layers.iter().map(std::slice::from_ref).collect();
            let thresholds = clamp_thresholds_cached(reg, &singles, q)?;
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

/// The clamp threshold at `q` over these layers together, from `clamp_thresholds` (keyed by
/// BLAKE3 of the ordered layer hashes) or computed from the blobs and stored there.
pub fn clamp_threshold_cached(reg: &Registry, layers: &[BlobHash], q: f64) -> Result<f32> {
    Ok(clamp_thresholds_cached(reg, &[layers], q)?[0])
}

/// [`clamp_threshold_cached`] of several layer sets: one catalog lookup for all of them, then
/// the missing ones computed and stored.
pub fn clamp_thresholds_cached(reg: &Registry, sets: &[&[BlobHash]], q: f64) -> Result<Vec<f32>> {
    let keys: Vec<String> = sets.iter().map(|s| layers_key(s)).collect();
    let cached = reg.catalog.clamp_thresholds_at(&keys, q)?;
    sets.iter()
        .zip(keys.iter().zip(cached))
        .map(|(layers, (key, cached))| {
            if let Some(t) = cached {
                return Ok(t as f32);
            }
            let loaded = load_layers(reg, layers)?;
            let views: Vec<_> = loaded.iter().map(|l| l.view()).collect();
            let t = prep::clamp_threshold(&views, q).unwrap_or(f32::INFINITY);
            reg.catalog.put_clamp_threshold(key, q, t as f64)?;
            Ok(t)
        })
        .collect()
}

/// The derived data of one checkpoint's layers, shared.
type Layers = Arc<Vec<Arc<Derived>>>;

/// Derived data of checkpoints, evicted least-recently-used beyond a byte budget.
pub struct DerivedCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<CheckpointId, (Layers, usize, u64)>,
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
        }
    }

    /// Drops a checkpoint's derived data (the sweep is done with it).
    fn forget(&mut self, checkpoint_id: CheckpointId) {
        if let Some(e) = self.entries.remove(&checkpoint_id) {
            self.used -= e.1;
        }
    }

    fn get(
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
        let layers = load_layers(reg, &ck.layers)?;
        let derived = layers
            .into_par_iter()
            .zip(thresholds.par_iter())
            .map(|(l, &threshold)| {
                Ok(Arc::new(Derived::new(
                    prep::prepare(l.view(), threshold, prep.normalize)
                        .map_err(|e| e.prefixed(&format!("{} @ {}", ck.model, ck.checkpoint)))?,
                )))
            })
            .collect::<Result<Vec<_>>>()?;
        let size = derived_bytes(ck);
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

/// Bytes of a checkpoint's derived data, roughly: features, Gram matrices, neighbour lists.
fn derived_bytes(ck: &CheckpointLayers) -> usize {
    ck.f32_bytes + ck.layers.len() * ck.n * ck.n * 4 * 2
}

/// The order to compute model pairs in, so that each checkpoint's derived data is computed as
/// few times as the memory budget allows: the side with fewer bytes is held in tiles that fit
/// the budget (less room for one checkpoint of the other side), and for each tile every
/// checkpoint of the other side comes once, with all of its pairs in the tile. A zoo whose
/// smaller side fits derives every checkpoint once (x-major order would re-derive the whole
/// y side for every x once y outgrows the budget). The sweep drops an other-side checkpoint's
/// derived data when it moves on to the next (see [`Plan::other`]), so the least recently used
/// entry is never a held one.
struct Plan {
    order: Vec<usize>,
    held_is_x: bool,
    held: HashSet<CheckpointId>,
}

impl Plan {
    /// The pair's checkpoint on the side that is not held.
    fn other(&self, pair: (&CheckpointLayers, &CheckpointLayers)) -> CheckpointId {
        if self.held_is_x {
            pair.1.checkpoint_id
        } else {
            pair.0.checkpoint_id
        }
    }
}

fn compute_order(pairs: &[(&CheckpointLayers, &CheckpointLayers)], budget: usize) -> Plan {
    // Each side's checkpoints in order of first appearance, with their sizes.
    let side = |pick: fn(&(&CheckpointLayers, &CheckpointLayers)) -> CheckpointId| {
        let mut ids: Vec<CheckpointId> = Vec::new();
        let mut bytes: HashMap<CheckpointId, usize> = HashMap::new();
        for p in pairs {
            let id = pick(p);
            if let std::collections::hash_map::Entry::Vacant(e) = bytes.entry(id) {
                let ck = if id == p.0.checkpoint_id { p.0 } else { p.1 };
                e.insert(derived_bytes(ck));
                ids.push(id);
            }
        }
        (ids, bytes)
    };
    let xs = side(|p| p.0.checkpoint_id);
    let ys = side(|p| p.1.checkpoint_id);
    let total = |s: &(Vec<CheckpointId>, HashMap<CheckpointId, usize>)| s.1.values().sum::<usize>();
    let held_is_x = total(&xs) <= total(&ys);
    let (held, other) = if held_is_x { (&xs, &ys) } else { (&ys, &xs) };
    let room = budget
        .saturating_sub(other.1.values().copied().max().unwrap_or(0))
        .max(1);
    let mut tile: HashMap<CheckpointId, usize> = HashMap::new();
    let (mut t, mut used) = (0, 0);
    for id in &held.0 {
        let b = held.1[id];
        if used > 0 && used + b > room {
            t += 1;
            used = 0;
        }
        used += b;
        tile.insert(*id, t);
    }
    let pos = |ids: &[CheckpointId]| -> HashMap<CheckpointId, usize> {
        ids.iter().enumerate().map(|(i, &id)| (id, i)).collect()
    };
    let (held_pos, other_pos) = (pos(&held.0), pos(&other.0));
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&pi| {
        let (x, y) = pairs[pi];
        let (h, o) = if held_is_x {
            (x.checkpoint_id, y.checkpoint_id)
        } else {
            (y.checkpoint_id, x.checkpoint_id)
        };
        (tile[&h], other_pos[&o], held_pos[&h])
    });
    Plan {
        order,
        held_is_x,
        held: held.0.iter().copied().collect(),
    }
}

/// Runs a sweep: computes missing cells, then reports every model pair for every metric.
pub fn sweep(
    reg: &mut Registry,
    req: &SweepRequest,
    progress: &dyn Progress,
) -> Result<Vec<PairResult>> {
    let (xs, ys) = resolve(reg, req)?;
    let set = pair_set(reg, req, &xs, &ys, None)?;
    let (mut tables, todo) = cached_tables(reg, &set)?;
    let mut cache = DerivedCache::new(req.mem_budget);
    let computed = compute_missing(reg, req, &set, &todo, &mut tables, &mut cache, progress)?;
    let mut out = report(reg, req, &set, &tables, &computed)?;
    if req.null > 0 || req.bootstrap > 0 {
        add_statistics(reg, req, &set.pairs, &set.preps, &mut out, progress)?;
    }
    Ok(out)
}

/// Computes and stores the missing cells of one checkpoint pair of a request (a worker's
/// unit), deriving through `cache` (kept by the caller across pairs of one request): nothing
/// else is read or reported.
pub fn fill_pair(
    reg: &mut Registry,
    req: &SweepRequest,
    (x, y): (CheckpointId, CheckpointId),
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<()> {
    let (xs, ys) = resolve(reg, req)?;
    let set = pair_set(reg, req, &xs, &ys, Some((x, y)))?;
    if set.pairs.is_empty() {
        return Err(Error::Conflict(format!(
            "checkpoints {x} × {y} are not a pair of this sweep any more (a representation was removed?)"
        )));
    }
    let (mut tables, todo) = cached_tables(reg, &set)?;
    compute_missing(reg, req, &set, &todo, &mut tables, cache, progress).map(drop)
}

/// A checkpoint pair with cells missing from the cache.
#[derive(Debug, Clone)]
pub struct MissingPair {
    pub x: CheckpointId,
    pub y: CheckpointId,
    /// `x model @ checkpoint × y model @ checkpoint`.
    pub label: String,
    /// Cells missing (layer pairs × metrics).
    pub cells: usize,
}

/// The checkpoint pairs of a request whose cells are not all cached, in sweep order.
pub fn missing_pairs(reg: &Registry, req: &SweepRequest) -> Result<Vec<MissingPair>> {
    let (xs, ys) = resolve(reg, req)?;
    let set = pair_set(reg, req, &xs, &ys, None)?;
    let (_, todo) = cached_tables(reg, &set)?;
    Ok(set
        .pairs
        .iter()
        .zip(&todo)
        .filter(|(_, t)| !t.is_empty())
        .map(|((x, y), t)| MissingPair {
            x: x.checkpoint_id,
            y: y.checkpoint_id,
            label: format!(
                "{} @ {} × {} @ {}",
                x.model, x.checkpoint, y.model, y.checkpoint
            ),
            cells: t.len(),
        })
        .collect())
}

/// The pairs of a request (only `only` when given), with each checkpoint's prep and side ids.
fn pair_set<'a>(
    reg: &Registry,
    req: &SweepRequest,
    xs: &'a [CheckpointLayers],
    ys: &'a [CheckpointLayers],
    only: Option<(CheckpointId, CheckpointId)>,
) -> Result<PairSet<'a>> {
    // A worker's unit (`only`) prepares its own two checkpoints, not the whole request's.
    let wanted = |ck: &&CheckpointLayers| {
        only.is_none_or(|(x, y)| ck.checkpoint_id == x || ck.checkpoint_id == y)
    };
    let members: Vec<&CheckpointLayers> = xs.iter().chain(ys.iter()).filter(wanted).collect();
    let preps = checkpoint_preps(reg, members.iter().copied(), req.prep)?;
    Ok(PairSet {
        pairs: xs
            .iter()
            .flat_map(|x| ys.iter().map(move |y| (x, y)))
            .filter(|(x, y)| x.checkpoint_id != y.checkpoint_id)
            .filter(|(x, y)| only.is_none_or(|o| o == (x.checkpoint_id, y.checkpoint_id)))
            .collect(),
        keys: req.specs.iter().map(metric_key).collect(),
        side_ids: members
            .iter()
            .map(|ck| {
                let ids = side_ids(&ck.layers, &preps[&ck.checkpoint_id].keys);
                (ck.checkpoint_id, ids)
            })
            .collect(),
        preps,
    })
}

/// The x and y checkpoints a request selects, on one dataset, with its metrics validated for
/// that dataset's n.
fn resolve(
    reg: &Registry,
    req: &SweepRequest,
) -> Result<(Vec<CheckpointLayers>, Vec<CheckpointLayers>)> {
    let xm = select_models(reg, &req.x)?;
    let ym = select_models(reg, &req.y)?;
    let mut all_models = xm.clone();
    all_models.extend(ym.iter().cloned());
    let dataset = choose_dataset(reg, &all_models, req.dataset.as_deref())?;
    let xs = resolve_checkpoints(
        reg,
        &xm,
        &dataset,
        req.pool.as_deref(),
        req.all_checkpoints,
        req.x_checkpoint.as_deref(),
    )?;
    let ys = resolve_checkpoints(
        reg,
        &ym,
        &dataset,
        req.pool.as_deref(),
        req.all_checkpoints,
        None,
    )?;
    let n = xs.first().or(ys.first()).map(|c| c.n).unwrap_or(0);
    for s in &req.specs {
        s.validate(n)?;
    }
    Ok((xs, ys))
}

/// Prep keys (clamp thresholds) once per checkpoint.
fn checkpoint_preps<'a>(
    reg: &Registry,
    checkpoints: impl Iterator<Item = &'a CheckpointLayers>,
    prep: Prep,
) -> Result<HashMap<CheckpointId, CheckpointPrep>> {
    let mut preps: HashMap<CheckpointId, CheckpointPrep> = HashMap::new();
    for ck in checkpoints {
        if let std::collections::hash_map::Entry::Vacant(e) = preps.entry(ck.checkpoint_id) {
            e.insert(checkpoint_prep(reg, ck, prep)?);
        }
    }
    Ok(preps)
}

/// The model pairs of a sweep (x checkpoint × y checkpoint), the cache key of each metric, and
/// each checkpoint's prep keys and cache side ids (by checkpoint id).
struct PairSet<'a> {
    pairs: Vec<(&'a CheckpointLayers, &'a CheckpointLayers)>,
    keys: Vec<MetricKey>,
    preps: HashMap<CheckpointId, CheckpointPrep>,
    side_ids: HashMap<CheckpointId, Vec<i64>>,
}

/// Per pair and metric, the layer × layer values (row-major; `None` until known).
type Tables = Vec<Vec<Vec<Option<f64>>>>;
/// Per pair, its missing cells as (metric, x layer, y layer).
type Todo = Vec<Vec<(usize, usize, usize)>>;

/// Which cells are cached? One catalog statement per model pair and metric orientation.
fn cached_tables(reg: &Registry, set: &PairSet) -> Result<(Tables, Todo)> {
    let (pairs, keys) = (&set.pairs, &set.keys);
    let mut tables: Tables = Vec::with_capacity(pairs.len());
    let mut todo: Todo = Vec::with_capacity(pairs.len());
    for (x, y) in pairs {
        let ny = y.layers.len();
        let mut per_spec = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (si, key) in keys.iter().enumerate() {
            let mut t = vec![None; x.layers.len() * ny];
            for (i, j, v) in reg.catalog.cached_cells(key, side(x, set), side(y, set))? {
                t[i * ny + j] = Some(v);
            }
            missing.extend(
                t.iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_none())
                    .map(|(c, _)| (si, c / ny, c % ny)),
            );
            per_spec.push(t);
        }
        todo.push(missing);
        tables.push(per_spec);
    }

    Ok((tables, todo))
}

/// Computes what is missing, one model pair at a time, committing as it goes; fills `tables`
/// and returns how many cells were computed per (pair, metric).
fn compute_missing(
    reg: &mut Registry,
    req: &SweepRequest,
    set: &PairSet,
    todo: &Todo,
    tables: &mut Tables,
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<HashMap<(usize, usize), usize>> {
    let (pairs, keys, preps) = (&set.pairs, &set.keys, &set.preps);
    let missing_total: u64 = todo.iter().map(|t| t.len() as u64).sum();
    let mut computed: HashMap<(usize, usize), usize> = HashMap::new();
    let mut ties_stored: HashSet<(BlobHash, String, usize)> = HashSet::new();
    if missing_total > 0 {
        progress.start(missing_total);
        let plan = compute_order(pairs, req.mem_budget);
        let mut last_other: Option<CheckpointId> = None;
        for &pi in &plan.order {
            let (x, y) = pairs[pi];
            let cells = &todo[pi];
            if cells.is_empty() {
                continue;
            }
            let other = plan.other(pairs[pi]);
            if let Some(prev) = last_other.filter(|&p| p != other && !plan.held.contains(&p)) {
                cache.forget(prev);
            }
            last_other = Some(other);
            progress.message(&format!("{} × {}", x.model, y.model));
            let (px, py) = (&preps[&x.checkpoint_id], &preps[&y.checkpoint_id]);
            let dx = cache.get(reg, x, &px.thresholds, req.prep)?;
            let dy = cache.get(reg, y, &py.thresholds, req.prep)?;
            // Derive what the metrics need on every layer in parallel first.
            for spec in &req.specs {
                dx.par_iter()
                    .chain(dy.par_iter())
                    .for_each(|d| d.warm(spec));
            }
            let results = compute_cells(&req.specs, cells, &dx, &dy, progress).map_err(|e| {
                e.prefixed(&format!(
                    "{} @ {} × {} @ {}",
                    x.model, x.checkpoint, y.model, y.checkpoint
                ))
            })?;
            reg.catalog
                .store_cells(keys, side(x, set), side(y, set), &results)?;
            // Each layer's tied rows, while its neighbour lists are at hand.
            for spec in req.specs.iter().filter(|s| s.metric.uses_k()) {
                for (ck, p, d) in [(x, px, &dx), (y, py, &dy)] {
                    for (l, h) in ck.layers.iter().enumerate() {
                        if ties_stored.insert((*h, p.keys[l].clone(), spec.k)) {
                            store_ties(reg, h, &p.keys[l], spec.k, &d[l].ties(spec.k), ck.n)?;
                        }
                    }
                }
            }
            let ny = y.layers.len();
            for (si, i, j, v, _) in results {
                tables[pi][si][i * ny + j] = Some(v);
                *computed.entry((pi, si)).or_default() += 1;
            }
        }
    }

    Ok(computed)
}

/// Reports every pair from the (now complete) cell values.
fn report(
    reg: &Registry,
    req: &SweepRequest,
    set: &PairSet,
    tables: &Tables,
    computed: &HashMap<(usize, usize), usize>,
) -> Result<Vec<PairResult>> {
    let (pairs, preps) = (&set.pairs, &set.preps);
    let mut out: Vec<PairResult> = Vec::new();
    for (si, spec) in req.specs.iter().enumerate() {
        for (pi, (x, y)) in pairs.iter().enumerate() {
            let table: Vec<Vec<f64>> = tables[pi][si]
                .chunks(y.layers.len())
                .map(|row| {
                    row.iter()
                        .map(|v| v.expect("every cell is cached or computed"))
                        .collect()
                })
                .collect();
            let (score, layers) = req.reduce.apply(&table)?;
            let ties = if spec.metric.uses_k() {
                // The tied rows of the pair the score comes from (the last pair for the mean).
                let [i, j] = layers.unwrap_or([x.layers.len() - 1, y.layers.len() - 1]);
                let bx = tie_bits(reg, x, i, &preps[&x.checkpoint_id], req.prep, spec.k)?;
                let by = tie_bits(reg, y, j, &preps[&y.checkpoint_id], req.prep, spec.k)?;
                Some(
                    bx.iter()
                        .zip(&by)
                        .map(|(a, b)| (a | b).count_ones() as usize)
                        .sum(),
                )
            } else {
                None
            };
            let total = x.layers.len() * y.layers.len();
            let comp = computed.get(&(pi, si)).copied().unwrap_or(0);
            out.push(PairResult {
                x_model: x.model.clone(),
                y_model: y.model.clone(),
                x_checkpoint: x.checkpoint.clone(),
                y_checkpoint: y.checkpoint.clone(),
                metric: spec.metric.name().to_string(),
                reduce: req.reduce.key(),
                score,
                best_layers: layers.map(|[i, j]| [x.layer_ids[i], y.layer_ids[j]]),
                ties,
                cells_computed: comp,
                cells_cached: total - comp,
                null_mean: None,
                null_sd: None,
                p_value: None,
                z: None,
                tau: None,
                calibrated: None,
                chance_adjusted: None,
                ci95: None,
                table,
                x_checkpoint_id: x.checkpoint_id,
                y_checkpoint_id: y.checkpoint_id,
            });
        }
    }
    Ok(out)
}

/// Computes the missing cells of one model pair: the CKA family a block at a time (every
/// layer's kernel read once per block; a cell's seconds are its share of the block), the
/// other metrics cell by cell in parallel.
fn compute_cells(
    specs: &[MetricSpec],
    cells: &[(usize, usize, usize)],
    dx: &[Arc<Derived>],
    dy: &[Arc<Derived>],
    progress: &dyn Progress,
) -> Result<Vec<NewCell>> {
    let mut out = Vec::with_capacity(cells.len());
    let mut single = Vec::new();
    for (si, spec) in specs.iter().enumerate() {
        let mine: Vec<(usize, usize)> = cells
            .iter()
            .filter(|c| c.0 == si)
            .map(|c| (c.1, c.2))
            .collect();
        if mine.is_empty() {
            continue;
        }
        if !spec.blocks() {
            single.extend(mine.into_iter().map(|(i, j)| (si, i, j)));
            continue;
        }
        let mut rows: Vec<usize> = mine.iter().map(|c| c.0).collect();
        let mut cols: Vec<usize> = mine.iter().map(|c| c.1).collect();
        rows.sort_unstable();
        rows.dedup();
        cols.sort_unstable();
        cols.dedup();
        let t = Instant::now();
        let xs: Vec<&Derived> = rows.iter().map(|&i| &*dx[i]).collect();
        let ys: Vec<&Derived> = cols.iter().map(|&j| &*dy[j]).collect();
        let block = spec.compute_block(&xs, &ys).expect("blocks() said so")?;
        let secs = t.elapsed().as_secs_f64() / (rows.len() * cols.len()) as f64;
        progress.advance(mine.len() as u64);
        for (i, j) in mine {
            let (r, c) = (
                rows.binary_search(&i).expect("listed"),
                cols.binary_search(&j).expect("listed"),
            );
            out.push((si, i, j, block[r][c], secs));
        }
    }
    let rest = single
        .par_iter()
        .map(|&(si, i, j)| {
            let t = Instant::now();
            let v = specs[si].compute(&dx[i], &dy[j]);
            progress.advance(1);
            v.map(|v| (si, i, j, v, t.elapsed().as_secs_f64()))
        })
        .collect::<Result<Vec<_>>>()?;
    out.extend(rest);
    Ok(out)
}

/// Stores a layer's tied rows at k as a bitset (bit i % 8 of byte i / 8 = row i).
fn store_ties(
    reg: &Registry,
    hash: &BlobHash,
    prep_key: &str,
    k: usize,
    ties: &Ties,
    n: usize,
) -> Result<Vec<u8>> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for r in &ties.rows {
        bits[r.row as usize / 8] |= 1 << (r.row % 8);
    }
    reg.catalog.put_knn_ties(hash, prep_key, k, &bits)?;
    Ok(bits)
}

/// Layer `l` of a checkpoint's tied rows at k, from `knn_ties`, or computed from its blob (a
/// cache filled before ties were recorded, or imported from a bundle) and stored.
fn tie_bits(
    reg: &Registry,
    ck: &CheckpointLayers,
    l: usize,
    cp: &CheckpointPrep,
    prep: Prep,
    k: usize,
) -> Result<Vec<u8>> {
    let (hash, key) = (&ck.layers[l], &cp.keys[l]);
    let stored = reg.catalog.knn_ties(hash, key, k)?;
    if let Some(bits) = stored.filter(|b| b.len() == ck.n.div_ceil(8)) {
        return Ok(bits);
    }
    let x = reg.store.get(hash)?.to_f32_verified()?;
    let d = Derived::new(
        prep::prepare(x.view(), cp.thresholds[l], prep.normalize)
            .map_err(|e| e.prefixed(&format!("{} @ {}", ck.model, ck.checkpoint)))?,
    );
    store_ties(reg, hash, key, k, &d.ties(k), ck.n)
}

/// The content key of a model pair's layer sets.
fn pair_key(x: &CheckpointLayers, y: &CheckpointLayers) -> String {
    let mut h = blake3::Hasher::new();
    for l in &x.layers {
        h.update(&l.0);
    }
    h.update(b"|");
    for l in &y.layers {
        h.update(&l.0);
    }
    h.finalize().to_hex().to_string()
}

/// A cached sample of null or bootstrap draws, extended to `want` draws when shorter.
#[allow(clippy::too_many_arguments)]
fn cached_draws(
    reg: &Registry,
    kind: &str,
    key: &str,
    spec: &MetricSpec,
    params: &str,
    px: &str,
    py: &str,
    seed: u64,
    want: usize,
    compute: impl FnOnce(&Registry, std::ops::Range<usize>) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    let draw_key = DrawKey {
        pair_key: key,
        kind,
        metric: spec.metric.name(),
        version: spec.metric.version(),
        params,
        prep_x: px,
        prep_y: py,
        seed,
    };
    let stored = reg.catalog.draws(&draw_key)?;
    let mut vals: Vec<f64> = stored
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if vals.len() < want {
        let more = compute(reg, vals.len()..want)?;
        vals.extend(more);
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        reg.catalog.put_draws(&draw_key, &bytes)?;
    }
    vals.truncate(want);
    Ok(vals)
}

/// Adds permutation-null and bootstrap statistics to every pair result.
fn add_statistics(
    reg: &Registry,
    req: &SweepRequest,
    pairs: &[(&CheckpointLayers, &CheckpointLayers)],
    preps: &HashMap<CheckpointId, CheckpointPrep>,
    out: &mut [PairResult],
    progress: &dyn Progress,
) -> Result<()> {
    let mut cache = DerivedCache::new(req.mem_budget);
    progress.start((pairs.len() * req.specs.len() * (req.null + req.bootstrap)) as u64);
    for (si, spec) in req.specs.iter().enumerate() {
        for (pi, (x, y)) in pairs.iter().enumerate() {
            progress.message(&format!("null {} × {}", x.model, y.model));
            let (prep_x, prep_y) = (&preps[&x.checkpoint_id], &preps[&y.checkpoint_id]);
            let (px, py) = (&prep_x.set_key, &prep_y.set_key);
            let key = pair_key(x, y);
            // Samples of another aggregate are other samples (the max keeps its old key).
            let params = match req.reduce {
                Reduce::Max => spec.params_key(),
                r => format!("{};reduce={}", spec.params_key(), r.key()),
            };
            let result = &mut out[si * pairs.len() + pi];
            let mut loaded: Option<(Layers, Layers)> = None;
            let mut load = |reg: &Registry| -> Result<(Layers, Layers)> {
                if let Some(l) = &loaded {
                    return Ok(l.clone());
                }
                let l = (
                    cache.get(reg, x, &prep_x.thresholds, req.prep)?,
                    cache.get(reg, y, &prep_y.thresholds, req.prep)?,
                );
                loaded = Some(l.clone());
                Ok(l)
            };
            let mut sample = |how: Resampling, want: usize| {
                cached_draws(
                    reg,
                    how.name(),
                    &key,
                    spec,
                    &params,
                    px,
                    py,
                    req.seed,
                    want,
                    |reg, range| {
                        let (dx, dy) = load(reg)?;
                        let v = stats::draws(how, spec, req.reduce, (&dx, &dy), req.seed, range)?;
                        progress.advance(v.len() as u64);
                        Ok(v)
                    },
                )
            };
            if req.null > 0 {
                let draws = sample(Resampling::Permutation, req.null)?;
                let s = stats::summarize(result.score, &draws, spec.max_attainable(), req.alpha);
                result.null_mean = Some(s.null_mean);
                result.null_sd = Some(s.null_sd);
                result.p_value = Some(s.p_value);
                result.z = Some(s.z);
                result.tau = Some(s.tau);
                result.calibrated = Some(s.calibrated);
                result.chance_adjusted = Some(s.chance_adjusted);
            }
            if req.bootstrap > 0 {
                result.ci95 = Some(stats::ci95(&sample(Resampling::Bootstrap, req.bootstrap)?));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(id: i64, layers: usize) -> CheckpointLayers {
        CheckpointLayers {
            checkpoint_id: CheckpointId(id),
            model: format!("m{id}"),
            checkpoint: "c".into(),
            layers: vec![BlobHash([id as u8; 32]); layers],
            layer_ids: (0..layers as i64).collect(),
            n: 16,
            f32_bytes: layers * 16 * 4,
            layout: None,
        }
    }

    /// How many times each checkpoint is derived when pairs run in `order` through an LRU of
    /// `budget` bytes (the sweep's cache policy).
    fn derivations(
        pairs: &[(&CheckpointLayers, &CheckpointLayers)],
        plan: Option<&Plan>,
        budget: usize,
    ) -> usize {
        let mut lru: Vec<(CheckpointId, usize)> = Vec::new();
        let mut count = 0;
        let x_major: Vec<usize> = (0..pairs.len()).collect();
        let mut last_other = None;
        for &pi in plan.map_or(&x_major, |p| &p.order) {
            if let Some(plan) = plan {
                let other = plan.other(pairs[pi]);
                if let Some(prev) = last_other.filter(|&p| p != other && !plan.held.contains(&p)) {
                    lru.retain(|e: &(CheckpointId, usize)| e.0 != prev);
                }
                last_other = Some(other);
            }
            for c in [pairs[pi].0, pairs[pi].1] {
                if let Some(at) = lru.iter().position(|e| e.0 == c.checkpoint_id) {
                    let e = lru.remove(at);
                    lru.push(e);
                    continue;
                }
                count += 1;
                let size = derived_bytes(c);
                while lru.iter().map(|e| e.1).sum::<usize>() + size > budget && !lru.is_empty() {
                    lru.remove(0);
                }
                lru.push((c.checkpoint_id, size));
            }
        }
        count
    }

    #[test]
    fn pairs_are_ordered_to_derive_each_checkpoint_as_few_times_as_the_budget_allows() {
        let xs: Vec<CheckpointLayers> = (0..3).map(|i| ck(i, 4)).collect();
        let ys: Vec<CheckpointLayers> = (10..15).map(|i| ck(i, 4)).collect();
        let pairs: Vec<(&CheckpointLayers, &CheckpointLayers)> = xs
            .iter()
            .flat_map(|x| ys.iter().map(move |y| (x, y)))
            .collect();
        let one = derived_bytes(&xs[0]);
        // Room for the 3 x checkpoints and one y: x-major re-derives every y for every x.
        let budget = 4 * one;
        assert_eq!(derivations(&pairs, None, budget), 3 + 3 * 5);
        let plan = compute_order(&pairs, budget);
        assert!(plan.held_is_x);
        assert_eq!(derivations(&pairs, Some(&plan), budget), 3 + 5);
        let mut sorted = plan.order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..pairs.len()).collect::<Vec<_>>(),
            "every pair once"
        );
        // Room for two: the x side in tiles of one, each y once per tile.
        let plan = compute_order(&pairs, 2 * one);
        assert_eq!(derivations(&pairs, Some(&plan), 2 * one), 3 + 3 * 5);
        // Everything fits: each checkpoint once.
        let plan = compute_order(&pairs, 100 * one);
        assert_eq!(derivations(&pairs, Some(&plan), 100 * one), 8);
    }
}
