//! The catalog: every row of metadata and every cached number (docs/design.md §1), behind one
//! interface.
//!
//! [`Catalog`] is what the rest of prh asks of a catalog, in its own terms (datasets, models,
//! checkpoints, representations, scores, cached cells), never in a database's. Writes that must
//! land together go through [`Catalog::transact`] and the row operations of [`CatalogTx`]; the
//! rules (what conflicts, what a re-ingest may change) live with the callers, once, and every
//! backend only stores. Implementations: [`SqliteCatalog`] (the default, `catalog.db`),
//! [`PgCatalog`] (PostgreSQL, shared by many machines) and [`MemoryCatalog`] (nothing on disk;
//! it exercises the seam in the tests). A dialect difference (upserts, returning ids,
//! snapshots, attaching a bundle) stays inside its implementation; the conformance suite
//! (`tests/conformance.rs`) runs the same contract on all three. Backend errors are classified
//! by kind where they are converted (docs/design.md §9).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::BlobHash;

mod keys;
pub mod memory;
pub mod postgres;
pub mod snapshot;
pub mod sqlite;
pub mod tables;

/// How [`Catalog::blob_guard`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Shared: writers that publish blobs and then name them in rows.
    Writer,
    /// Exclusive: garbage collection (and the undoing of a failed write).
    Collector,
}

/// A held blob guard; released when dropped.
pub struct BlobGuard(#[allow(dead_code)] Box<dyn Send>);

impl BlobGuard {
    /// Wraps whatever holds a backend's guard (dropping it releases the guard).
    pub fn new(holder: impl Send + 'static) -> Self {
        BlobGuard(Box::new(holder))
    }
}

pub use keys::{CachedCell, CellSide, MetricKey, NewCell, metric_id, side_id, side_ids};
pub(crate) use keys::{collision, layers_by_id, spread, stored_ids};
pub use memory::MemoryCatalog;
pub use postgres::PgCatalog;
pub use sqlite::{BUSY_TIMEOUT, MIGRATIONS, SqliteCatalog};

/// Declares a typed row id: a catalog's own number for a row, never mixed up with another
/// table's (or with a count) by the compiler.
macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

row_id!(
    /// A dataset's id in its catalog.
    DatasetId
);
row_id!(
    /// A model's id in its catalog.
    ModelId
);
row_id!(
    /// A checkpoint's id in its catalog.
    CheckpointId
);

/// A dataset row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Dataset {
    #[serde(skip)]
    pub id: DatasetId,
    pub name: String,
    pub n: usize,
    pub description: Option<String>,
    pub has_ids: bool,
}

/// A model row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Model {
    #[serde(skip)]
    pub id: ModelId,
    pub name: String,
    pub modality: String,
    pub family: Option<String>,
    pub num_params: Option<i64>,
}

/// A checkpoint row, with its model's name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkpoint {
    #[serde(skip)]
    pub id: CheckpointId,
    pub model: String,
    pub checkpoint: String,
    pub step: Option<i64>,
    pub created_at: String,
    /// Provenance given at ingest (`--meta KEY=VALUE`), by key.
    pub meta: BTreeMap<String, String>,
}

/// A representation with everything a listing shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rep {
    pub hash: BlobHash,
    pub model: String,
    pub checkpoint: String,
    pub dataset: String,
    pub layer: i64,
    pub pool: String,
    pub dtype: String,
    pub n: usize,
    pub d: usize,
    /// `stacked` or `layers` (how the file gave its layers); `None` if not recorded.
    pub layout: Option<String>,
    /// The checkpoint's id (not listed).
    #[serde(skip)]
    pub checkpoint_id: CheckpointId,
    /// The model's modality and family, the checkpoint's step, the dataset's id: for the
    /// query tables, not listed.
    #[serde(skip)]
    pub modality: String,
    #[serde(skip)]
    pub family: Option<String>,
    #[serde(skip)]
    pub step: Option<i64>,
    #[serde(skip)]
    pub dataset_id: DatasetId,
}

/// A score row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    pub model: String,
    pub checkpoint: String,
    pub name: String,
    pub value: f64,
    pub higher_is_better: Option<bool>,
    #[serde(skip)]
    pub checkpoint_id: CheckpointId,
}

