//! Polars-powered queries over the catalog (DESIGN.md §6).
//!
//! The catalog is exposed as LazyFrames with documented names and columns:
//!
//! | table | columns |
//! | --- | --- |
//! | `models` | name, modality, family, num_params |
//! | `checkpoints` | model, checkpoint, step, created_at |
//! | `datasets` | name, n, description |
//! | `reps` | rep, hash, model, modality, family, checkpoint, checkpoint_id, step, dataset, layer, pool, n, d, layers, layout |
//! | `scores` | model, checkpoint, checkpoint_id, name, value, higher_is_better |
//! | `reps` also has `meta`: the checkpoint's provenance as a JSON object (`--meta`) |
//! | `cells` | x_rep, y_rep, metric, params, prep, value: one row per layer pair and orientation |
//! | `alignment` | x_model, x_checkpoint, x_step, x_modality, y_model, y_checkpoint, y_step, y_modality, metric, params, prep, reduce, score, x_layer, y_layer, cells, complete, x_checkpoint_id, y_checkpoint_id |
//!
//! `cells` comes from the content-addressed cache: each cached (hash_x, hash_y) value is
//! expanded to every representation pair that uses those blobs, in both orientations for
//! symmetric metrics. `prep` is the preparation without thresholds (`clamp(q=0.95);l2`, `l2`,
//! `raw`): a cell counts for a layer set only when it was computed at the clamp scope the set
//! resolves to (the official rule by default: per layer for features given as per-layer
//! arrays, over the checkpoint for a stacked tensor; `scope=checkpoint` or `scope=layer` in
//! the kind forces one, see [`crate::metrics::Prep::kind`]) and with that set's thresholds.
//! `alignment` is the model-pair best over layer pairs; `complete` says every layer pair is
//! cached.

use std::collections::HashMap;

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::catalog::{Catalog, CellReader, CheckpointId, DatasetId};
use crate::error::{Error, Result};
use crate::layers::Reduce;
use crate::metrics::{ClampScope, Layout, Metric, Scope, prep};
use crate::registry::Registry;

/// A polars failure inside prh's own pipeline (the frames are prh's, so it is a bug).
pub(crate) fn pe(e: PolarsError) -> Error {
    Error::Internal(format!("polars: {e}"))
}

/// A polars failure running the user's SQL: their query's fault.
fn user_sql(e: PolarsError) -> Error {
    Error::Invalid(format!("query: {e}"))
}

/// Which cached cells to load.
#[derive(Debug, Clone, Default)]
pub struct CellFilter {
    pub metric: Option<String>,
    pub params: Option<String>,
    /// The clamp scope a layer set's cells must have been computed at.
    pub scope: ClampScope,
}

/// Hashes a hex content hash by its first 16 digits: they are already uniformly random, so
/// the map needs no further mixing (a million lookups per scan).
#[derive(Default, Clone, Copy)]
pub struct HexHash;

/// The hasher of [`HexHash`].
#[derive(Default)]
pub struct HexHasher(u64);

impl std::hash::Hasher for HexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
    }
}

impl std::hash::BuildHasher for HexHash {
    type Hasher = HexHasher;
    fn build_hasher(&self) -> HexHasher {
        HexHasher(0)
    }
}

/// One row per representation, with its checkpoint's layer count.
pub struct RepIndex {
    pub frame: DataFrame,
    /// One row per (checkpoint, dataset, pool): the layer set a model-pair score is over.
    pub sets: DataFrame,
    by_hash: HashMap<Box<[u8]>, Vec<(u32, i64)>, HexHash>,
    set_of: Vec<u32>,
    layer_of: Vec<i64>,
    /// Per layer set, its cached clamp thresholds as (q, f32 bits of t): a cell computed with
    /// another set's threshold (a blob shared by checkpoints whose other layers differ) is not
    /// this set's.
    set_clamp: Vec<Vec<(f64, u32)>>,
    /// Per layer set, its recorded layout and layer count (which decide its clamp scope).
    set_layout: Vec<(Option<Layout>, usize)>,
    /// Per representation, its layer's own cached clamp thresholds (for per-layer scope).
    rep_clamp: Vec<Vec<(f64, u32)>>,
}

