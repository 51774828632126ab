//! A catalog held in memory: nothing on disk, gone when dropped.
//!
//! It implements every row and cache operation of [`Catalog`] on plain maps, so the tests run
//! ingest, sweeps and queries through the interface with a second backend and compare the
//! results with SQLite's. A transaction works on a copy of the state and replaces it when the
//! body succeeds. Bundles are SQLite files and are not written or merged from here. Every call
//! through the interface is counted ([`MemoryCatalog::round_trips`]): a backend over a network
//! pays one round trip for each, so the count is what a sweep would cost there.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    BlobRow, CachedCell, Catalog, CatalogTx, CellReader, CellRow, CellSide, CellTable, Checkpoint,
    CheckpointId, Dataset, DatasetId, DrawKey, GcPlan, GraphPart, MergeCounts, MergeOptions,
    MetricEntry, MetricKey, Model, ModelId, NewCell, NewRep, NewUnit, Rep, RepFilter, RepSlot,
    Score, ScoreValue, SideEntry, SnapshotInfo, StoredBlob, SweepRow, Unit, UnitRow,
    checkpoint_order, collision, layers_by_id, stored_ids,
};
use crate::error::{Error, Result};
use crate::store::BlobHash;

/// The schema version this catalog reports: that of the SQLite migrations it mirrors.
const SCHEMA_VERSION: usize = super::MIGRATIONS.len();

#[derive(Clone)]
struct DatasetRow {
    id: DatasetId,
    name: String,
    n: usize,
    description: Option<String>,
}

#[derive(Clone)]
struct ModelRow {
    id: ModelId,
    name: String,
    modality: String,
    family: Option<String>,
    num_params: Option<i64>,
}

#[derive(Clone)]
struct CheckpointRow {
    id: CheckpointId,
    model: ModelId,
    name: String,
    step: Option<i64>,
    created_at: String,
}

#[derive(Clone)]
struct RepRow {
    checkpoint: CheckpointId,
    dataset: DatasetId,
    layer: usize,
    pool: String,
    hash: BlobHash,
    layout: Option<String>,
}

/// A graph's stored parts, by rows.
type Parts = BTreeMap<(i64, i64), Vec<u8>>;

/// A served or imported cell: value, and the bundle it came from for imported ones.
type Cells = BTreeMap<(i64, i64, i64), f64>;

#[derive(Clone, Default)]
struct State {
    next_id: i64,
    datasets: Vec<DatasetRow>,
    samples: HashMap<DatasetId, Vec<String>>,
    models: Vec<ModelRow>,
    checkpoints: Vec<CheckpointRow>,
    blobs: BTreeMap<BlobHash, BlobRow>,
    reps: Vec<RepRow>,
    scores: BTreeMap<(CheckpointId, String), ScoreValue>,
    meta: BTreeMap<(CheckpointId, String), String>,
    cells: Arc<Cells>,
    imported: BTreeMap<(i64, i64, i64), (f64, String)>,
    metrics: BTreeMap<i64, MetricEntry>,
    sides: BTreeMap<i64, SideEntry>,
    thresholds: BTreeMap<(String, u64), f64>,
    ties: HashMap<(String, String, usize), Vec<u8>>,
    graphs: HashMap<(String, String, usize), Vec<u8>>,
    /// Graph parts by (blob, prep, k), then by rows.
    graph_parts: HashMap<(String, String, usize), Parts>,
    /// Draws by key, with their metric and version.
    draws: HashMap<String, (String, u32, Vec<u8>)>,
    sweeps: Vec<(SweepRow, String)>,
    units: Vec<UnitRow>,
    /// What each unit computes, in `units` order.
    unit_pairs: Vec<UnitWork>,
}

/// A unit's pair, block of x layers and graph rows.
#[derive(Clone, Copy)]
struct UnitWork {
    x: CheckpointId,
    y: CheckpointId,
    x_layers: Option<(i64, i64)>,
    rows: Option<(i64, i64)>,
}

impl State {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn model_name(&self, id: ModelId) -> &str {
        self.models
            .iter()
            .find(|m| m.id == id)
            .map_or("", |m| m.name.as_str())
    }

    fn checkpoint(&self, id: CheckpointId) -> Option<&CheckpointRow> {
        self.checkpoints.iter().find(|c| c.id == id)
    }