/// Filters for [`Catalog::reps`].
#[derive(Debug, Clone, Default)]
pub struct RepFilter {
    /// Only this model's.
    pub model: Option<String>,
    /// Only this checkpoint's.
    pub checkpoint_id: Option<CheckpointId>,
    /// Only those on this dataset.
    pub dataset: Option<String>,
    /// Only those with this pooling.
    pub pool: Option<String>,
    /// Only blobs whose hash starts with these hex digits (any case).
    pub hash_prefix: Option<String>,
}

/// A blob row: the matrix a blob holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRow {
    pub hash: BlobHash,
    pub dtype: String,
    pub n: usize,
    pub d: usize,
    pub bytes: u64,
}

/// A blob row and one representation that uses it (`model @ checkpoint layer L`), if any.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub row: BlobRow,
    pub used_by: Option<String>,
}

impl StoredBlob {
    /// A blob as the SQL catalogs store its row: the hash as hex text, sizes as integers.
    /// `None` for a hash that is not a valid name (`integrity_check` reports those).
    pub(crate) fn from_sql(
        hash: &str,
        dtype: String,
        (n, d, bytes): (i64, i64, i64),
        used_by: Option<String>,
    ) -> Option<StoredBlob> {
        let row = BlobRow {
            hash: hash.parse().ok()?,
            dtype,
            n: n as usize,
            d: d as usize,
            bytes: bytes as u64,
        };
        Some(StoredBlob { row, used_by })
    }
}

/// Where a representation sits: checkpoint × dataset × layer × pool.
#[derive(Debug, Clone, Copy)]
pub struct RepSlot<'a> {
    pub checkpoint: CheckpointId,
    pub dataset: DatasetId,
    pub layer: usize,
    pub pool: &'a str,
}

/// A score's value and direction (`None`: not known).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreValue {
    pub value: f64,
    pub higher_is_better: Option<bool>,
}

/// What a representation holds: its blob, the file it came from, how that file gave its
/// layers (`stacked` or `layers`).
#[derive(Debug, Clone, Copy)]
pub struct NewRep<'a> {
    pub blob: BlobHash,
    pub source: &'a str,
    pub layout: &'a str,
}

/// The key of a cached sample of null or bootstrap draws.
#[derive(Debug, Clone, Copy)]
pub struct DrawKey<'a> {
    pub pair_key: &'a str,
    pub kind: &'a str,
    pub metric: &'a str,
    pub version: u32,
    pub params: &'a str,
    pub prep_x: &'a str,
    pub prep_y: &'a str,
    pub seed: u64,
}

/// An entry of the metric dictionary of the cell cache.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricEntry {
    pub id: i64,
    pub metric: String,
    pub version: i64,
    pub params: String,
}

/// An entry of the side dictionary of the cell cache (`hash` is 64 hex digits).
#[derive(Debug, Clone, PartialEq)]
pub struct SideEntry {
    pub id: i64,
    pub hash: String,
    pub prep: String,
}

/// The two tables of cached cells: served, or imported and waiting to be recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellTable {
    Served,
    Imported,
}

/// One cached cell's key (ids and content) and value.
#[derive(Debug, Clone)]
pub struct CellRow {
    pub ids: [i64; 3],
    pub hash_x: String,
    pub hash_y: String,
    pub metric: String,
    pub version: i64,
    pub params: String,
    pub prep_x: String,
    pub prep_y: String,
    pub value: f64,
}

/// What garbage collection would remove from the catalog.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Blob rows no representation references, with their sizes.
    pub unreferenced: Vec<(BlobHash, u64)>,
    /// Cached cells of a metric version this prh does not compute, or of a blob no
    /// representation names.
    pub stale_cells: usize,
    /// Cached draws of a metric version this prh does not compute.
    pub stale_draws: usize,
}

/// What a snapshot for a bundle holds.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    pub schema_version: usize,
    /// Every blob the snapshot's rows name, with its size, by hash.
    pub blobs: Vec<(BlobHash, u64)>,
    pub models: usize,
    pub representations: usize,
    pub cells: usize,
}