impl RepIndex {
    /// Whether a cell side prepared with `clamp` (q, threshold bits, scope) belongs to
    /// representation `rep` when sets are clamped at `scope`.
    fn owns(&self, rep: u32, clamp: Option<(f64, u32, Scope)>, scope: ClampScope) -> bool {
        let Some((q, t, cell_scope)) = clamp else {
            return true;
        };
        let set = self.set_of[rep as usize] as usize;
        let (layout, layers) = self.set_layout[set];
        if scope.resolve(layout, layers) != cell_scope {
            return false;
        }
        match cell_scope {
            Scope::Checkpoint => self.set_clamp[set].contains(&(q, t)),
            Scope::Layer => self.rep_clamp[rep as usize].contains(&(q, t)),
        }
    }
}

fn col<T, N: Into<PlSmallStr>>(name: N, v: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), v)
}

/// Loads the `reps` frame and a hash → representations index.
pub fn reps(reg: &Registry) -> Result<RepIndex> {
    // Ordered by model, step (none first), checkpoint, layer; each layer set's size counted.
    let mut rows = reg.catalog.reps(&crate::catalog::RepFilter::default())?;
    rows.sort_by(|a, b| {
        (&a.model, a.step, a.checkpoint_id, a.layer).cmp(&(
            &b.model,
            b.step,
            b.checkpoint_id,
            b.layer,
        ))
    });
    let mut set_sizes: HashMap<(CheckpointId, DatasetId, &str), i64> = HashMap::new();
    for r in &rows {
        *set_sizes
            .entry((r.checkpoint_id, r.dataset_id, r.pool.as_str()))
            .or_default() += 1;
    }
    let mut hash = Vec::new();
    let mut model = Vec::new();
    let mut modality = Vec::new();
    let mut family: Vec<Option<String>> = Vec::new();
    let mut ck = Vec::new();
    let mut ck_id = Vec::new();
    let mut step: Vec<Option<i64>> = Vec::new();
    let mut dataset = Vec::new();
    let mut layer = Vec::new();
    let mut pool = Vec::new();
    let mut n = Vec::new();
    let mut d = Vec::new();
    let mut layers = Vec::new();
    let mut layout: Vec<Option<String>> = Vec::new();
    let mut meta: Vec<String> = Vec::new();
    let ck_meta = reg.catalog.checkpoint_meta()?;
    let mut by_hash: HashMap<Box<[u8]>, Vec<(u32, i64)>, HexHash> = HashMap::default();
    for r in &rows {
        let hex = r.hash.to_hex();
        by_hash
            .entry(hex.as_bytes().into())
            .or_default()
            .push((hash.len() as u32, r.dataset_id.0));
        layers.push(set_sizes[&(r.checkpoint_id, r.dataset_id, r.pool.as_str())]);
        hash.push(hex);
        model.push(r.model.clone());
        modality.push(r.modality.clone());
        family.push(r.family.clone());
        ck.push(r.checkpoint.clone());
        ck_id.push(r.checkpoint_id.0);
        step.push(r.step);
        dataset.push(r.dataset.clone());
        layer.push(r.layer);
        pool.push(r.pool.clone());
        n.push(r.n as i64);
        d.push(r.d as i64);
        layout.push(r.layout.clone());
        meta.push(
            ck_meta
                .get(&r.checkpoint_id)
                .map(|m| serde_json::to_string(m).expect("strings serialise"))
                .unwrap_or_else(|| "{}".into()),
        );
    }
    let rep: Vec<u32> = (0..hash.len() as u32).collect();
    // Layer sets: distinct (checkpoint, dataset, pool), numbered in order.
    let mut set_ids: HashMap<(i64, String, String), u32> = HashMap::new();
    let mut set_of = Vec::with_capacity(hash.len());
    let (
        mut s_id,
        mut s_model,
        mut s_modality,
        mut s_ck,
        mut s_ck_id,
        mut s_step,
        mut s_pool,
        mut s_layers,
    ) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    // Each set's layer hashes in layer order (rows come ordered by layer), for its clamp key.
    let mut set_layers: Vec<Vec<crate::store::BlobHash>> = Vec::new();
    for i in 0..hash.len() {
        let key = (ck_id[i], dataset[i].clone(), pool[i].clone());
        let next = set_ids.len() as u32;
        let id = *set_ids.entry(key).or_insert_with(|| {
            s_id.push(next);
            s_model.push(model[i].clone());
            s_modality.push(modality[i].clone());
            s_ck.push(ck[i].clone());
            s_ck_id.push(ck_id[i]);
            s_step.push(step[i]);
            s_pool.push(pool[i].clone());
            s_layers.push(layers[i]);
            next
        });
        set_of.push(id);
        if set_layers.len() <= id as usize {
            set_layers.push(Vec::new());
        }
        if let Ok(h) = hash[i].parse() {
            set_layers[id as usize].push(h);
        }
    }
    // The sweep keys a checkpoint's threshold by BLAKE3 of its ordered layer hashes.
    let mut thresholds: HashMap<String, Vec<(f64, u32)>> = HashMap::new();
    for (k, q, t) in reg.catalog.clamp_thresholds()? {
        thresholds
            .entry(k)
            .or_default()
            .push((q, (t as f32).to_bits()));
    }
    let cached = |hashes: &[crate::store::BlobHash]| {
        thresholds
            .get(&crate::sweep::layers_key(hashes))
            .cloned()
            .unwrap_or_default()
    };
    let set_clamp: Vec<Vec<(f64, u32)>> = set_layers.iter().map(|h| cached(h)).collect();
    let rep_clamp: Vec<Vec<(f64, u32)>> = hash
        .iter()
        .map(|h| {
            h.parse()
                .map(|h| cached(std::slice::from_ref(&h)))
                .unwrap_or_default()
        })
        .collect();
    let mut set_members: Vec<Vec<Option<&str>>> = vec![Vec::new(); set_layers.len()];
    for (i, &s) in set_of.iter().enumerate() {
        set_members[s as usize].push(layout[i].as_deref());
    }
    let set_layout: Vec<(Option<Layout>, usize)> = set_members
        .into_iter()
        .map(|m| {
            let n = m.len();
            (crate::sweep::set_layout(m.into_iter()), n)
        })
        .collect();
    let sets = DataFrame::new_infer_height(vec![
        col("set", s_id),
        col("model", s_model),
        col("modality", s_modality),
        col("checkpoint", s_ck),
        col("checkpoint_id", s_ck_id),
        col("step", s_step),
        col("pool", s_pool),
        col("layers", s_layers),
    ])
    .map_err(pe)?;
    let layer_of = layer.clone();
    let frame = DataFrame::new_infer_height(vec![
        col("rep", rep),
        col("hash", hash),
        col("model", model),
        col("modality", modality),
        col("family", family),
        col("checkpoint", ck),
        col("checkpoint_id", ck_id),
        col("step", step),
        col("dataset", dataset),
        col("layer", layer),
        col("pool", pool),
        col("n", n),
        col("d", d),
        col("layers", layers),
        col("layout", layout),
        col("meta", meta),
    ])
    .map_err(pe)?;
    Ok(RepIndex {
        frame,
        sets,
        by_hash,
        set_of,
        layer_of,
        set_clamp,
        set_layout,
        rep_clamp,
    })
}

