//! The SQLite catalog (`catalog.db`), the default backend of [`Catalog`].
//!
//! Opened in WAL mode with foreign keys on and a busy timeout, so several `prh` processes can
//! share one registry. The schema comes from the numbered files in `migrations/sqlite/`,
//! embedded in the binary and applied in order, each in its own transaction; `PRAGMA
//! user_version` records how many have been applied. A shipped migration is never edited.
//! Every rusqlite type and call of prh lives in this module and its children.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, TransactionBehavior, params};

use super::{
    BlobRow, CachedCell, Catalog, CatalogTx, CellReader, CellRow, CellSide, CellTable, Checkpoint,
    CheckpointId, Dataset, DatasetId, DrawKey, GcPlan, GraphPart, MergeCounts, MergeOptions,
    MetricEntry, MetricKey, Model, ModelId, NewCell, NewRep, NewUnit, Rep, RepFilter, RepSlot,
    Score, ScoreValue, SideEntry, SnapshotInfo, StoredBlob, SweepRow, Unit, UnitRow,
};
use crate::error::{Error, Result};
use crate::store::BlobHash;

pub(crate) mod cells;
mod sweeps;
mod upkeep;

pub(crate) use cells::register_functions;

/// Typed ids are stored as SQLite integers.
macro_rules! sql_id {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.0))
            }
        }

        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(v).map(Self)
            }
        }
    )*};
}

sql_id!(DatasetId, ModelId, CheckpointId);

/// Blob hashes are stored as 64 lower-case hex digits.
impl ToSql for BlobHash {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_hex()))
    }
}

impl FromSql for BlobHash {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map_err(|e: Error| FromSqlError::Other(e.to_string().into()))
    }
}

impl From<rusqlite::Error> for Error {
    /// SQLite's error with its kind: busy or locked is [`Error::Unavailable`] (another
    /// process holds the catalog; retrying can succeed), a row that clashes with another (unique,
    /// primary or foreign key) a conflict, a CHECK or NOT NULL violation a bug (prh wrote a value
    /// its own schema forbids), a damaged file corrupt, the rest (a trigger's refusal, a full
    /// disk) a permanent catalog failure.
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        use rusqlite::ffi;
        let msg = format!("catalog: {e}");
        let extended = match &e {
            rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
            _ => 0,
        };
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => Error::Unavailable(msg),
            Some(C::ConstraintViolation) => match extended {
                ffi::SQLITE_CONSTRAINT_UNIQUE
                | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                | ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Error::Conflict(msg),
                ffi::SQLITE_CONSTRAINT_CHECK | ffi::SQLITE_CONSTRAINT_NOTNULL => {
                    Error::Internal(msg)
                }
                _ => Error::Catalog(e.to_string()),
            },
            Some(C::DatabaseCorrupt | C::NotADatabase) => Error::Corrupt(msg),
            _ => Error::Catalog(e.to_string()),
        }
    }
}

/// The migrations, in order. Index + 1 is the schema version each one produces.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        "0002_cache",
        include_str!("../../migrations/sqlite/0002_cache.sql"),
    ),
    (
        "0003_nulls",
        include_str!("../../migrations/sqlite/0003_nulls.sql"),
    ),
    (
        "0004_imported_cells",
        include_str!("../../migrations/sqlite/0004_imported_cells.sql"),
    ),
    (
        "0005_checkpoint_meta",
        include_str!("../../migrations/sqlite/0005_checkpoint_meta.sql"),
    ),
    (
        "0006_layout",
        include_str!("../../migrations/sqlite/0006_layout.sql"),
    ),
    (
        "0007_knn_ties",
        include_str!("../../migrations/sqlite/0007_knn_ties.sql"),
    ),
    (
        "0008_compact_cells",
        include_str!("../../migrations/sqlite/0008_compact_cells.sql"),
    ),
    (
        "0009_sweeps",
        include_str!("../../migrations/sqlite/0009_sweeps.sql"),
    ),
    (
        "0010_knn_graphs",
        include_str!("../../migrations/sqlite/0010_knn_graphs.sql"),
    ),
    (
        "0011_unit_blocks",
        include_str!("../../migrations/sqlite/0011_unit_blocks.sql"),
    ),
    (
        "0012_graph_blocks",
        include_str!("../../migrations/sqlite/0012_graph_blocks.sql"),
    ),
];

