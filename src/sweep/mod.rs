//! Alignment sweeps over the registry with a content-addressed cache (docs/design.md §7).
//!
//! A sweep selects x and y model checkpoints, forms every layer-pair cell's cache key
//! (hash_x, hash_y, metric, metric version, canonical params, prep_x, prep_y), asks the cache
//! which cells are missing, computes only those, and commits each model pair's cells in one
//! transaction as it goes, so an interrupted sweep resumes where it stopped. Symmetric metrics
//! store one orientation (hash_x ≤ hash_y). Each checkpoint's derived data is computed once and
//! kept in a memory-bounded LRU while the pairs that need it are scored.
//!
//! By phase: [`select`] (selectors → checkpoints), [`prepare`] (layers → derived data), [`plan`]
//! (pairs, order, cached cells), [`compute`] (missing cells, the report), [`statistics`]
//! (nulls and bootstraps).

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
    /// The feature preparation the cells were computed under, as queries name it
    /// (`clamp(q=0.95);l2`, `clamp(q=0.95,rule=sample-mean);l2`, `raw` …).
    pub prep: String,
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
    /// kNN metrics on the large-n path: how many of the pair's layers' kNN graphs this run
    /// computed (the others were read back from the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphs_computed: Option<usize>,
    /// Mean of the permutation null (with `--null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_sd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// Benjamini–Hochberg q-value of `p_value` among the sweep's pairs for this metric: the
    /// smallest false-discovery rate at which this pair would be called aligned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_value: Option<f64>,
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
    /// Whether whoever asked for the work has stopped waiting for it (a dashboard client
    /// that left). Long work asks between cells, graphs and blocks of draws ([`go_on`]).
    fn cancelled(&self) -> bool {
        false
    }
}