/// Cached layer-pair values expanded to representation pairs: `frame` has x_rep, y_rep,
/// x_set, y_set, x_layer, y_layer, key, value; `keys` maps key to metric, params, prep.
pub struct Cells {
    pub frame: DataFrame,
    pub keys: DataFrame,
}

impl Cells {
    /// The documented `cells` table: x_rep, y_rep, metric, params, prep, value.
    pub fn table(&self) -> LazyFrame {
        use polars::prelude::col as c;
        self.frame
            .clone()
            .lazy()
            .inner_join(self.keys.clone().lazy(), c("key"), c("key"))
            .select([
                c("x_rep"),
                c("y_rep"),
                c("metric"),
                c("params"),
                c("prep"),
                c("value"),
            ])
    }
}

/// One scan's share of the cells.
#[derive(Default)]
struct Part {
    xs: Vec<u32>,
    ys: Vec<u32>,
    xset: Vec<u32>,
    yset: Vec<u32>,
    xl: Vec<i64>,
    yl: Vec<i64>,
    key: Vec<u32>,
    value: Vec<f64>,
}

/// A cache key side (`cell_sides`) as a scan needs it: the representations of its blob (with
/// their datasets), its clamp and its prep kind (an index into [`Dictionary::kinds`]).
struct Side<'i> {
    hash: String,
    reps: &'i [(u32, i64)],
    clamp: Option<(f64, u32, Scope)>,
    kind: usize,
}