/// How long a writer waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to `catalog.db`.
pub struct SqliteCatalog {
    pub(crate) conn: Connection,
}

impl SqliteCatalog {
    /// Creates a catalog (or opens the prh catalog already there) and brings its schema up to
    /// date. Only `prh init` creates; an existing file that is not a prh catalog is refused.
    pub fn create(path: &Path) -> Result<Self> {
        let empty = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        if empty {
            Self::connect(Connection::open(path)?)
        } else {
            Self::open(path)
        }
    }

    /// Opens an existing prh catalog and brings its schema up to date. A missing file, an empty
    /// one, or a database that is not a prh catalog is refused and left untouched.
    pub fn open(path: &Path) -> Result<Self> {
        use rusqlite::OpenFlags;
        let not_prh = |why: &str| {
            Error::Invalid(format!(
                "{} is not a prh catalog ({why}); `prh init` creates a registry, and an existing one is never overwritten",
                path.display()
            ))
        };
        match std::fs::metadata(path) {
            Err(e) => return Err(Error::io(path, e)),
            Ok(m) if !m.is_file() => return Err(not_prh("not a file")),
            Ok(m) if m.len() == 0 => return Err(not_prh("the file is empty")),
            Ok(_) => {}
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|_| not_prh("not an SQLite database"))?;
        let has_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('datasets', 'models', 'checkpoints', 'blobs', 'representations', 'scores')",
                [],
                |r| r.get(0),
            )
            .map_err(|_| not_prh("not an SQLite database"))?;
        if version < 1 || has_tables != 6 {
            return Err(not_prh("no prh schema in it"));
        }
        Self::connect(conn)
    }

    fn connect(conn: Connection) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Read big scans (the cell cache) through a memory map instead of read() per page.
        conn.pragma_update(None, "mmap_size", 1i64 << 34)?;
        register_functions(&conn)?;
        let mut cat = SqliteCatalog { conn };
        cat.migrate()?;
        Ok(cat)
    }

    fn migrate(&mut self) -> Result<()> {
        let current = self.schema_version()?;
        if current > MIGRATIONS.len() {
            return Err(Error::Unsupported(format!(
                "catalog schema version {current} is newer than this prh understands ({}); upgrade prh",
                MIGRATIONS.len()
            )));
        }
        for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have migrated while we waited for the lock.
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if v as usize > i {
                continue;
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Runs `f` inside an IMMEDIATE transaction (takes the write lock up front, so concurrent
    /// writers queue on the busy timeout instead of failing on lock upgrade).
    fn write<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// The columns of a draw key, in table order.
fn draw_key(k: &DrawKey) -> Vec<Value> {
    let text = |s: &str| Value::Text(s.to_string());
    vec![
        text(k.pair_key),
        text(k.kind),
        text(k.metric),
        Value::Integer(k.version.into()),
        text(k.params),
        text(k.prep_x),
        text(k.prep_y),
        Value::Integer(k.seed as i64),
    ]
}

/// SQL that is true when `column` holds a hash as prh writes it: 64 lower-case hex digits.
fn is_hash(column: &str) -> String {
    format!(
        "(typeof({column}) = 'text' AND length({column}) = 64 AND {column} NOT GLOB '*[^0-9a-f]*')"
    )
}

/// A catalog file opened read-only, for scans beside the main connection.
fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 34)?;
    Ok(conn)
}

const DATASETS: &str = "SELECT id, name, n, description,
        EXISTS(SELECT 1 FROM dataset_samples s WHERE s.dataset_id = d.id)
     FROM datasets d";

impl Catalog for SqliteCatalog {
    /// A file lock on `lock` beside the catalog file (`<registry>/lock` for a registry's own
    /// catalog): every process that opens this catalog file takes the same one.
    fn blob_guard(&self, mode: super::GuardMode) -> Result<super::BlobGuard> {
        let path = self.conn.path().map(Path::new).unwrap_or(Path::new(""));
        let dir = path.parent().unwrap_or(Path::new("."));
        let lock = match mode {
            super::GuardMode::Writer => crate::lock::RegistryLock::shared(dir)?,
            super::GuardMode::Collector => crate::lock::RegistryLock::exclusive(dir)?,
        };
        Ok(super::BlobGuard::new(lock))
    }

    fn schema_version(&self) -> Result<usize> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(v as usize)
    }

    fn dataset(&self, name: &str) -> Result<Option<Dataset>> {
        Ok(self
            .conn
            .query_row(&format!("{DATASETS} WHERE name = ?1"), [name], dataset_row)
            .optional()?)
    }

    fn datasets(&self) -> Result<Vec<Dataset>> {
        let mut st = self.conn.prepare(&format!("{DATASETS} ORDER BY name"))?;
        let rows = st.query_map([], dataset_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn dataset_ids(&self, dataset: DatasetId) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT sample_id FROM dataset_samples WHERE dataset_id = ?1 ORDER BY idx")?;
        let rows = st.query_map([dataset], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn model(&self, name: &str) -> Result<Option<Model>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, modality, family, num_params FROM models WHERE name = ?1",
                [name],
                model_row,
            )
            .optional()?)
    }

    fn models(&self) -> Result<Vec<Model>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, modality, family, num_params FROM models ORDER BY name")?;
        let rows = st.query_map([], model_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn checkpoints(&self, model: Option<&str>) -> Result<Vec<Checkpoint>> {
        let mut st = self.conn.prepare(
            "SELECT c.id, m.name, c.name, c.step, c.created_at
             FROM checkpoints c JOIN models m ON m.id = c.model_id
             WHERE ?1 IS NULL OR m.name = ?1
             ORDER BY m.name, c.step IS NULL, c.step, c.id",
        )?;
        let rows = st.query_map([model], |r| {
            Ok(Checkpoint {
                id: r.get(0)?,
                model: r.get(1)?,
                checkpoint: r.get(2)?,
                step: r.get(3)?,
                created_at: r.get(4)?,
                meta: Default::default(),
            })
        })?;
        let mut out: Vec<Checkpoint> = rows.collect::<rusqlite::Result<_>>()?;
        let mut meta = self.checkpoint_meta()?;
        for c in &mut out {
            c.meta = meta.remove(&c.id).unwrap_or_default();
        }
        Ok(out)
    }

    fn checkpoint_meta(&self) -> Result<HashMap<CheckpointId, BTreeMap<String, String>>> {
        let mut st = self
            .conn
            .prepare("SELECT checkpoint_id, key, value FROM checkpoint_meta")?;
        let mut out: HashMap<CheckpointId, BTreeMap<String, String>> = HashMap::new();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            out.entry(r.get(0)?)
                .or_default()
                .insert(r.get(1)?, r.get(2)?);
        }
        Ok(out)
    }

    fn reps(&self, f: &RepFilter) -> Result<Vec<Rep>> {
        let mut st = self.conn.prepare(
            "SELECT r.blob_hash, m.name, c.name, ds.name, r.layer, r.pool, b.dtype, b.n, b.d,
                    c.id, m.modality, r.layout, m.family, c.step, ds.id
             FROM representations r
             JOIN checkpoints c ON c.id = r.checkpoint_id
             JOIN models m ON m.id = c.model_id
             JOIN datasets ds ON ds.id = r.dataset_id
             JOIN blobs b ON b.hash = r.blob_hash
             WHERE (?1 IS NULL OR m.name = ?1)
               AND (?2 IS NULL OR c.id = ?2)
               AND (?3 IS NULL OR ds.name = ?3)
               AND (?4 IS NULL OR r.pool = ?4)
               AND (?5 IS NULL OR r.blob_hash LIKE ?5 || '%')
             ORDER BY m.name, c.step IS NULL, c.step, c.id, ds.name, r.pool, r.layer",
        )?;
        let rows = st.query_map(
            params![
                f.model,
                f.checkpoint_id,
                f.dataset,
                f.pool,
                f.hash_prefix.as_ref().map(|s| s.to_ascii_lowercase())
            ],
            |r| {
                Ok(Rep {
                    hash: r.get(0)?,
                    model: r.get(1)?,
                    checkpoint: r.get(2)?,
                    dataset: r.get(3)?,
                    layer: r.get(4)?,
                    pool: r.get(5)?,
                    dtype: r.get(6)?,
                    n: r.get::<_, i64>(7)? as usize,
                    d: r.get::<_, i64>(8)? as usize,
                    checkpoint_id: r.get(9)?,
                    modality: r.get(10)?,
                    layout: r.get(11)?,
                    family: r.get(12)?,
                    step: r.get(13)?,
                    dataset_id: r.get(14)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn blobs(&self) -> Result<Vec<StoredBlob>> {
        let mut st = self.conn.prepare(
            "SELECT b.hash, b.dtype, b.n, b.d, b.bytes,
                    (SELECT m.name || ' @ ' || c.name || ' layer ' || r.layer FROM representations r
                     JOIN checkpoints c ON c.id = r.checkpoint_id JOIN models m ON m.id = c.model_id
                     WHERE r.blob_hash = b.hash LIMIT 1)
             FROM blobs b ORDER BY b.hash",
        )?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let sizes = (r.get(2)?, r.get(3)?, r.get(4)?);
            let hash: String = r.get(0)?;
            out.extend(StoredBlob::from_sql(&hash, r.get(1)?, sizes, r.get(5)?));
        }
        Ok(out)
    }

    fn blob_named(&self, hash: &BlobHash) -> Result<bool> {
        let named: i64 = self.conn.query_row(
            "SELECT (SELECT count(*) FROM blobs WHERE hash = ?1)
                  + (SELECT count(*) FROM representations WHERE blob_hash = ?1)",
            [hash.to_hex()],
            |r| r.get(0),
        )?;
        Ok(named > 0)
    }

    fn scores(&self, model: Option<&str>) -> Result<Vec<Score>> {
        let mut st = self.conn.prepare(
            "SELECT m.name, c.name, s.name, s.value, s.higher_is_better, c.id
             FROM scores s JOIN checkpoints c ON c.id = s.checkpoint_id
             JOIN models m ON m.id = c.model_id
             WHERE ?1 IS NULL OR m.name = ?1
             ORDER BY m.name, c.step IS NULL, c.step, c.id, s.name",
        )?;
        let rows = st.query_map([model], |r| {
            Ok(Score {
                model: r.get(0)?,
                checkpoint: r.get(1)?,
                name: r.get(2)?,
                value: r.get(3)?,
                higher_is_better: r.get::<_, Option<i64>>(4)?.map(|v| v != 0),
                checkpoint_id: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn CatalogTx) -> Result<()>) -> Result<()> {
        self.write(|tx| f(&mut Tx(tx)))
    }

    fn cached_cells(&self, m: &MetricKey, x: CellSide, y: CellSide) -> Result<Vec<CachedCell>> {
        cells::cached(&self.conn, m, x, y)
    }

    fn store_cells(
        &mut self,
        keys: &[MetricKey],
        x: CellSide,
        y: CellSide,
        new: &[NewCell],
    ) -> Result<()> {
        self.write(|tx| cells::store(tx, keys, x, y, new))
    }

    fn cell_metrics(&self) -> Result<Vec<MetricEntry>> {
        let mut st = self
            .conn
            .prepare("SELECT id, metric, version, params FROM cell_metrics")?;
        let rows = st.query_map([], |r| {
            Ok(MetricEntry {
                id: r.get(0)?,
                metric: r.get(1)?,
                version: r.get(2)?,
                params: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn cell_counts(&self) -> Result<(u64, u64)> {
        let (served, imported): (i64, i64) = self.conn.query_row(
            "SELECT (SELECT count(*) FROM cells), (SELECT count(*) FROM imported_cells)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((served as u64, imported as u64))
    }

    fn cell_sides(&self) -> Result<Vec<SideEntry>> {
        let mut st = self.conn.prepare("SELECT id, hash, prep FROM cell_sides")?;
        let rows = st.query_map([], |r| {
            Ok(SideEntry {
                id: r.get(0)?,
                hash: r.get(1)?,
                prep: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn cell_readers(&self, n: usize) -> Result<Vec<Box<dyn CellReader>>> {
        let path = self.path()?;
        (0..n)
            .map(|_| Ok(Box::new(Reader(open_reader(&path)?)) as Box<dyn CellReader>))
            .collect()
    }

    fn cell_rows(&self, table: CellTable) -> Result<Vec<CellRow>> {
        Ok(cells::rows(&self.conn, table)?)
    }

    fn promote_cell(&mut self, ids: [i64; 3]) -> Result<()> {
        self.write(|tx| {
            let cond = "m = ?1 AND x = ?2 AND y = ?3";
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO cells (m, x, y, value, micros, computed_at)
                     SELECT m, x, y, value, micros, computed_at FROM imported_cells WHERE {cond}"
                ),
                ids,
            )?;
            tx.execute(&format!("DELETE FROM imported_cells WHERE {cond}"), ids)?;
            Ok(())
        })
    }

    fn clamp_thresholds_at(&self, keys: &[String], q: f64) -> Result<Vec<Option<f64>>> {
        let mut st = self.conn.prepare_cached(
            "SELECT layers_key, threshold FROM clamp_thresholds
             WHERE q = ?1 AND layers_key IN (SELECT value FROM json_each(?2))",
        )?;
        let list = serde_json::to_string(keys).expect("strings serialise");
        let found: HashMap<String, f64> = st
            .query_map(params![q, list], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }

    fn put_clamp_threshold(&self, layers_key: &str, q: f64, threshold: f64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO clamp_thresholds (layers_key, q, threshold) VALUES (?1, ?2, ?3)",
            params![layers_key, q, threshold],
        )?;
        Ok(())
    }

    fn clamp_thresholds(&self) -> Result<Vec<(String, f64, f64)>> {
        let mut st = self
            .conn
            .prepare("SELECT layers_key, q, threshold FROM clamp_thresholds")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn knn_ties(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT rows FROM knn_ties WHERE hash = ?1 AND prep = ?2 AND k = ?3",
                params![hash.to_hex(), prep, k as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn put_knn_ties(&self, hash: &BlobHash, prep: &str, k: usize, rows: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO knn_ties (hash, prep, k, rows) VALUES (?1, ?2, ?3, ?4)",
            params![hash.to_hex(), prep, k as i64, rows],
        )?;
        Ok(())
    }

    fn knn_graph_keys(&self) -> Result<Vec<(BlobHash, String, usize)>> {
        let mut st = self.conn.prepare("SELECT hash, prep, k FROM knn_graphs")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (h, p, k) = r?;
            out.push((h.parse()?, p, k as usize));
        }
        Ok(out)
    }

    fn knn_graph(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT graph FROM knn_graphs WHERE hash = ?1 AND prep = ?2 AND k = ?3",
                params![hash.to_hex(), prep, k as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn put_knn_graph(&self, hash: &BlobHash, prep: &str, k: usize, graph: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO knn_graphs (hash, prep, k, graph) VALUES (?1, ?2, ?3, ?4)",
            params![hash.to_hex(), prep, k as i64, graph],
        )?;
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
        self.conn.execute(
            "INSERT OR REPLACE INTO knn_graph_parts (hash, prep, k, row_from, row_to, part)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![hash.to_hex(), prep, k as i64, rows.0, rows.1, part],
        )?;
        Ok(())
    }

    fn knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Vec<GraphPart>> {
        let mut st = self.conn.prepare(
            "SELECT row_from, row_to, part FROM knn_graph_parts
             WHERE hash = ?1 AND prep = ?2 AND k = ?3 ORDER BY row_from",
        )?;
        let rows = st.query_map(params![hash.to_hex(), prep, k as i64], |r| {
            Ok(((r.get(0)?, r.get(1)?), r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn drop_knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<()> {
        self.conn.execute(
            "DELETE FROM knn_graph_parts WHERE hash = ?1 AND prep = ?2 AND k = ?3",
            params![hash.to_hex(), prep, k as i64],
        )?;
        Ok(())
    }

    fn draws(&self, k: &DrawKey) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT vals FROM null_samples WHERE pair_key = ?1 AND kind = ?2 AND metric = ?3
                 AND version = ?4 AND params = ?5 AND prep_x = ?6 AND prep_y = ?7 AND seed = ?8",
                rusqlite::params_from_iter(draw_key(k)),
                |r| r.get(0),
            )
            .optional()?)
    }

    fn put_draws(&self, k: &DrawKey, vals: &[u8]) -> Result<()> {
        // One statement: atomic on its own.
        let mut row = draw_key(k);
        row.push(Value::Blob(vals.to_vec()));
        self.conn.execute(
            "INSERT INTO null_samples (pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT DO UPDATE SET vals = excluded.vals
             WHERE length(excluded.vals) > length(null_samples.vals)",
            rusqlite::params_from_iter(row),
        )?;
        Ok(())
    }

    fn integrity_check(&self) -> Result<Option<String>> {
        let ok: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Ok(Some(ok));
        }
        // Rows whose hash prh could not have written (listings skip them).
        let bad: i64 = self.conn.query_row(
            &format!(
                "SELECT (SELECT count(*) FROM blobs WHERE NOT {})
                      + (SELECT count(*) FROM representations WHERE NOT {})",
                is_hash("hash"),
                is_hash("blob_hash")
            ),
            [],
            |r| r.get(0),
        )?;
        Ok((bad > 0).then(|| format!("{bad} blob or representation rows name no valid hash")))
    }

    fn gc_plan(&self, current: &[(&str, u32)]) -> Result<GcPlan> {
        upkeep::gc_plan(&self.conn, current)
    }

    fn gc_apply(&mut self, current: &[(&str, u32)], unreferenced: &[BlobHash]) -> Result<()> {
        self.write(|tx| upkeep::gc_apply(tx, current, unreferenced))
    }

    fn export_snapshot(&self, dest: &Path, models: Option<&[String]>) -> Result<SnapshotInfo> {
        super::snapshot::export(&self.conn, dest, models)
    }

    fn merge_snapshot(&mut self, snapshot: &Path, opts: MergeOptions) -> Result<MergeCounts> {
        upkeep::merge(&mut self.conn, snapshot, opts)
    }

    fn working_copy(&self, dest: &Path) -> Result<()> {
        self.conn
            .execute("VACUUM INTO ?1", [dest.to_string_lossy().as_ref()])?;
        Ok(())
    }

    fn create_sweep(&mut self, spec: &str, label: &str, units: &[NewUnit]) -> Result<i64> {
        sweeps::create(&mut self.conn, spec, label, units)
    }

    fn claim_unit(
        &mut self,
        sweep: Option<i64>,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<Unit>> {
        sweeps::claim(&mut self.conn, sweep, worker, lease_ms)
    }

    fn renew_lease(&self, sweep: i64, idx: i64, worker: &str, lease_ms: i64) -> Result<bool> {
        sweeps::renew(&self.conn, sweep, idx, worker, lease_ms)
    }

    fn finish_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
        sweeps::finish(&self.conn, sweep, idx, worker)
    }

    fn release_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
        sweeps::release(&self.conn, sweep, idx, worker)
    }

    fn sweep_rows(&self) -> Result<(Vec<SweepRow>, Vec<UnitRow>)> {
        sweeps::rows(&self.conn)
    }

    fn now_ms(&self) -> Result<i64> {
        sweeps::now(&self.conn)
    }
}

impl SqliteCatalog {
    /// The file of the main database.
    fn path(&self) -> Result<PathBuf> {
        self.conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| Error::Internal("the catalog has no file to open readers on".into()))
    }
}

/// A read-only connection scanning served cells.
struct Reader(Connection);

impl CellReader for Reader {
    fn scan(&mut self, m: i64, lo: i64, hi: i64, f: &mut dyn FnMut(i64, i64, f64)) -> Result<()> {
        let mut st = self
            .0
            .prepare_cached("SELECT x, y, value FROM cells WHERE m = ?1 AND x BETWEEN ?2 AND ?3")?;
        let mut rows = st.query(params![m, lo, hi])?;
        while let Some(r) = rows.next()? {
            f(r.get(0)?, r.get(1)?, r.get(2)?);
        }
        Ok(())
    }
}

/// The row operations of one IMMEDIATE transaction.
struct Tx<'a>(&'a rusqlite::Transaction<'a>);

impl Tx<'_> {
    /// Runs a statement; how many rows it changed.
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> Result<usize> {
        Ok(self.0.prepare_cached(sql)?.execute(p)?)
    }

    /// Inserts a row; its id.
    fn insert(&self, sql: &str, p: impl rusqlite::Params) -> Result<i64> {
        self.exec(sql, p)?;
        Ok(self.0.last_insert_rowid())
    }

    /// The first column of the one row a query finds, if any.
    fn one<T: FromSql>(&self, sql: &str, p: impl rusqlite::Params) -> Result<Option<T>> {
        Ok(self
            .0
            .prepare_cached(sql)?
            .query_row(p, |r| r.get(0))
            .optional()?)
    }
}

impl CatalogTx for Tx<'_> {
    fn dataset(&mut self, name: &str) -> Result<Option<(DatasetId, usize)>> {
        Ok(self
            .0
            .query_row("SELECT id, n FROM datasets WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))
            })
            .optional()?)
    }

    fn insert_dataset(&mut self, name: &str, n: usize, desc: Option<&str>) -> Result<DatasetId> {
        let sql = "INSERT INTO datasets (name, n, description) VALUES (?1, ?2, ?3)";
        self.insert(sql, params![name, n as i64, desc])
            .map(DatasetId)
    }

    fn insert_samples(&mut self, dataset: DatasetId, ids: &[String]) -> Result<()> {
        for (i, s) in ids.iter().enumerate() {
            self.exec(
                "INSERT INTO dataset_samples (dataset_id, idx, sample_id) VALUES (?1, ?2, ?3)",
                params![dataset, i as i64, s],
            )?;
        }
        Ok(())
    }

    fn model(&mut self, name: &str) -> Result<Option<(ModelId, String)>> {
        Ok(self
            .0
            .query_row(
                "SELECT id, modality FROM models WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn insert_model(&mut self, name: &str, modality: &str, fam: Option<&str>) -> Result<ModelId> {
        let sql = "INSERT INTO models (name, modality, family) VALUES (?1, ?2, ?3)";
        self.insert(sql, params![name, modality, fam]).map(ModelId)
    }

    fn set_num_params(&mut self, model: ModelId, num_params: i64) -> Result<()> {
        let sql = "UPDATE models SET num_params = ?1 WHERE id = ?2";
        self.exec(sql, params![num_params, model]).map(drop)
    }

    fn fill_family(&mut self, model: ModelId, family: &str) -> Result<()> {
        let sql = "UPDATE models SET family = ?1 WHERE id = ?2 AND family IS NULL";
        self.exec(sql, params![family, model]).map(drop)
    }

    fn checkpoint(&mut self, model: ModelId, name: &str) -> Result<Option<CheckpointId>> {
        let sql = "SELECT id FROM checkpoints WHERE model_id = ?1 AND name = ?2";
        self.one(sql, params![model, name])
    }

    fn insert_checkpoint(
        &mut self,
        m: ModelId,
        name: &str,
        step: Option<i64>,
    ) -> Result<CheckpointId> {
        let sql = "INSERT INTO checkpoints (model_id, name, step) VALUES (?1, ?2, ?3)";
        self.insert(sql, params![m, name, step]).map(CheckpointId)
    }

    fn fill_step(&mut self, checkpoint: CheckpointId, step: i64) -> Result<()> {
        let sql = "UPDATE checkpoints SET step = ?1 WHERE id = ?2 AND step IS NULL";
        self.exec(sql, params![step, checkpoint]).map(drop)
    }

    fn insert_blob(&mut self, b: &BlobRow) -> Result<()> {
        self.exec(
            "INSERT OR IGNORE INTO blobs (hash, dtype, n, d, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![b.hash, b.dtype, b.n as i64, b.d as i64, b.bytes as i64],
        )
        .map(drop)
    }

    fn rep_blob(&mut self, at: RepSlot) -> Result<Option<BlobHash>> {
        self.one(
            "SELECT blob_hash FROM representations
             WHERE checkpoint_id = ?1 AND dataset_id = ?2 AND layer = ?3 AND pool = ?4",
            params![at.checkpoint, at.dataset, at.layer as i64, at.pool],
        )
    }

    fn insert_rep(&mut self, at: RepSlot, rep: NewRep) -> Result<()> {
        self.exec(
            "INSERT INTO representations (checkpoint_id, dataset_id, layer, pool, blob_hash, source, layout)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![at.checkpoint, at.dataset, at.layer as i64, at.pool, rep.blob, rep.source, rep.layout],
        )
        .map(drop)
    }

    fn fill_layout(&mut self, at: RepSlot, layout: &str) -> Result<bool> {
        let n = self.exec(
            "UPDATE representations SET layout = ?5 WHERE checkpoint_id = ?1
             AND dataset_id = ?2 AND layer = ?3 AND pool = ?4 AND layout IS NULL",
            params![at.checkpoint, at.dataset, at.layer as i64, at.pool, layout],
        )?;
        Ok(n > 0)
    }

    fn score(&mut self, checkpoint: CheckpointId, name: &str) -> Result<Option<ScoreValue>> {
        Ok(self
            .0
            .query_row(
                "SELECT value, higher_is_better FROM scores WHERE checkpoint_id = ?1 AND name = ?2",
                params![checkpoint, name],
                |r| {
                    Ok(ScoreValue {
                        value: r.get(0)?,
                        higher_is_better: r.get::<_, Option<i64>>(1)?.map(|h| h != 0),
                    })
                },
            )
            .optional()?)
    }

    fn put_score(&mut self, checkpoint: CheckpointId, name: &str, s: ScoreValue) -> Result<()> {
        self.exec(
            "INSERT INTO scores (checkpoint_id, name, value, higher_is_better) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (checkpoint_id, name) DO UPDATE SET value = excluded.value,
                 higher_is_better = excluded.higher_is_better",
            params![checkpoint, name, s.value, s.higher_is_better.map(i64::from)],
        )
        .map(drop)
    }

    fn put_meta(&mut self, checkpoint: CheckpointId, key: &str, value: &str) -> Result<bool> {
        let changed = self.exec(
            "INSERT INTO checkpoint_meta (checkpoint_id, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (checkpoint_id, key) DO UPDATE SET value = excluded.value
             WHERE value != excluded.value",
            params![checkpoint, key, value],
        )?;
        Ok(changed > 0)
    }
}

fn dataset_row(r: &rusqlite::Row) -> rusqlite::Result<Dataset> {
    Ok(Dataset {
        id: r.get(0)?,
        name: r.get(1)?,
        n: r.get::<_, i64>(2)? as usize,
        description: r.get(3)?,
        has_ids: r.get(4)?,
    })
}

fn model_row(r: &rusqlite::Row) -> rusqlite::Result<Model> {
    Ok(Model {
        id: r.get(0)?,
        name: r.get(1)?,
        modality: r.get(2)?,
        family: r.get(3)?,
        num_params: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_record_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let c = SqliteCatalog::create(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len());
        drop(c);
        let c = SqliteCatalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len());
        let mode: String = c
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = c
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let c = SqliteCatalog::create(&p).unwrap();
        c.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = SqliteCatalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("newer than this prh"), "{e}");
    }

    #[test]
    fn only_create_makes_a_catalog_and_foreign_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let e = SqliteCatalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("catalog.db"), "{e}");
        assert!(!p.exists(), "open must not create a catalog");
        std::fs::write(&p, b"").unwrap();
        let e = SqliteCatalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a prh catalog (the file is empty)"), "{e}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        std::fs::remove_file(&p).unwrap();
        let other = Connection::open(&p).unwrap();
        other
            .execute_batch("CREATE TABLE notes (t TEXT); PRAGMA user_version = 2;")
            .unwrap();
        drop(other);
        let before = std::fs::read(&p).unwrap();
        let e = SqliteCatalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("no prh schema"), "{e}");
        let e = SqliteCatalog::create(&p).err().unwrap().to_string();
        assert!(e.contains("no prh schema"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        std::fs::write(
            &p,
            b"hello, not sqlite at all, but long enough to look like a header....",
        )
        .unwrap();
        let e = SqliteCatalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a prh catalog"), "{e}");
    }
}