/// `Err(Interrupted)` once the work is no longer wanted; what was finished before is stored.
pub(crate) fn go_on(progress: &dyn Progress) -> Result<()> {
    if progress.cancelled() {
        return Err(Error::Interrupted);
    }
    Ok(())
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

mod blocks;
mod compute;
mod plan;
mod prepare;
mod select;
mod statistics;

pub use blocks::*;
use compute::*;
use plan::*;
pub use prepare::*;
pub use select::*;
use statistics::*;

/// Runs a sweep: computes missing cells, then reports every model pair for every metric.
pub fn sweep(
    reg: &mut Registry,
    req: &SweepRequest,
    progress: &dyn Progress,
) -> Result<Vec<PairResult>> {
    let (xs, ys) = resolve(reg, req)?;
    let set = pair_set(reg, req, &xs, &ys, None, &mut HashMap::new())?;
    let (mut tables, todo) = cached_tables(reg, &set)?;
    let mut cache = DerivedCache::new(req.mem_budget);
    let computed = compute_missing(reg, req, &set, &todo, &mut tables, &mut cache, progress)?;
    let mut out = report(reg, req, &set, &tables, &computed)?;
    if req.null > 0 || req.bootstrap > 0 {
        add_statistics(reg, req, &set, &mut out, &mut cache, progress)?;
    }
    Ok(out)
}

/// Computes and stores the missing cells of one checkpoint pair of a request (a worker's
/// unit), or of the block of its x layers with stored indices in `x_layers` (inclusive)
/// against every y layer, deriving through `cache` (kept by the caller across pairs of one
/// request): nothing else is read or reported.
pub fn fill_pair(
    reg: &mut Registry,
    req: &SweepRequest,
    (x, y): (CheckpointId, CheckpointId),
    x_layers: Option<(i64, i64)>,
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<()> {
    let (xs, ys) = resolve(reg, req)?;
    fill_resolved(reg, req, (&xs, &ys), (x, y), x_layers, cache, progress)
}

/// The x and y checkpoints a request selects (a worker resolves its sweep's once).
pub fn resolve_request(
    reg: &Registry,
    req: &SweepRequest,
) -> Result<(Vec<CheckpointLayers>, Vec<CheckpointLayers>)> {
    resolve(reg, req)
}

/// [`fill_pair`] with the request's checkpoints already resolved ([`resolve_request`]), and
/// the prep of checkpoints met before taken from `cache`.
pub fn fill_resolved(
    reg: &mut Registry,
    req: &SweepRequest,
    (xs, ys): (&[CheckpointLayers], &[CheckpointLayers]),
    (x, y): (CheckpointId, CheckpointId),
    x_layers: Option<(i64, i64)>,
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<()> {
    let set = pair_set(reg, req, xs, ys, Some((x, y)), &mut cache.preps)?;
    if set.pairs.is_empty() {
        return Err(Error::Conflict(format!(
            "checkpoints {x} × {y} are not a pair of this sweep any more (a representation was removed?)"
        )));
    }
    let Some(block) = x_layers else {
        let (mut tables, todo) = cached_tables(reg, &set)?;
        return compute_missing(reg, req, &set, &todo, &mut tables, cache, progress).map(drop);
    };
    // The block as a checkpoint of its own layers, prepared as the whole checkpoint is (its
    // clamp threshold is the whole checkpoint's), so its cells are the pair's cells.
    let (bx, bprep, bids) = x_block(&set, block);
    let mut sub = PairSet {
        pairs: vec![(&bx, set.pairs[0].1)],
        keys: req.specs.iter().map(metric_key).collect(),
        preps: set.preps.clone(),
        side_ids: set.side_ids.clone(),
    };
    sub.preps.insert(x, bprep);
    sub.side_ids.insert(x, bids);
    if bx.layers.is_empty() {
        return Err(Error::Conflict(format!(
            "checkpoint {x} has no layers {}..={} any more (a representation was removed?)",
            block.0, block.1
        )));
    }
    // The cache holds derived data by checkpoint: not the block's layers.
    cache.forget(x);
    let (mut tables, todo) = cached_tables(reg, &sub)?;
    let done = compute_missing(reg, req, &sub, &todo, &mut tables, cache, progress).map(drop);
    cache.forget(x);
    done
}

/// A checkpoint pair of a sweep and how many of its cells the cache lacks.
#[derive(Debug, Clone)]
pub struct SweepPair {
    pub x: CheckpointId,
    pub y: CheckpointId,
    /// `x model @ checkpoint × y model @ checkpoint`.
    pub label: String,
    pub x_model: String,
    pub y_model: String,
    /// Cells missing (layer pairs × metrics).
    pub cells: usize,
    /// Cells in all (layer pairs × metrics).
    pub total: usize,
    /// The x checkpoint's stored layer indices, in order, and the cells missing for each.
    pub x_layer_ids: Vec<i64>,
    pub missing_by_x: Vec<usize>,
}

/// The checkpoint pairs of a request whose cells are not all cached, in sweep order.
pub fn missing_pairs(reg: &Registry, req: &SweepRequest) -> Result<Vec<SweepPair>> {
    let mut pairs = sweep_pairs(reg, req)?;
    pairs.retain(|p| p.cells > 0);
    Ok(pairs)
}

/// Every checkpoint pair of a request, in sweep order.
pub fn sweep_pairs(reg: &Registry, req: &SweepRequest) -> Result<Vec<SweepPair>> {
    let (xs, ys) = resolve(reg, req)?;
    let set = pair_set(reg, req, &xs, &ys, None, &mut HashMap::new())?;
    let (_, todo) = cached_tables(reg, &set)?;
    let per_pair = |x: &CheckpointLayers, y: &CheckpointLayers| {
        x.layers.len() * y.layers.len() * set.keys.len()
    };
    Ok(set
        .pairs
        .iter()
        .zip(&todo)
        .map(|((x, y), t)| SweepPair {
            x_layer_ids: x.layer_ids.clone(),
            missing_by_x: {
                let mut by = vec![0; x.layers.len()];
                for &(_, i, _) in t {
                    by[i] += 1;
                }
                by
            },
            x: x.checkpoint_id,
            y: y.checkpoint_id,
            label: format!(
                "{} @ {} × {} @ {}",
                x.model, x.checkpoint, y.model, y.checkpoint
            ),
            x_model: x.model.clone(),
            y_model: y.model.clone(),
            cells: t.len(),
            total: per_pair(x, y),
        })
        .collect())
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
                let size = derived_bytes(c, budget);
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
        let one = derived_bytes(&xs[0], usize::MAX);
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