/// How a bundle's snapshot is merged.
pub struct MergeOptions<'a> {
    /// Serve all its cached cells and draws as they are.
    pub trust_cells: bool,
    /// The ids of the cells recomputed here and found equal (served from now on).
    pub verified: &'a [[i64; 3]],
    /// Names the bundle the other cells are quarantined under.
    pub origin: &'a str,
    /// When the merge is interrupted and rolled back.
    pub deadline: std::time::Instant,
    /// Given the blobs the snapshot names that this catalog lacks, before any row naming them
    /// is written; places them in the blob store and returns how many it placed.
    pub publish: &'a mut dyn FnMut(&[BlobHash]) -> Result<usize>,
}

/// What a merge added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MergeCounts {
    pub blobs_new: usize,
    pub blobs_present: usize,
    pub datasets_new: usize,
    pub models_new: usize,
    pub checkpoints_new: usize,
    pub representations_new: usize,
    pub scores_new: usize,
    /// Provenance entries (`--meta`) added to checkpoints.
    pub meta_new: usize,
    /// Cached cells now served: the recomputed sample, or all of them with --trust-cells.
    pub cells_new: usize,
    /// Cached cells held in `imported_cells` until `prh verify --recompute` checks them.
    pub cells_quarantined: usize,
    /// Cached null and bootstrap samples taken (only with --trust-cells).
    pub null_samples_new: usize,
}

/// A unit of a sweep split over workers: one model pair whose cells are missing.
#[derive(Debug, Clone)]
pub struct NewUnit {
    pub x: CheckpointId,
    pub y: CheckpointId,
    /// `x model @ checkpoint × y model @ checkpoint`, for `prh status`.
    pub label: String,
    /// Missing cells (layer pairs × metrics) when the sweep was planned.
    pub cells: i64,
    /// Only these x layers (stored layer indices, inclusive) against every y layer; `None`:
    /// the whole pair.
    pub x_layers: Option<(i64, i64)>,
    /// A graph block: the kNN graph of x's layer `x_layers.0` over these rows (end excluded),
    /// no cells (y = x). Claimed before every pair unit of its sweep.
    pub rows: Option<(i64, i64)>,
}

/// A unit's block of x layers from its two columns (both set, or neither).
pub(crate) fn block(from: Option<i64>, to: Option<i64>) -> Option<(i64, i64)> {
    from.zip(to)
}

/// A stored part of a kNN graph: its rows (start, end excluded) and its bytes
/// (`metrics::graph::encode_part`).
pub type GraphPart = ((i64, i64), Vec<u8>);

/// A unit a worker has claimed, with its sweep's spec (JSON).
#[derive(Debug, Clone)]
pub struct Unit {
    pub sweep: i64,
    pub idx: i64,
    pub spec: String,
    pub x: CheckpointId,
    pub y: CheckpointId,
    pub label: String,
    pub cells: i64,
    /// See [`NewUnit::x_layers`].
    pub x_layers: Option<(i64, i64)>,
    /// See [`NewUnit::rows`].
    pub rows: Option<(i64, i64)>,
}

/// A unit as `prh status` sees it (times in Unix milliseconds of the catalog's clock).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRow {
    pub sweep: i64,
    pub idx: i64,
    pub label: String,
    pub cells: i64,
    pub state: String,
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub attempts: i64,
    /// A graph block's rows (end excluded); `None` for a pair unit.
    pub rows: Option<(i64, i64)>,
}

/// A sweep split over workers.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    pub id: i64,
    pub label: String,
    pub created_ms: i64,
}

/// Reads cached cells on its own connection, so that several scan in parallel.
pub trait CellReader: Send {
    /// Calls `f(x, y, value)` for every served cell of metric id `m` whose x side id is in
    /// `lo..=hi`.
    fn scan(&mut self, m: i64, lo: i64, hi: i64, f: &mut dyn FnMut(i64, i64, f64)) -> Result<()>;
}