    fn dataset_row(&self, d: &DatasetRow) -> Dataset {
        Dataset {
            id: d.id,
            name: d.name.clone(),
            n: d.n,
            description: d.description.clone(),
            has_ids: self.samples.get(&d.id).is_some_and(|s| !s.is_empty()),
        }
    }

    fn in_use(&self, hash: &BlobHash) -> bool {
        self.reps.iter().any(|r| r.hash == *hash)
    }
}

/// A catalog in memory. See the module documentation.
#[derive(Default)]
pub struct MemoryCatalog {
    state: Mutex<State>,
    calls: Arc<AtomicUsize>,
}

impl MemoryCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter of the calls made through [`Catalog`] so far, readable after the catalog has
    /// been handed to a registry.
    pub fn round_trips(&self) -> Arc<AtomicUsize> {
        self.calls.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a copy of the state and keeps the copy only when `f` succeeds: all of its
    /// writes land, or none.
    fn atomically(&self, f: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
        let mut s = self.state();
        let mut copy = s.clone();
        f(&mut copy)?;
        *s = copy;
        Ok(())
    }
}

/// Now, as the SQLite catalog writes it (`%Y-%m-%dT%H:%M:%fZ`, UTC).
fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, ms) = (t.as_secs() as i64, t.subsec_millis());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn draw_key(k: &DrawKey) -> String {
    format!(
        "{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
        k.pair_key, k.kind, k.metric, k.version, k.params, k.prep_x, k.prep_y, k.seed
    )
}

impl Catalog for MemoryCatalog {
    /// One process holds a memory catalog: its writers and gc already exclude each other
    /// through `&mut` (nothing to hold).
    fn blob_guard(&self, _mode: super::GuardMode) -> Result<super::BlobGuard> {
        Ok(super::BlobGuard::new(()))
    }

    fn schema_version(&self) -> Result<usize> {
        drop(self.state());
        Ok(SCHEMA_VERSION)
    }

    fn dataset(&self, name: &str) -> Result<Option<Dataset>> {
        let s = self.state();
        Ok(s.datasets
            .iter()
            .find(|d| d.name == name)
            .map(|d| s.dataset_row(d)))
    }