/// The cache key dictionaries, read once per query: every side whose blob a representation
/// names, and every metric of a current version that passes the filter. A cell's (metric,
/// params, prep) key is numbered by its (name, x kind, y kind) indices ([`Dictionary::key`]).
struct Dictionary<'i> {
    sides: HashMap<i64, Side<'i>>,
    /// (metric id, index into `names`, symmetric).
    metrics: Vec<(i64, usize, bool)>,
    names: Vec<(String, String)>,
    kinds: Vec<String>,
}

/// The index of `v` in `list`, appending it when it is new.
fn intern<T: PartialEq>(list: &mut Vec<T>, v: T) -> usize {
    list.iter().position(|x| *x == v).unwrap_or_else(|| {
        list.push(v);
        list.len() - 1
    })
}

impl<'i> Dictionary<'i> {
    fn read(catalog: &dyn Catalog, idx: &'i RepIndex, filter: &CellFilter) -> Result<Self> {
        let current: HashMap<&str, (u32, bool)> = crate::metrics::ALL
            .iter()
            .map(|m| (m.name(), (m.version(), m.symmetric())))
            .collect();
        let mut names: Vec<(String, String)> = Vec::new();
        let mut metrics = Vec::new();
        for e in catalog.cell_metrics()? {
            let (id, m, v, p) = (e.id, e.metric, e.version, e.params);
            // Rows of an older metric version, or of an unknown metric, are never served.
            let Some(&(version, symmetric)) = current.get(m.as_str()) else {
                continue;
            };
            let wanted = filter.metric.as_ref().is_none_or(|f| *f == m)
                && filter.params.as_ref().is_none_or(|f| *f == p);
            if version as i64 != v || !wanted {
                continue;
            }
            metrics.push((id, intern(&mut names, (m, p)), symmetric));
        }
        let mut kinds: Vec<String> = Vec::new();
        let mut sides = HashMap::new();
        for e in catalog.cell_sides()? {
            let (id, hash, prep) = (e.id, e.hash, e.prep);
            let Some(reps) = idx.by_hash.get(hash.as_bytes()) else {
                continue;
            };
            let kind = intern(&mut kinds, prep::kind_of_key(&prep, filter.scope));
            sides.insert(
                id,
                Side {
                    hash,
                    reps,
                    clamp: prep::clamp_of_key(&prep),
                    kind,
                },
            );
        }
        Ok(Dictionary {
            sides,
            metrics,
            names,
            kinds,
        })
    }

    /// How many keys [`Dictionary::key`] can number.
    fn key_count(&self) -> usize {
        self.names.len() * self.kinds.len() * self.kinds.len()
    }

    /// The number of the key of metric name `n` with prep kinds `a` (x) and `b` (y).
    fn key(&self, n: usize, a: usize, b: usize) -> u32 {
        let k = self.kinds.len();
        ((n * k + a) * k + b) as u32
    }