/// Row operations inside one transaction ([`Catalog::transact`]). Ids are the catalog's own.
pub trait CatalogTx {
    /// The dataset called `name`: its id and n.
    fn dataset(&mut self, name: &str) -> Result<Option<(DatasetId, usize)>>;
    fn insert_dataset(&mut self, name: &str, n: usize, desc: Option<&str>) -> Result<DatasetId>;
    /// Records a dataset's ordered sample ids.
    fn insert_samples(&mut self, dataset: DatasetId, ids: &[String]) -> Result<()>;
    /// The model called `name`: its id and modality.
    fn model(&mut self, name: &str) -> Result<Option<(ModelId, String)>>;
    fn insert_model(&mut self, name: &str, modality: &str, fam: Option<&str>) -> Result<ModelId>;
    fn set_num_params(&mut self, model: ModelId, num_params: i64) -> Result<()>;
    /// Sets a model's family where none is recorded.
    fn fill_family(&mut self, model: ModelId, family: &str) -> Result<()>;
    fn checkpoint(&mut self, model: ModelId, name: &str) -> Result<Option<CheckpointId>>;
    fn insert_checkpoint(
        &mut self,
        m: ModelId,
        name: &str,
        step: Option<i64>,
    ) -> Result<CheckpointId>;
    /// Sets a checkpoint's step where none is recorded.
    fn fill_step(&mut self, checkpoint: CheckpointId, step: i64) -> Result<()>;
    /// Records a blob (kept as it is when already recorded).
    fn insert_blob(&mut self, blob: &BlobRow) -> Result<()>;
    /// The blob a representation slot holds (64 hex digits).
    fn rep_blob(&mut self, at: RepSlot) -> Result<Option<BlobHash>>;
    fn insert_rep(&mut self, at: RepSlot, rep: NewRep) -> Result<()>;
    /// Records a representation's layout where none is; true when it did.
    fn fill_layout(&mut self, at: RepSlot, layout: &str) -> Result<bool>;
    /// A checkpoint's score: value and direction.
    fn score(&mut self, checkpoint: CheckpointId, name: &str) -> Result<Option<ScoreValue>>;
    fn put_score(&mut self, checkpoint: CheckpointId, name: &str, s: ScoreValue) -> Result<()>;
    /// Sets a provenance entry; true when the stored value changed.
    fn put_meta(&mut self, checkpoint: CheckpointId, key: &str, value: &str) -> Result<bool>;
}

/// What prh asks of a catalog. See the module documentation.
pub trait Catalog: Send {
    /// The schema version (number of migrations applied).
    fn schema_version(&self) -> Result<usize>;

    // ----- datasets, models, checkpoints, representations, blobs, scores -----

    /// The dataset called `name`, if any.
    fn dataset(&self, name: &str) -> Result<Option<Dataset>>;
    /// All datasets, by name.
    fn datasets(&self) -> Result<Vec<Dataset>>;
    /// Sample ids of a dataset, in order (empty when it has none).
    fn dataset_ids(&self, dataset: DatasetId) -> Result<Vec<String>>;
    /// The model called `name`, if any.
    fn model(&self, name: &str) -> Result<Option<Model>>;
    /// All models, by name.
    fn models(&self) -> Result<Vec<Model>>;
    /// Checkpoints (with their provenance), optionally of one model, ordered by model, then
    /// step (none last), then creation.
    fn checkpoints(&self, model: Option<&str>) -> Result<Vec<Checkpoint>>;
    /// Every checkpoint's provenance, by checkpoint id.
    fn checkpoint_meta(&self) -> Result<HashMap<CheckpointId, BTreeMap<String, String>>>;
    /// Representations matching a filter, ordered by model, checkpoint (as
    /// [`Catalog::checkpoints`]), dataset, pool, layer.
    fn reps(&self, filter: &RepFilter) -> Result<Vec<Rep>>;
    /// Every blob row, by hash, with a representation that uses it.
    fn blobs(&self) -> Result<Vec<StoredBlob>>;
    /// True when a blob row or a representation names `hash`.
    fn blob_named(&self, hash: &BlobHash) -> Result<bool>;
    /// Scores, optionally of one model, ordered as checkpoints, then by name.
    fn scores(&self, model: Option<&str>) -> Result<Vec<Score>>;