    fn datasets(&self) -> Result<Vec<Dataset>> {
        let s = self.state();
        let mut out: Vec<Dataset> = s.datasets.iter().map(|d| s.dataset_row(d)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn dataset_ids(&self, dataset: DatasetId) -> Result<Vec<String>> {
        Ok(self
            .state()
            .samples
            .get(&dataset)
            .cloned()
            .unwrap_or_default())
    }

    fn model(&self, name: &str) -> Result<Option<Model>> {
        Ok(self.models()?.into_iter().find(|m| m.name == name))
    }

    fn models(&self) -> Result<Vec<Model>> {
        let s = self.state();
        let mut out: Vec<Model> = s
            .models
            .iter()
            .map(|m| Model {
                id: m.id,
                name: m.name.clone(),
                modality: m.modality.clone(),
                family: m.family.clone(),
                num_params: m.num_params,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn checkpoints(&self, model: Option<&str>) -> Result<Vec<Checkpoint>> {
        let s = self.state();
        let mut out: Vec<Checkpoint> = s
            .checkpoints
            .iter()
            .filter(|c| model.is_none_or(|m| s.model_name(c.model) == m))
            .map(|c| Checkpoint {
                id: c.id,
                model: s.model_name(c.model).to_string(),
                checkpoint: c.name.clone(),
                step: c.step,
                created_at: c.created_at.clone(),
                meta: s
                    .meta
                    .iter()
                    .filter(|((ck, _), _)| *ck == c.id)
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect();
        out.sort_by_key(|c| checkpoint_order(&c.model, c.step, c.id));
        Ok(out)
    }

    fn checkpoint_meta(&self) -> Result<HashMap<CheckpointId, BTreeMap<String, String>>> {
        let s = self.state();
        let mut out: HashMap<CheckpointId, BTreeMap<String, String>> = HashMap::new();
        for ((ck, k), v) in &s.meta {
            out.entry(*ck).or_default().insert(k.clone(), v.clone());
        }
        Ok(out)
    }

    fn reps(&self, f: &RepFilter) -> Result<Vec<Rep>> {
        let s = self.state();
        let prefix = f.hash_prefix.as_ref().map(|p| p.to_ascii_lowercase());
        let mut out = Vec::new();
        for r in &s.reps {
            let (Some(c), Some(ds), Some(b)) = (
                s.checkpoint(r.checkpoint),
                s.datasets.iter().find(|d| d.id == r.dataset),
                s.blobs.get(&r.hash),
            ) else {
                continue;
            };
            let Some(m) = s.models.iter().find(|m| m.id == c.model) else {
                continue;
            };
            let keep = f.model.as_ref().is_none_or(|x| *x == m.name)
                && f.checkpoint_id.is_none_or(|x| x == c.id)
                && f.dataset.as_ref().is_none_or(|x| *x == ds.name)
                && f.pool.as_ref().is_none_or(|x| *x == r.pool)
                && prefix
                    .as_ref()
                    .is_none_or(|p| r.hash.to_hex().starts_with(p.as_str()));
            if !keep {
                continue;
            }
            out.push(Rep {
                hash: r.hash,
                model: m.name.clone(),
                checkpoint: c.name.clone(),
                dataset: ds.name.clone(),
                layer: r.layer as i64,
                pool: r.pool.clone(),
                dtype: b.dtype.clone(),
                n: b.n,
                d: b.d,
                layout: r.layout.clone(),
                checkpoint_id: c.id,
                modality: m.modality.clone(),
                family: m.family.clone(),
                step: c.step,
                dataset_id: ds.id,
            });
        }
        out.sort_by(|a, b| {
            (
                checkpoint_order(&a.model, a.step, a.checkpoint_id),
                &a.dataset,
                &a.pool,
                a.layer,
            )
                .cmp(&(
                    checkpoint_order(&b.model, b.step, b.checkpoint_id),
                    &b.dataset,
                    &b.pool,
                    b.layer,
                ))
        });
        Ok(out)
    }

    fn blobs(&self) -> Result<Vec<StoredBlob>> {
        let s = self.state();
        Ok(s.blobs
            .iter()
            .map(|(hash, row)| StoredBlob {
                row: row.clone(),
                used_by: s.reps.iter().find(|r| r.hash == *hash).and_then(|r| {
                    let c = s.checkpoint(r.checkpoint)?;
                    Some(format!(
                        "{} @ {} layer {}",
                        s.model_name(c.model),
                        c.name,
                        r.layer
                    ))
                }),
            })
            .collect())
    }

    fn blob_named(&self, hash: &BlobHash) -> Result<bool> {
        let s = self.state();
        Ok(s.blobs.contains_key(hash) || s.in_use(hash))
    }

    fn scores(&self, model: Option<&str>) -> Result<Vec<Score>> {
        let s = self.state();
        let mut out: Vec<(_, Score)> = Vec::new();
        for ((ck, name), v) in &s.scores {
            let Some(c) = s.checkpoint(*ck) else {
                continue;
            };
            let m = s.model_name(c.model);
            if model.is_some_and(|x| x != m) {
                continue;
            }
            out.push((
                checkpoint_order(m, c.step, c.id),
                Score {
                    model: m.to_string(),
                    checkpoint: c.name.clone(),
                    name: name.clone(),
                    value: v.value,
                    higher_is_better: v.higher_is_better,
                    checkpoint_id: c.id,
                },
            ));
        }
        out.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn CatalogTx) -> Result<()>) -> Result<()> {
        self.atomically(|copy| f(&mut Tx(copy)))
    }

    fn cached_cells(&self, m: &MetricKey, x: CellSide, y: CellSide) -> Result<Vec<CachedCell>> {
        let s = self.state();
        let (ix, iy) = (layers_by_id(x.ids), layers_by_id(y.ids));
        let mid = m.id();
        let mut out = Vec::new();
        for (kx, is) in &ix {
            for (ky, js) in &iy {
                let found = s
                    .cells
                    .get(&(mid, *kx, *ky))
                    .or_else(|| m.symmetric.then(|| s.cells.get(&(mid, *ky, *kx))).flatten());
                if let Some(&v) = found {
                    for &i in is {
                        out.extend(js.iter().map(|&j| (i, j, v)));
                    }
                }
            }
        }
        Ok(out)
    }

    fn store_cells(
        &mut self,
        keys: &[MetricKey],
        x: CellSide,
        y: CellSide,
        cells: &[NewCell],
    ) -> Result<()> {
        self.atomically(|copy| store(copy, keys, x, y, cells))
    }

    fn cell_metrics(&self) -> Result<Vec<MetricEntry>> {
        Ok(self.state().metrics.values().cloned().collect())
    }

    fn cell_counts(&self) -> Result<(u64, u64)> {
        let s = self.state();
        Ok((s.cells.len() as u64, s.imported.len() as u64))
    }

    fn cell_sides(&self) -> Result<Vec<SideEntry>> {
        Ok(self.state().sides.values().cloned().collect())
    }

    fn cell_readers(&self, n: usize) -> Result<Vec<Box<dyn CellReader>>> {
        let cells = self.state().cells.clone();
        Ok((0..n)
            .map(|_| Box::new(Reader(cells.clone())) as Box<dyn CellReader>)
            .collect())
    }

    fn cell_rows(&self, table: CellTable) -> Result<Vec<CellRow>> {
        let s = self.state();
        let rows: Vec<((i64, i64, i64), f64)> = match table {
            CellTable::Served => s.cells.iter().map(|(k, v)| (*k, *v)).collect(),
            CellTable::Imported => s.imported.iter().map(|(k, v)| (*k, v.0)).collect(),
        };
        Ok(rows
            .into_iter()
            .filter_map(|((m, x, y), value)| {
                let (k, sx, sy) = (s.metrics.get(&m)?, s.sides.get(&x)?, s.sides.get(&y)?);
                Some(CellRow {
                    ids: [m, x, y],
                    hash_x: sx.hash.clone(),
                    hash_y: sy.hash.clone(),
                    metric: k.metric.clone(),
                    version: k.version,
                    params: k.params.clone(),
                    prep_x: sx.prep.clone(),
                    prep_y: sy.prep.clone(),
                    value,
                })
            })
            .collect())
    }

    fn promote_cell(&mut self, ids: [i64; 3]) -> Result<()> {
        let mut s = self.state();
        let key = (ids[0], ids[1], ids[2]);
        if let Some((v, _)) = s.imported.remove(&key) {
            Arc::make_mut(&mut s.cells).entry(key).or_insert(v);
        }
        Ok(())
    }

    fn clamp_thresholds_at(&self, keys: &[String], q: f64) -> Result<Vec<Option<f64>>> {
        let s = self.state();
        Ok(keys
            .iter()
            .map(|k| s.thresholds.get(&(k.clone(), q.to_bits())).copied())
            .collect())
    }

    fn put_clamp_threshold(&self, layers_key: &str, q: f64, threshold: f64) -> Result<()> {
        self.state()
            .thresholds
            .entry((layers_key.to_string(), q.to_bits()))
            .or_insert(threshold);
        Ok(())
    }

    fn clamp_thresholds(&self) -> Result<Vec<(String, f64, f64)>> {
        Ok(self
            .state()
            .thresholds
            .iter()
            .map(|((k, q), t)| (k.clone(), f64::from_bits(*q), *t))
            .collect())
    }

    fn knn_ties(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>> {
        Ok(self
            .state()
            .ties
            .get(&(hash.to_hex(), prep.to_string(), k))
            .cloned())
    }

    fn put_knn_ties(&self, hash: &BlobHash, prep: &str, k: usize, rows: &[u8]) -> Result<()> {
        self.state()
            .ties
            .entry((hash.to_hex(), prep.to_string(), k))
            .or_insert_with(|| rows.to_vec());
        Ok(())
    }

    fn knn_graph_keys(&self) -> Result<Vec<(BlobHash, String, usize)>> {
        self.state()
            .graphs
            .keys()
            .map(|(h, p, k)| Ok((h.parse()?, p.clone(), *k)))
            .collect()
    }

    fn knn_graph(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>> {
        Ok(self
            .state()
            .graphs
            .get(&(hash.to_hex(), prep.to_string(), k))
            .cloned())
    }

    fn put_knn_graph(&self, hash: &BlobHash, prep: &str, k: usize, graph: &[u8]) -> Result<()> {
        self.state()
            .graphs
            .insert((hash.to_hex(), prep.to_string(), k), graph.to_vec());
        Ok(())
    }

    fn put_knn_graph_part(
        &self,
        hash: &BlobHash,
        prep: &str,
        k: usize,
        rows: (i64, i64),
        part: &[u8],
    ) -> Result<()> {
        let mut s = self.state();
        let parts = s
            .graph_parts
            .entry((hash.to_hex(), prep.to_string(), k))
            .or_default();
        parts.retain(|r, _| r.0 != rows.0);
        parts.insert(rows, part.to_vec());
        Ok(())
    }

    fn knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Vec<GraphPart>> {
        Ok(self
            .state()
            .graph_parts
            .get(&(hash.to_hex(), prep.to_string(), k))
            .map(|p| p.iter().map(|(r, b)| (*r, b.clone())).collect())
            .unwrap_or_default())
    }

    fn drop_knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<()> {
        self.state()
            .graph_parts
            .remove(&(hash.to_hex(), prep.to_string(), k));
        Ok(())
    }

    fn draws(&self, key: &DrawKey) -> Result<Option<Vec<u8>>> {
        Ok(self.state().draws.get(&draw_key(key)).map(|d| d.2.clone()))
    }

    fn put_draws(&self, key: &DrawKey, vals: &[u8]) -> Result<()> {
        // The schema's CHECK, as the SQL catalogs enforce it.
        if !matches!(key.kind, "permutation" | "bootstrap") {
            return Err(Error::Internal(format!(
                "catalog: draws of kind {:?} (permutation or bootstrap)",
                key.kind
            )));
        }
        let mut s = self.state();
        let e = s
            .draws
            .entry(draw_key(key))
            .or_insert_with(|| (key.metric.to_string(), key.version, Vec::new()));
        if vals.len() > e.2.len() {
            e.2 = vals.to_vec();
        }
        Ok(())
    }

    fn integrity_check(&self) -> Result<Option<String>> {
        let s = self.state();
        let dangling = s
            .reps
            .iter()
            .filter(|r| !s.blobs.contains_key(&r.hash))
            .count();
        Ok((dangling > 0).then(|| format!("{dangling} representations name no blob row")))
    }

    fn gc_plan(&self, current: &[(&str, u32)]) -> Result<GcPlan> {
        let s = self.state();
        let computed = |metric: &str, version: i64| {
            current
                .iter()
                .any(|(n, v)| *n == metric && *v as i64 == version)
        };
        let stale_metric = |m: &i64| {
            s.metrics
                .get(m)
                .is_none_or(|k| !computed(&k.metric, k.version))
        };
        let gone = |side: &i64| {
            s.sides
                .get(side)
                .is_none_or(|e| e.hash.parse().is_ok_and(|h| !s.in_use(&h)))
        };
        Ok(GcPlan {
            unreferenced: s
                .blobs
                .iter()
                .filter(|(h, _)| !s.in_use(h))
                .map(|(_, b)| (b.hash, b.bytes))
                .collect(),
            stale_cells: s
                .cells
                .keys()
                .filter(|(m, x, y)| stale_metric(m) || gone(x) || gone(y))
                .count(),
            stale_draws: s
                .draws
                .values()
                .filter(|(m, v, _)| !computed(m, *v as i64))
                .count(),
        })
    }

    fn gc_apply(&mut self, current: &[(&str, u32)], unreferenced: &[BlobHash]) -> Result<()> {
        let mut s = self.state();
        let live: Vec<i64> = s
            .metrics
            .values()
            .filter(|k| {
                current
                    .iter()
                    .any(|(n, v)| *n == k.metric && *v as i64 == k.version)
            })
            .map(|k| k.id)
            .collect();
        for h in unreferenced {
            s.blobs.remove(h);
        }
        let used: Vec<i64> = s
            .sides
            .values()
            .filter(|e| e.hash.parse().is_ok_and(|h| s.in_use(&h)))
            .map(|e| e.id)
            .collect();
        let keep = |&(m, x, y): &(i64, i64, i64)| {
            live.contains(&m) && used.contains(&x) && used.contains(&y)
        };
        Arc::make_mut(&mut s.cells).retain(|k, _| keep(k));
        let served = s.cells.clone();
        s.imported
            .retain(|k, _| used.contains(&k.1) && used.contains(&k.2) && !served.contains_key(k));
        s.sides.retain(|id, _| used.contains(id));
        s.draws
            .retain(|_, (m, v, _)| current.iter().any(|(n, cv)| n == m && cv == v));
        let reps: Vec<String> = s.reps.iter().map(|r| r.hash.to_hex()).collect();
        s.ties.retain(|(h, _, _), _| reps.contains(h));
        s.graphs.retain(|(h, _, _), _| reps.contains(h));
        s.graph_parts.retain(|(h, _, _), _| reps.contains(h));
        Ok(())
    }

    fn export_snapshot(&self, _dest: &Path, _models: Option<&[String]>) -> Result<SnapshotInfo> {
        Err(Error::Unsupported(
            "an in-memory catalog does not write bundles (they hold an SQLite catalog)".into(),
        ))
    }

    fn merge_snapshot(&mut self, _snapshot: &Path, _opts: MergeOptions) -> Result<MergeCounts> {
        Err(Error::Unsupported(
            "an in-memory catalog does not import bundles (they hold an SQLite catalog)".into(),
        ))
    }

    fn create_sweep(&mut self, spec: &str, label: &str, units: &[NewUnit]) -> Result<i64> {
        let now = self.now_ms()?;
        let mut s = self.state();
        let id = s.id();
        s.sweeps.push((
            SweepRow {
                id,
                label: label.into(),
                created_ms: now,
            },
            spec.into(),
        ));
        for (i, u) in units.iter().enumerate() {
            s.units.push(UnitRow {
                sweep: id,
                idx: i as i64,
                label: u.label.clone(),
                cells: u.cells,
                state: "pending".into(),
                worker: None,
                lease_until: None,
                started_ms: None,
                finished_ms: None,
                attempts: 0,
                rows: u.rows,
            });
        }
        s.unit_pairs.extend(units.iter().map(|u| UnitWork {
            x: u.x,
            y: u.y,
            x_layers: u.x_layers,
            rows: u.rows,
        }));
        Ok(id)
    }

    fn claim_unit(
        &mut self,
        sweep: Option<i64>,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<Unit>> {
        let now = self.now_ms()?;
        let mut s = self.state();
        let open = |u: &UnitRow| {
            sweep.is_none_or(|w| u.sweep == w)
                && (u.state == "pending"
                    || (u.state == "running" && u.lease_until.is_some_and(|t| t < now)))
        };
        let Some(i) = s.units.iter().position(open) else {
            return Ok(None);
        };
        // A pair unit waits while its sweep has a graph block not done.
        let of_sweep = s.units[i].sweep;
        if s.unit_pairs[i].rows.is_none()
            && s.units
                .iter()
                .zip(&s.unit_pairs)
                .any(|(u, w)| u.sweep == of_sweep && w.rows.is_some() && u.state != "done")
        {
            return Ok(None);
        }
        let u = &mut s.units[i];
        u.state = "running".into();
        u.worker = Some(worker.into());
        u.lease_until = Some(now + lease_ms);
        u.started_ms = Some(now);
        u.attempts += 1;
        let (sweep, idx, label, cells) = (u.sweep, u.idx, u.label.clone(), u.cells);
        let spec = s
            .sweeps
            .iter()
            .find(|(r, _)| r.id == sweep)
            .map(|(_, spec)| spec.clone())
            .unwrap_or_default();
        let UnitWork {
            x,
            y,
            x_layers,
            rows,
        } = s.unit_pairs[i];
        Ok(Some(Unit {
            sweep,
            idx,
            spec,
            x,
            y,
            label,
            cells,
            x_layers,
            rows,
        }))
    }

    fn renew_lease(&self, sweep: i64, idx: i64, worker: &str, lease_ms: i64) -> Result<bool> {
        let now = self.now_ms()?;
        let mut s = self.state();
        Ok(held(&mut s.units, sweep, idx, worker)
            .map(|u| u.lease_until = Some(now + lease_ms))
            .is_some())
    }

    fn finish_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
        let now = self.now_ms()?;
        let mut s = self.state();
        Ok(held(&mut s.units, sweep, idx, worker)
            .map(|u| {
                u.state = "done".into();
                u.finished_ms = Some(now);
                u.lease_until = None;
            })
            .is_some())
    }

    fn release_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
        let mut s = self.state();
        Ok(held(&mut s.units, sweep, idx, worker)
            .map(|u| {
                u.state = "pending".into();
                u.lease_until = None;
            })
            .is_some())
    }

    fn sweep_rows(&self) -> Result<(Vec<SweepRow>, Vec<UnitRow>)> {
        let s = self.state();
        Ok((
            s.sweeps.iter().map(|(r, _)| r.clone()).collect(),
            s.units.clone(),
        ))
    }

    fn now_ms(&self) -> Result<i64> {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| Error::Failed(format!("the clock is before 1970: {e}")))?;
        Ok(t.as_millis() as i64)
    }
}

/// The running unit `worker` holds, if it still does.
fn held<'a>(
    units: &'a mut [UnitRow],
    sweep: i64,
    idx: i64,
    worker: &str,
) -> Option<&'a mut UnitRow> {
    units.iter_mut().find(|u| {
        u.sweep == sweep
            && u.idx == idx
            && u.state == "running"
            && u.worker.as_deref() == Some(worker)
    })
}

/// Stores a pair's computed cells in `copy`, entering their keys in the dictionaries first
/// (a key id taken by another key is refused).
fn store(
    copy: &mut State,
    keys: &[MetricKey],
    x: CellSide,
    y: CellSide,
    cells: &[NewCell],
) -> Result<()> {
    for k in keys {
        let e = MetricEntry {
            id: k.id(),
            metric: k.metric.to_string(),
            version: k.version as i64,
            params: k.params.clone(),
        };
        if copy.metrics.entry(e.id).or_insert_with(|| e.clone()) != &e {
            return Err(collision(&format!("metric {}({})", k.metric, k.params)));
        }
    }
    for side in [&x, &y] {
        for ((h, p), &id) in side.hashes.iter().zip(side.preps).zip(side.ids) {
            let e = SideEntry {
                id,
                hash: h.to_hex(),
                prep: p.clone(),
            };
            if copy.sides.entry(id).or_insert_with(|| e.clone()) != &e {
                return Err(collision(&format!("blob {} prepared {p}", e.hash)));
            }
        }
    }
    let served = Arc::make_mut(&mut copy.cells);
    for &(mi, i, j, v, _) in cells {
        let [m, a, b] = stored_ids(&keys[mi], &x, &y, i, j);
        served.entry((m, a, b)).or_insert(v);
    }
    Ok(())
}

/// A reader over a snapshot of the served cells.
struct Reader(Arc<Cells>);

impl CellReader for Reader {
    fn scan(&mut self, m: i64, lo: i64, hi: i64, f: &mut dyn FnMut(i64, i64, f64)) -> Result<()> {
        for (&(_, x, y), &v) in self.0.range((m, lo, i64::MIN)..=(m, hi, i64::MAX)) {
            f(x, y, v);
        }
        Ok(())
    }
}

/// The row operations of one transaction, on a copy of the state.
struct Tx<'a>(&'a mut State);

impl CatalogTx for Tx<'_> {
    fn dataset(&mut self, name: &str) -> Result<Option<(DatasetId, usize)>> {
        Ok(self
            .0
            .datasets
            .iter()
            .find(|d| d.name == name)
            .map(|d| (d.id, d.n)))
    }

    fn insert_dataset(&mut self, name: &str, n: usize, desc: Option<&str>) -> Result<DatasetId> {
        if self.0.datasets.iter().any(|d| d.name == name) {
            return Err(Error::Conflict(format!("catalog: dataset {name} exists")));
        }
        let id = DatasetId(self.0.id());
        self.0.datasets.push(DatasetRow {
            id,
            name: name.to_string(),
            n,
            description: desc.map(str::to_string),
        });
        Ok(id)
    }

    fn insert_samples(&mut self, dataset: DatasetId, ids: &[String]) -> Result<()> {
        self.0.samples.insert(dataset, ids.to_vec());
        Ok(())
    }

    fn model(&mut self, name: &str) -> Result<Option<(ModelId, String)>> {
        Ok(self
            .0
            .models
            .iter()
            .find(|m| m.name == name)
            .map(|m| (m.id, m.modality.clone())))
    }

    fn insert_model(&mut self, name: &str, modality: &str, fam: Option<&str>) -> Result<ModelId> {
        if self.0.models.iter().any(|m| m.name == name) {
            return Err(Error::Conflict(format!("catalog: model {name} exists")));
        }
        let id = ModelId(self.0.id());
        self.0.models.push(ModelRow {
            id,
            name: name.to_string(),
            modality: modality.to_string(),
            family: fam.map(str::to_string),
            num_params: None,
        });
        Ok(id)
    }

    fn set_num_params(&mut self, model: ModelId, num_params: i64) -> Result<()> {
        if let Some(m) = self.0.models.iter_mut().find(|m| m.id == model) {
            m.num_params = Some(num_params);
        }
        Ok(())
    }

    fn fill_family(&mut self, model: ModelId, family: &str) -> Result<()> {
        if let Some(m) = self.0.models.iter_mut().find(|m| m.id == model) {
            m.family.get_or_insert_with(|| family.to_string());
        }
        Ok(())
    }

    fn checkpoint(&mut self, model: ModelId, name: &str) -> Result<Option<CheckpointId>> {
        Ok(self
            .0
            .checkpoints
            .iter()
            .find(|c| c.model == model && c.name == name)
            .map(|c| c.id))
    }

    fn insert_checkpoint(
        &mut self,
        m: ModelId,
        name: &str,
        step: Option<i64>,
    ) -> Result<CheckpointId> {
        let id = CheckpointId(self.0.id());
        self.0.checkpoints.push(CheckpointRow {
            id,
            model: m,
            name: name.to_string(),
            step,
            created_at: now(),
        });
        Ok(id)
    }

    fn fill_step(&mut self, checkpoint: CheckpointId, step: i64) -> Result<()> {
        if let Some(c) = self.0.checkpoints.iter_mut().find(|c| c.id == checkpoint) {
            c.step.get_or_insert(step);
        }
        Ok(())
    }

    fn insert_blob(&mut self, blob: &BlobRow) -> Result<()> {
        self.0
            .blobs
            .entry(blob.hash)
            .or_insert_with(|| blob.clone());
        Ok(())
    }

    fn rep_blob(&mut self, at: RepSlot) -> Result<Option<BlobHash>> {
        Ok(self
            .0
            .reps
            .iter()
            .find(|r| same_slot(r, at))
            .map(|r| r.hash))
    }

    fn insert_rep(&mut self, at: RepSlot, rep: NewRep) -> Result<()> {
        let hash = rep.blob;
        if !self.0.blobs.contains_key(&hash) {
            return Err(Error::Conflict(format!(
                "catalog: representation names blob {hash}, which has no row"
            )));
        }
        self.0.reps.push(RepRow {
            checkpoint: at.checkpoint,
            dataset: at.dataset,
            layer: at.layer,
            pool: at.pool.to_string(),
            hash,
            layout: Some(rep.layout.to_string()),
        });
        Ok(())
    }

    fn fill_layout(&mut self, at: RepSlot, layout: &str) -> Result<bool> {
        match self
            .0
            .reps
            .iter_mut()
            .find(|r| same_slot(r, at) && r.layout.is_none())
        {
            Some(r) => {
                r.layout = Some(layout.to_string());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn score(&mut self, checkpoint: CheckpointId, name: &str) -> Result<Option<ScoreValue>> {
        Ok(self.0.scores.get(&(checkpoint, name.to_string())).copied())
    }

    fn put_score(&mut self, checkpoint: CheckpointId, name: &str, s: ScoreValue) -> Result<()> {
        self.0.scores.insert((checkpoint, name.to_string()), s);
        Ok(())
    }

    fn put_meta(&mut self, checkpoint: CheckpointId, key: &str, value: &str) -> Result<bool> {
        let old = self
            .0
            .meta
            .insert((checkpoint, key.to_string()), value.to_string());
        Ok(old.as_deref() != Some(value))
    }
}

fn same_slot(r: &RepRow, at: RepSlot) -> bool {
    r.checkpoint == at.checkpoint
        && r.dataset == at.dataset
        && r.layer == at.layer
        && r.pool == at.pool
}