    /// The (metric, params, prep) of key number `key`: one prep kind, or `x|y` when the
    /// sides differ.
    fn key_name(&self, key: u32) -> (String, String, String) {
        let k = self.kinds.len();
        let (n, a, b) = (
            key as usize / (k * k),
            key as usize / k % k,
            key as usize % k,
        );
        let (m, p) = self.names[n].clone();
        let prep = if a == b {
            self.kinds[a].clone()
        } else {
            format!("{}|{}", self.kinds[a], self.kinds[b])
        };
        (m, p, prep)
    }
}

/// Scans the cells whose x side id lies in [lo, hi] (the primary key is (m, x, y), so each
/// metric's range is a contiguous stretch of the table).
fn scan(
    reader: &mut dyn CellReader,
    idx: &RepIndex,
    dict: &Dictionary,
    scope: ClampScope,
    lo: i64,
    hi: i64,
) -> Result<Part> {
    let mut part = Part::default();
    for &(m, name, symmetric) in &dict.metrics {
        reader.scan(m, lo, hi, &mut |x, y, v| {
            let (Some(sx), Some(sy)) = (dict.sides.get(&x), dict.sides.get(&y)) else {
                return; // a blob no representation names
            };
            let k = dict.key(name, sx.kind, sy.kind);
            let mut emit = |a: u32, b: u32| {
                part.xs.push(a);
                part.ys.push(b);
                part.xset.push(idx.set_of[a as usize]);
                part.yset.push(idx.set_of[b as usize]);
                part.xl.push(idx.layer_of[a as usize]);
                part.yl.push(idx.layer_of[b as usize]);
                part.key.push(k);
                part.value.push(v);
            };
            // A cell belongs to a layer set only when it was computed at that set's clamp
            // scope with that set's threshold.
            for &(a, da) in sx.reps {
                if !idx.owns(a, sx.clamp, scope) {
                    continue;
                }
                for &(b, db) in sy.reps {
                    if da != db || !idx.owns(b, sy.clamp, scope) {
                        continue;
                    }
                    emit(a, b);
                    if symmetric && sx.hash != sy.hash {
                        emit(b, a);
                    }
                }
            }
        })?;
    }
    Ok(part)
}

/// Reads the cache into [`Cells`]: the key dictionaries first, then the cells split into
/// ranges of x side ids (one per core), each scanned on its own read connection, then merged.
pub fn cells(reg: &Registry, idx: &RepIndex, filter: &CellFilter) -> Result<Cells> {
    let dict = Dictionary::read(reg.catalog.as_ref(), idx, filter)?;
    let threads = rayon::current_num_threads().clamp(1, 16) as i128;
    // Side ids are uniform over i64: equal ranges hold about equal shares of the cells.
    let span = (i64::MAX as i128 - i64::MIN as i128 + 1) / threads;
    let bounds: Vec<(i64, i64)> = (0..threads)
        .map(|t| {
            let lo = i64::MIN as i128 + t * span;
            let hi = if t == threads - 1 {
                i64::MAX as i128
            } else {
                lo + span - 1
            };
            (lo as i64, hi as i64)
        })
        .collect();
    let readers = reg.catalog.cell_readers(bounds.len())?;
    let parts: Vec<Result<Part>> = std::thread::scope(|sc| {
        let handles: Vec<_> = bounds
            .iter()
            .zip(readers)
            .map(|(&(lo, hi), mut reader)| {
                let dict = &dict;
                sc.spawn(move || scan(reader.as_mut(), idx, dict, filter.scope, lo, hi))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("cell scan panicked".into())))
            })
            .collect()
    });
    let mut all = Part::default();
    for part in parts {
        let part = part?;
        all.xs.extend(part.xs);
        all.ys.extend(part.ys);
        all.xset.extend(part.xset);
        all.yset.extend(part.yset);
        all.xl.extend(part.xl);
        all.yl.extend(part.yl);
        all.key.extend(part.key);
        all.value.extend(part.value);
    }
    // Number the keys that occur, in order of first occurrence.
    let mut renumber: Vec<Option<u32>> = vec![None; dict.key_count()];
    let mut names = Vec::new();
    for k in all.key.iter_mut() {
        *k = *renumber[*k as usize].get_or_insert_with(|| {
            names.push(dict.key_name(*k));
            names.len() as u32 - 1
        });
    }
    let frame = DataFrame::new_infer_height(vec![
        col("x_rep", all.xs),
        col("y_rep", all.ys),
        col("x_set", all.xset),
        col("y_set", all.yset),
        col("x_layer", all.xl),
        col("y_layer", all.yl),
        col("key", all.key),
        col("value", all.value),
    ])
    .map_err(pe)?;
    let keys = DataFrame::new_infer_height(vec![
        col("key", (0..names.len() as u32).collect::<Vec<_>>()),
        col(
            "metric",
            names.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
        ),
        col(
            "params",
            names.iter().map(|k| k.1.clone()).collect::<Vec<_>>(),
        ),
        col(
            "prep",
            names.iter().map(|k| k.2.clone()).collect::<Vec<_>>(),
        ),
    ])
    .map_err(pe)?;
    Ok(Cells { frame, keys })
}