    /// Runs `f` in one transaction: every row it writes lands, or (when it fails) none. A
    /// writer waits for another process's transaction rather than failing.
    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn CatalogTx) -> Result<()>) -> Result<()>;

    // ----- the cell cache (docs/design.md §6) -----

    /// The cached cells of the pair `x` × `y` for one metric, as (x layer, y layer, value), in
    /// one round trip.
    fn cached_cells(&self, m: &MetricKey, x: CellSide, y: CellSide) -> Result<Vec<CachedCell>>;
    /// Stores computed cells of the pair `x` × `y`, for any of the metrics `keys` (a cell names
    /// its metric by index), in one transaction. A cell another process stored meanwhile is
    /// kept (same key, same value by construction).
    fn store_cells(
        &mut self,
        keys: &[MetricKey],
        x: CellSide,
        y: CellSide,
        cells: &[NewCell],
    ) -> Result<()>;
    /// The metric dictionary.
    fn cell_metrics(&self) -> Result<Vec<MetricEntry>>;
    /// The side dictionary.
    fn cell_sides(&self) -> Result<Vec<SideEntry>>;
    /// How many cells the cache holds: (served, imported and waiting to be recomputed).
    fn cell_counts(&self) -> Result<(u64, u64)>;
    /// `n` readers of the served cells, each on its own connection.
    fn cell_readers(&self, n: usize) -> Result<Vec<Box<dyn CellReader>>>;
    /// Every row of one cell table with its key spelled out.
    fn cell_rows(&self, table: CellTable) -> Result<Vec<CellRow>>;
    /// Moves an imported cell (recomputed and found equal) into the served table.
    fn promote_cell(&mut self, ids: [i64; 3]) -> Result<()>;

    /// The cached clamp thresholds at `q` of layer sets (each keyed by BLAKE3 of its layer
    /// hashes), in the order of `keys`, in one round trip.
    fn clamp_thresholds_at(&self, keys: &[String], q: f64) -> Result<Vec<Option<f64>>>;
    /// Records a clamp threshold (a first one stays).
    fn put_clamp_threshold(&self, layers_key: &str, q: f64, threshold: f64) -> Result<()>;
    /// Every cached clamp threshold: (layers key, q, threshold).
    fn clamp_thresholds(&self) -> Result<Vec<(String, f64, f64)>>;
    /// The rows of a blob prepared as `prep` whose k-th neighbour ties, as a bit set.
    fn knn_ties(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>>;
    /// Records a blob's tied rows (a first record stays).
    fn put_knn_ties(&self, hash: &BlobHash, prep: &str, k: usize, rows: &[u8]) -> Result<()>;
    /// The (blob, prep key, k) of every stored kNN graph.
    fn knn_graph_keys(&self) -> Result<Vec<(BlobHash, String, usize)>>;
    /// The stored kNN graph of a blob prepared as `prep`, for k (`metrics::graph::encode`).
    fn knn_graph(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>>;
    /// Records a blob's kNN graph for k, replacing one stored before (a damaged record is
    /// recomputed and written again; two writers write the same bytes).
    fn put_knn_graph(&self, hash: &BlobHash, prep: &str, k: usize, graph: &[u8]) -> Result<()>;
    /// Records the part of a blob's kNN graph for k that covers `rows` (start, end excluded),
    /// searched by a graph-block unit (a part stored before is replaced).
    fn put_knn_graph_part(
        &self,
        hash: &BlobHash,
        prep: &str,
        k: usize,
        rows: (i64, i64),
        part: &[u8],
    ) -> Result<()>;
    /// The stored parts of a blob's kNN graph for k, by first row.
    fn knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Vec<GraphPart>>;
    /// Drops the parts of a blob's kNN graph for k (merged into the graph).
    fn drop_knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<()>;
    /// A cached sample of draws (little-endian f64s).
    fn draws(&self, key: &DrawKey) -> Result<Option<Vec<u8>>>;
    /// Records a sample of draws; a longer one already stored stays.
    fn put_draws(&self, key: &DrawKey, vals: &[u8]) -> Result<()>;

    // ----- upkeep and sharing -----

    /// Takes the blob guard of everything that shares this catalog (every machine, every
    /// process), held until the returned value is dropped: writers (ingest, import) hold it
    /// [`GuardMode::Writer`] from looking at which blobs exist until their rows are committed;
    /// gc holds it [`GuardMode::Collector`] while it decides what is unreferenced and deletes
    /// it. Writers run side by side; a collector waits for them and they for it. The guard is
    /// released when its holder dies (a closed file lock, a closed database session).
    fn blob_guard(&self, mode: GuardMode) -> Result<BlobGuard>;
    /// The catalog's own consistency check: `None` when sound, else what it found.
    fn integrity_check(&self) -> Result<Option<String>>;
    /// What garbage collection would remove, given the metric versions this prh computes.
    fn gc_plan(&self, current: &[(&str, u32)]) -> Result<GcPlan>;
    /// Removes what [`Catalog::gc_plan`] found (the blob rows `unreferenced`, stale cache rows
    /// and the dictionary entries of blobs no representation names) in one transaction.
    fn gc_apply(&mut self, current: &[(&str, u32)], unreferenced: &[BlobHash]) -> Result<()>;
    /// Writes a consistent snapshot of the catalog (or of some models and what they need) to
    /// `dest`, as a bundle's `catalog.db` (an SQLite catalog, whatever this backend is).
    fn export_snapshot(&self, dest: &Path, models: Option<&[String]>) -> Result<SnapshotInfo>;
    /// Merges a checked bundle snapshot in one transaction, refusing conflicts.
    fn merge_snapshot(&mut self, snapshot: &Path, opts: MergeOptions) -> Result<MergeCounts>;
    /// Writes a consistent SQLite copy of the whole catalog to `dest` for a process that
    /// computes on it without writing here (a shard, crate::shard). By default a bundle's
    /// snapshot (without sweeps and kNN graphs); the SQLite catalog copies everything.
    fn working_copy(&self, dest: &Path) -> Result<()> {
        self.export_snapshot(dest, None).map(drop)
    }

    // ----- sweeps split over workers (src/workers.rs) -----

    /// Enters a sweep and its units (all pending); its id.
    fn create_sweep(&mut self, spec: &str, label: &str, units: &[NewUnit]) -> Result<i64>;
    /// Claims the first unit (of `sweep`, or of any sweep) that is pending or whose lease ran
    /// out, for `worker`, leased for `lease_ms`: one worker gets it however many ask at once.
    /// A sweep's pair units wait until its graph blocks are done (they need the graphs):
    /// while one is not, the claim finds nothing in that sweep.
    fn claim_unit(
        &mut self,
        sweep: Option<i64>,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<Unit>>;
    /// Extends `worker`'s lease on a unit it still holds; false when it no longer does.
    fn renew_lease(&self, sweep: i64, idx: i64, worker: &str, lease_ms: i64) -> Result<bool>;
    /// Marks a unit `worker` holds done; false when it no longer held it.
    fn finish_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool>;
    /// Gives a unit `worker` holds back unfinished, for any worker to claim at once (a worker
    /// told to stop); false when it no longer held it.
    fn release_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool>;
    /// Every sweep and unit, oldest first.
    fn sweep_rows(&self) -> Result<(Vec<SweepRow>, Vec<UnitRow>)>;
    /// The catalog's clock, in Unix milliseconds (leases are judged by it).
    fn now_ms(&self) -> Result<i64>;
}

impl dyn Catalog + '_ {
    /// [`Catalog::transact`] for a closure that returns a value.
    pub fn write<T>(&mut self, f: impl FnOnce(&mut dyn CatalogTx) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.transact(&mut |tx| {
            let f = f
                .take()
                .ok_or_else(|| Error::Internal("a transaction body ran twice".into()))?;
            out = Some(f(tx)?);
            Ok(())
        })?;
        out.ok_or_else(|| Error::Internal("a transaction body did not run".into()))
    }

    /// A model's checkpoint by name.
    pub fn checkpoint(&self, model: &str, name: &str) -> Result<Option<Checkpoint>> {
        Ok(self
            .checkpoints(Some(model))?
            .into_iter()
            .find(|c| c.checkpoint == name))
    }

    /// A model's latest checkpoint: the highest step, else the most recently created.
    pub fn latest_checkpoint(&self, model: &str) -> Result<Option<Checkpoint>> {
        let mut all = self.checkpoints(Some(model))?;
        all.sort_by_key(|c| (c.step.unwrap_or(i64::MIN), c.id));
        Ok(all.pop())
    }

    /// Every blob hash the catalog knows (whether referenced or not).
    pub fn blob_hashes(&self) -> Result<Vec<BlobHash>> {
        Ok(self.blobs()?.into_iter().map(|b| b.row.hash).collect())
    }
}

/// The order of checkpoints in every listing: model name, then step with none last, then id.
pub(crate) fn checkpoint_order(
    model: &str,
    step: Option<i64>,
    id: CheckpointId,
) -> (String, bool, i64, CheckpointId) {
    (model.to_string(), step.is_none(), step.unwrap_or(0), id)
}