/// The layer sets with every column prefixed for one side of a join.
fn side(sets: &DataFrame, p: &str) -> LazyFrame {
    use polars::prelude::col as c;
    sets.clone().lazy().select([
        c("set").alias(format!("{p}_set")),
        c("model").alias(format!("{p}_model")),
        c("modality").alias(format!("{p}_modality")),
        c("checkpoint").alias(format!("{p}_checkpoint")),
        c("checkpoint_id").alias(format!("{p}_checkpoint_id")),
        c("step").alias(format!("{p}_step")),
        c("layers").alias(format!("{p}_layers")),
    ])
}

/// The `alignment` pipeline: each model pair's layer-pair cells aggregated by `reduce` (the
/// max with its layers by default). One group-by over integer keys on the big frame; names
/// and counts are joined onto the small result. `cells` always counts every cached layer
/// pair, so `complete` means the whole table is there (also for `last` and `layers=I,J`).
pub fn alignment(idx: &RepIndex, cells: &Cells, reduce: Reduce) -> LazyFrame {
    use polars::prelude::col as c;
    // The one cell a single-pair reduction takes, as a mask over the group's cells.
    let pick = |x: Expr, y: Expr| c("x_layer").eq(x).and(c("y_layer").eq(y));
    let (score, x_layer, y_layer) = match reduce {
        Reduce::Max => (
            c("value").max(),
            c("x_layer").get(c("value").arg_max(), false),
            c("y_layer").get(c("value").arg_max(), false),
        ),
        Reduce::Mean => (
            c("value").mean(),
            lit(NULL).cast(DataType::Int64),
            lit(NULL).cast(DataType::Int64),
        ),
        Reduce::Last => {
            let m = pick(c("x_layer").max(), c("y_layer").max());
            (
                c("value").filter(m.clone()).first(),
                c("x_layer").filter(m.clone()).first(),
                c("y_layer").filter(m).first(),
            )
        }
        Reduce::Layers(i, j) => {
            let m = pick(lit(i as i64), lit(j as i64));
            (
                c("value").filter(m.clone()).first(),
                c("x_layer").filter(m.clone()).first(),
                c("y_layer").filter(m).first(),
            )
        }
    };
    cells
        .frame
        .clone()
        .lazy()
        .group_by([c("x_set"), c("y_set"), c("key")])
        .agg([
            score.alias("score"),
            x_layer.alias("x_layer"),
            y_layer.alias("y_layer"),
            len().alias("cells"),
        ])
        .with_column(lit(reduce.key()).alias("reduce"))
        .inner_join(cells.keys.clone().lazy(), c("key"), c("key"))
        .inner_join(side(&idx.sets, "x"), c("x_set"), c("x_set"))
        .inner_join(side(&idx.sets, "y"), c("y_set"), c("y_set"))
        .with_columns([c("cells")
            .cast(DataType::Int64)
            .eq(c("x_layers") * c("y_layers"))
            .alias("complete")])
        .select([
            c("x_model"),
            c("x_checkpoint"),
            c("x_step"),
            c("x_modality"),
            c("y_model"),
            c("y_checkpoint"),
            c("y_step"),
            c("y_modality"),
            c("metric"),
            c("params"),
            c("prep"),
            c("reduce"),
            c("score"),
            c("x_layer"),
            c("y_layer"),
            c("cells"),
            c("complete"),
            c("x_checkpoint_id"),
            c("y_checkpoint_id"),
        ])
}

/// The small catalog tables as frames.
pub fn small_tables(reg: &Registry) -> Result<Vec<(&'static str, DataFrame)>> {
    let models = reg.catalog.models()?;
    let cks = reg.catalog.checkpoints(None)?;
    let ds = reg.catalog.datasets()?;
    let (mut sm, mut sc, mut sci, mut sn, mut sv, mut sh) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::<Option<bool>>::new(),
    );
    for s in reg.catalog.scores(None)? {
        sm.push(s.model);
        sc.push(s.checkpoint);
        sci.push(s.checkpoint_id.0);
        sn.push(s.name);
        sv.push(s.value);
        sh.push(s.higher_is_better);
    }
    Ok(vec![
        (
            "models",
            DataFrame::new_infer_height(vec![
                col(
                    "name",
                    models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                ),
                col(
                    "modality",
                    models
                        .iter()
                        .map(|m| m.modality.clone())
                        .collect::<Vec<_>>(),
                ),
                col(
                    "family",
                    models.iter().map(|m| m.family.clone()).collect::<Vec<_>>(),
                ),
                col(
                    "num_params",
                    models.iter().map(|m| m.num_params).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "checkpoints",
            DataFrame::new_infer_height(vec![
                col(
                    "model",
                    cks.iter().map(|c| c.model.clone()).collect::<Vec<_>>(),
                ),
                col(
                    "checkpoint",
                    cks.iter().map(|c| c.checkpoint.clone()).collect::<Vec<_>>(),
                ),
                col("step", cks.iter().map(|c| c.step).collect::<Vec<_>>()),
                col(
                    "created_at",
                    cks.iter().map(|c| c.created_at.clone()).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "datasets",
            DataFrame::new_infer_height(vec![
                col(
                    "name",
                    ds.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
                ),
                col("n", ds.iter().map(|d| d.n as i64).collect::<Vec<_>>()),
                col(
                    "description",
                    ds.iter().map(|d| d.description.clone()).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "scores",
            DataFrame::new_infer_height(vec![
                col("model", sm),
                col("checkpoint", sc),
                col("checkpoint_id", sci),
                col("name", sn),
                col("value", sv),
                col("higher_is_better", sh),
            ])
            .map_err(pe)?,
        ),
    ])
}

/// Runs free SQL over every table (`models`, `checkpoints`, `datasets`, `reps`, `scores`,
/// `cells`, `alignment`) through polars' SQL context; anything but one read-only SELECT is
/// refused first ([`crate::sqlguard`]).
pub fn sql(reg: &Registry, query: &str) -> Result<DataFrame> {
    crate::sqlguard::check(query)?;
    let mut ctx = SQLContext::new();
    let mut sizes = std::collections::HashMap::new();
    for (name, df) in small_tables(reg)? {
        sizes.insert(name.to_string(), df.height() as u64);
        ctx.register(name, df.lazy());
    }
    let idx = reps(reg)?;
    let cells = cells(reg, &idx, &CellFilter::default())?;
    sizes.insert("reps".into(), idx.frame.height() as u64);
    sizes.insert("cells".into(), cells.frame.height() as u64);
    sizes.insert("alignment".into(), cells.frame.height() as u64);
    crate::sqlguard::check_size(query, &sizes)?;
    ctx.register("alignment", alignment(&idx, &cells, Reduce::Max));
    ctx.register("cells", cells.table());
    ctx.register("reps", idx.frame.lazy());
    ctx.execute(query)
        .map_err(user_sql)?
        .collect()
        .map_err(user_sql)
}

/// The model-pair alignment frame for one metric, collected.
pub fn alignment_for(
    reg: &Registry,
    metric: Metric,
    params: &str,
    prep: &str,
    reduce: Reduce,
) -> Result<DataFrame> {
    let t = std::time::Instant::now();
    let idx = reps(reg)?;
    let t_reps = t.elapsed();
    let cells = cells(
        reg,
        &idx,
        &CellFilter {
            metric: Some(metric.name().to_string()),
            params: Some(params.to_string()),
            scope: ClampScope::from_kind(prep),
        },
    )?;
    let t_cells = t.elapsed();
    let out = alignment(&idx, &cells, reduce)
        .filter(polars::prelude::col("prep").eq(lit(prep.to_string())))
        .collect()
        .map_err(pe);
    if std::env::var_os("PRH_TIMING").is_some() {
        eprintln!(
            "timing: reps {:?}, cells {:?}, alignment {:?}",
            t_reps,
            t_cells - t_reps,
            t.elapsed() - t_cells
        );
    }
    out
}

/// One model pair's cached layer-pair values for one metric and prep kind, as
/// (x_layer, y_layer, value), sorted by layers: the table a pair's score aggregates.
pub fn layer_cells(
    reg: &Registry,
    metric: Metric,
    params: &str,
    prep: &str,
    x: CheckpointId,
    y: CheckpointId,
) -> Result<Vec<(i64, i64, f64)>> {
    use polars::prelude::col as c;
    let idx = reps(reg)?;
    let filter = CellFilter {
        metric: Some(metric.name().to_string()),
        params: Some(params.to_string()),
        scope: ClampScope::from_kind(prep),
    };
    let cells = cells(reg, &idx, &filter)?;
    let df = cells
        .frame
        .clone()
        .lazy()
        .inner_join(cells.keys.clone().lazy(), c("key"), c("key"))
        .inner_join(side(&idx.sets, "x"), c("x_set"), c("x_set"))
        .inner_join(side(&idx.sets, "y"), c("y_set"), c("y_set"))
        .filter(
            c("x_checkpoint_id")
                .eq(lit(x.0))
                .and(c("y_checkpoint_id").eq(lit(y.0)))
                .and(c("prep").eq(lit(prep.to_string()))),
        )
        .select([c("x_layer"), c("y_layer"), c("value")])
        .sort(["x_layer", "y_layer"], Default::default())
        .collect()
        .map_err(pe)?;
    let col = |n: &str| -> Result<Vec<Option<i64>>> {
        Ok(df
            .column(n)
            .map_err(pe)?
            .cast(&DataType::Int64)
            .map_err(pe)?
            .i64()
            .map_err(pe)?
            .iter()
            .collect())
    };
    let (xl, yl) = (col("x_layer")?, col("y_layer")?);
    let v = df.column("value").map_err(pe)?.f64().map_err(pe)?.clone();
    Ok((0..df.height())
        .map(|i| {
            (
                xl[i].unwrap_or_default(),
                yl[i].unwrap_or_default(),
                v.get(i).unwrap_or(f64::NAN),
            )
        })
        .collect())
}

/// Writes a DataFrame as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    polars_io::parquet::write::ParquetWriter::new(f)
        .finish(df)
        .map_err(pe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_output_reads_back_as_the_same_frame() {
        use polars_io::SerReader;
        let rows = vec![
            serde_json::json!({"model": "a", "step": 1, "score": 0.25}),
            serde_json::json!({"model": "b", "step": null, "score": 0.5}),
        ];
        let mut df = crate::frame::from_rows(&rows).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_parquet(&mut df, &path).unwrap();
        let back =
            polars_io::parquet::read::ParquetReader::new(std::fs::File::open(&path).unwrap())
                .finish()
                .unwrap();
        assert!(back.equals_missing(&df), "{back} vs {df}");
    }
}
