//! The PostgreSQL catalog (sqlx), for a registry a lab shares across machines
//! (`prh init --catalog postgres://USER@HOST/DB`).
//!
//! The same tables as the SQLite catalog, from the numbered files in `migrations/postgres/`
//! (same version numbers as SQLite's, recorded in `prh_schema`), applied in one transaction
//! under an advisory lock so that two `prh init` at once migrate once. sqlx is async: its tokio
//! runtime is kept inside this module (one worker thread) and every call blocks on it, so the
//! rest of prh sees the same synchronous [`Catalog`] as with SQLite. Writes that the callers
//! make as read-then-insert take a transaction-level advisory lock first: one writer at a
//! time, as SQLite's IMMEDIATE transactions give. Text is ordered `COLLATE "C"` (byte order,
//! as SQLite) so listings come out the same on both. Every sqlx type and call of prh lives in
//! this module and its children; the password comes from the URL or PGPASSWORD and is never
//! repeated in a message.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Row};

use super::tables::{Kind, TABLES, TableRows, Value};
use super::{
    BlobRow, CachedCell, Catalog, CatalogTx, CellReader, CellRow, CellSide, CellTable, Checkpoint,
    CheckpointId, Dataset, DatasetId, DrawKey, GcPlan, GraphPart, MergeCounts, MergeOptions,
    MetricEntry, MetricKey, Model, ModelId, NewCell, NewRep, NewUnit, Rep, RepFilter, RepSlot,
    Score, ScoreValue, SideEntry, SnapshotInfo, StoredBlob, SweepRow, Unit, UnitRow, collision,
    layers_by_id, spread, stored_ids,
};
use crate::error::{Error, Result};
use crate::store::BlobHash;

mod merge;
mod sweeps;

/// The migrations, in order; index + 1 is the schema version each one produces (the same
/// numbers as [`super::MIGRATIONS`]).
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_cache",
        include_str!("../../migrations/postgres/0002_cache.sql"),
    ),
    (
        "0003_nulls",
        include_str!("../../migrations/postgres/0003_nulls.sql"),
    ),
    (
        "0004_imported_cells",
        include_str!("../../migrations/postgres/0004_imported_cells.sql"),
    ),
    (
        "0005_checkpoint_meta",
        include_str!("../../migrations/postgres/0005_checkpoint_meta.sql"),
    ),
    (
        "0006_layout",
        include_str!("../../migrations/postgres/0006_layout.sql"),
    ),
    (
        "0007_knn_ties",
        include_str!("../../migrations/postgres/0007_knn_ties.sql"),
    ),
    (
        "0008_compact_cells",
        include_str!("../../migrations/postgres/0008_compact_cells.sql"),
    ),
    (
        "0009_sweeps",
        include_str!("../../migrations/postgres/0009_sweeps.sql"),
    ),
    (
        "0010_knn_graphs",
        include_str!("../../migrations/postgres/0010_knn_graphs.sql"),
    ),
    (
        "0011_unit_blocks",
        include_str!("../../migrations/postgres/0011_unit_blocks.sql"),
    ),
    (
        "0012_graph_blocks",
        include_str!("../../migrations/postgres/0012_graph_blocks.sql"),
    ),
];

/// Advisory lock keys: one writer at a time; one migration at a time.
const WRITE_LOCK: i64 = 0x7072_685f_7772_6974;
const MIGRATE_LOCK: i64 = 0x7072_685f_6d69_6772;
/// The blob guard ([`Catalog::blob_guard`]): a session-level advisory lock, shared by writers,
/// exclusive for gc.
const BLOB_GUARD: i64 = 0x7072_685f_626c_6f62;

/// How long connecting may take before the URL is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A statement the catalog role has no privilege for (SQLSTATE 42501): a permanent failure
/// that says which privileges prh needs.
fn denied(what: &str) -> Error {
    Error::Catalog(format!(
        "{what} (the role this registry connects as lacks the privilege)"
    ))
    .hint("prh needs SELECT on its tables to read; INSERT, UPDATE and DELETE to write (ingest, import, score set, a sweep that computes, gc); CREATE on the schema to set a catalog up (`prh init`): ask the catalog's owner to grant them, or connect as a role that has them")
}

impl From<sqlx::Error> for Error {
    /// PostgreSQL's error with its kind: a lost or refused connection, an exhausted pool, a
    /// server shutting down, a serialization failure or deadlock is [`Error::Unavailable`]
    /// (retrying can succeed); a violated constraint a conflict; the rest a permanent catalog
    /// failure.
    fn from(e: sqlx::Error) -> Self {
        let msg = format!("catalog: {e}");
        // Each transaction is all or nothing, so a lost one can be run again.
        let lost = |msg: String| {
            Error::Unavailable(format!("catalog unavailable: {msg}")).hint(
                "the PostgreSQL server could not be reached or went away (a restart, a network cut): the write in progress was rolled back, earlier ones are kept; run the command again once it answers",
            )
        };
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => lost(msg),
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                // 08: connection exception; 40001/40P01: serialization failure/deadlock;
                // 53: insufficient resources; 57P01-57P03: the server is shutting down or
                // starting; 23505/23503: a unique or foreign key clash (a conflict); 23514/
                // 23502: a CHECK or NOT NULL violation (prh wrote what its schema forbids).
                if code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03") {
                    lost(msg)
                } else if code == "40001" || code == "40P01" || code.starts_with("53") {
                    Error::Unavailable(msg).hint(
                        "the server was busy (out of resources) or another writer clashed with this one; nothing of this write was kept: run the command again",
                    )
                } else if code == "23505" || code == "23503" {
                    Error::Conflict(msg)
                } else if code == "23514" || code == "23502" {
                    Error::Internal(msg)
                } else if code == "42501" {
                    denied(d.message())
                } else if code == "3D000" {
                    // The database named in the URL does not exist.
                    Error::NotFound(msg)
                } else {
                    Error::Catalog(e.to_string())
                }
            }
            _ => Error::Catalog(e.to_string()),
        }
    }
}

/// The runtime the pool lives on; shut down without waiting when the last user drops it (it
/// may be dropped inside another runtime, as in `prh serve`).
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn new() -> Result<Rt> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("prh-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Failed(format!("cannot start the PostgreSQL client: {e}")))?;
        Ok(Rt(Some(rt)))
    }

    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("runtime lives until drop")
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.get().block_on(f)
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The pool and its runtime; the pool is dropped inside the runtime's context.
struct Db {
    pool: std::mem::ManuallyDrop<PgPool>,
    rt: Arc<Rt>,
}

impl Drop for Db {
    fn drop(&mut self) {
        let _in = self.rt.get().enter();
        self.rt.block_on(self.pool.close());
        // SAFETY: dropped once, here, and never used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.pool) };
    }
}

/// A PostgreSQL prh catalog.
pub struct PgCatalog {
    db: Arc<Db>,
    /// The URL as shown in messages (no password).
    shown: String,
}

/// The URL without a password, for messages.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// The first line of an error's message.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

impl PgCatalog {
    /// Creates the catalog in an empty database (or opens the prh catalog already there) and
    /// brings its schema up to date. A database holding other tables is refused, untouched.
    pub fn create(url: &str) -> Result<Self> {
        Self::connect(url, true)
    }

    /// Opens an existing prh catalog and brings its schema up to date; an empty database or
    /// one that is not a prh catalog is refused, untouched.
    pub fn open(url: &str) -> Result<Self> {
        Self::connect(url, false)
    }

    fn connect(url: &str, create: bool) -> Result<Self> {
        let shown = shown_url(url);
        let fail = |e: Error| e.prefixed(&shown);
        let opts = PgConnectOptions::from_str(url).map_err(|e| {
            fail(Error::Invalid(format!(
                "not a PostgreSQL URL: {}",
                one_line(e)
            )))
        })?;
        let rt = Arc::new(Rt::new()?);
        let pool = rt.block_on(async {
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
                .await
                .map_err(|_| {
                    fail(Error::Unavailable(format!(
                        "no answer in {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )))
                })?
                .map_err(|e| {
                    let line = one_line(&e);
                    fail(match Error::from(e).kind() {
                        crate::error::ErrorKind::Unavailable => {
                            Error::Unavailable(format!("cannot connect: {line}"))
                        }
                        crate::error::ErrorKind::NotFound => Error::NotFound(line),
                        _ => Error::Catalog(line),
                    })
                })?;
            let migrated = migrate(&mut conn, create).await;
            let _ = conn.close().await;
            migrated.map_err(fail)?;
            Ok::<_, Error>(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_lazy_with(opts),
            )
        })?;
        Ok(PgCatalog {
            db: Arc::new(Db {
                pool: std::mem::ManuallyDrop::new(pool),
                rt,
            }),
            shown,
        })
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Runs `f` on the runtime.
    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.db.rt.block_on(f)
    }

    /// The rows `sql` finds, each decoded by `row`; `$1`, where `sql` has it, is `text`
    /// (NULL for `None`: the listings read it as "no filter").
    fn rows<T>(
        &self,
        sql: impl sqlx::SqlSafeStr,
        text: Option<Option<&str>>,
        row: fn(&PgRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.run(async {
            let q = sqlx::query(sql);
            let q = match text {
                Some(t) => q.bind(t),
                None => q,
            };
            q.fetch_all(self.pool()).await?.iter().map(row).collect()
        })
    }

    /// Every table as plain rows, read in one snapshot (REPEATABLE READ).
    fn read_tables(&self) -> Result<Vec<TableRows>> {
        self.run(async {
            let mut tx = self.pool().begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
            let mut out = Vec::with_capacity(TABLES.len());
            for spec in TABLES {
                let sql = format!("SELECT {} FROM {}", spec.column_list(), spec.name);
                let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
                let mut got = Vec::with_capacity(rows.len());
                for r in &rows {
                    let mut row = Vec::with_capacity(spec.columns.len());
                    for (i, (_, kind)) in spec.columns.iter().enumerate() {
                        row.push(plain(r, i, *kind)?);
                    }
                    got.push(row);
                }
                out.push(TableRows { spec, rows: got });
            }
            tx.commit().await?;
            Ok(out)
        })
    }
}

/// Column `i` of `r` as a plain value.
fn plain(r: &PgRow, i: usize, kind: Kind) -> Result<Value> {
    Ok(match kind {
        Kind::Int => r
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::Int),
        Kind::Real => r
            .try_get::<Option<f64>, _>(i)?
            .map_or(Value::Null, Value::Real),
        Kind::Text => r
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::Text),
        Kind::Bytes => r
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map_or(Value::Null, Value::Bytes),
    })
}

/// Takes the transaction-level advisory lock `key` on `conn` (held until its transaction ends):
/// WRITE_LOCK serialises writers as SQLite's IMMEDIATE transactions do; MIGRATE_LOCK migrations.
async fn xact_lock(conn: &mut PgConnection, key: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Brings the database on `conn` to this prh's schema, in one transaction under the migration
/// lock; refuses a database that is not a prh catalog, or a newer one.
async fn migrate(conn: &mut PgConnection, create: bool) -> Result<()> {
    let mut tx = conn.begin().await?;
    xact_lock(&mut tx, MIGRATE_LOCK).await?;
    let marked: bool = sqlx::query_scalar("SELECT to_regclass('prh_schema') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    let version = if marked {
        sqlx::query_scalar::<_, i64>("SELECT max(version) FROM prh_schema")
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0) as usize
    } else {
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
        )
        .fetch_one(&mut *tx)
        .await?;
        if tables > 0 {
            return Err(Error::Invalid(format!(
                "not a prh catalog ({tables} tables and no prh schema in it); prh uses an empty database of its own and never overwrites another"
            )));
        }
        if !create {
            return Err(Error::Invalid(
                "not a prh catalog (the database is empty); `prh init --catalog URL` creates one"
                    .into(),
            ));
        }
        0
    };
    if version > MIGRATIONS.len() {
        return Err(Error::Unsupported(format!(
            "catalog schema version {version} is newer than this prh understands ({}); upgrade prh",
            MIGRATIONS.len()
        )));
    }
    for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(version) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("UPDATE prh_schema SET version = $1")
            .bind((i + 1) as i64)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

const DATASETS: &str = "SELECT id, name, n, description,
        EXISTS(SELECT 1 FROM dataset_samples s WHERE s.dataset_id = d.id)
     FROM datasets d";

fn dataset_row(r: &PgRow) -> Result<Dataset> {
    Ok(Dataset {
        id: DatasetId(r.try_get(0)?),
        name: r.try_get(1)?,
        n: r.try_get::<i64, _>(2)? as usize,
        description: r.try_get(3)?,
        has_ids: r.try_get(4)?,
    })
}

fn model_row(r: &PgRow) -> Result<Model> {
    Ok(Model {
        id: ModelId(r.try_get(0)?),
        name: r.try_get(1)?,
        modality: r.try_get(2)?,
        family: r.try_get(3)?,
        num_params: r.try_get(4)?,
    })
}

/// `(metric names, versions)` of the metric versions this prh computes, as two arrays.
fn current_arrays(current: &[(&str, u32)]) -> (Vec<String>, Vec<i64>) {
    current
        .iter()
        .map(|(m, v)| (m.to_string(), i64::from(*v)))
        .unzip()
}

/// Cells of a metric version this prh no longer computes, or of a blob no representation
/// names any more ($1 names, $2 versions).
const STALE_CELLS: &str = "cells AS c WHERE
        c.m IN (SELECT k.id FROM cell_metrics k WHERE NOT EXISTS (
                SELECT 1 FROM UNNEST($1::text[], $2::bigint[]) AS j(metric, version)
                WHERE j.metric = k.metric AND j.version = k.version))
        OR c.x IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))
        OR c.y IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))";

const STALE_DRAWS: &str = "null_samples AS n WHERE NOT EXISTS (
        SELECT 1 FROM UNNEST($1::text[], $2::bigint[]) AS j(metric, version)
        WHERE j.metric = n.metric AND j.version = n.version)";

/// SQL true when `column` holds a hash as prh writes it.
fn is_hash(column: &str) -> String {
    format!("({column} ~ '^[0-9a-f]{{64}}$')")
}

/// A held blob guard: the session holding the advisory lock, closed (which releases the lock)
/// when dropped; a process that dies drops its session, and the server releases the lock.
struct PgGuard {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    db: Arc<Db>,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _in = self.db.rt.get().enter();
            let _ = self.db.rt.block_on(conn.close());
        }
    }
}

impl Catalog for PgCatalog {
    fn blob_guard(&self, mode: super::GuardMode) -> Result<super::BlobGuard> {
        let sql = match mode {
            super::GuardMode::Writer => "SELECT pg_advisory_lock_shared($1)",
            super::GuardMode::Collector => "SELECT pg_advisory_lock($1)",
        };
        let conn = self.run(async {
            let mut conn = self.pool().acquire().await?;
            sqlx::query(sql)
                .bind(BLOB_GUARD)
                .execute(&mut *conn)
                .await?;
            Ok(conn)
        })?;
        Ok(super::BlobGuard::new(PgGuard {
            conn: Some(conn),
            db: self.db.clone(),
        }))
    }

    fn schema_version(&self) -> Result<usize> {
        self.run(async {
            let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM prh_schema")
                .fetch_one(self.pool())
                .await?;
            Ok(v.unwrap_or(0) as usize)
        })
    }

    fn dataset(&self, name: &str) -> Result<Option<Dataset>> {
        let sql = AssertSqlSafe(format!("{DATASETS} WHERE name = $1"));
        Ok(self.rows(sql, Some(Some(name)), dataset_row)?.pop())
    }

    fn datasets(&self) -> Result<Vec<Dataset>> {
        let sql = AssertSqlSafe(format!("{DATASETS} ORDER BY name COLLATE \"C\""));
        self.rows(sql, None, dataset_row)
    }

    fn dataset_ids(&self, dataset: DatasetId) -> Result<Vec<String>> {
        self.run(async {
            Ok(sqlx::query_scalar(
                "SELECT sample_id FROM dataset_samples WHERE dataset_id = $1 ORDER BY idx",
            )
            .bind(dataset.0)
            .fetch_all(self.pool())
            .await?)
        })
    }

    fn model(&self, name: &str) -> Result<Option<Model>> {
        let sql = "SELECT id, name, modality, family, num_params FROM models WHERE name = $1";
        Ok(self.rows(sql, Some(Some(name)), model_row)?.pop())
    }

    fn models(&self) -> Result<Vec<Model>> {
        let sql = "SELECT id, name, modality, family, num_params FROM models
                   ORDER BY name COLLATE \"C\"";
        self.rows(sql, None, model_row)
    }

    fn checkpoints(&self, model: Option<&str>) -> Result<Vec<Checkpoint>> {
        let sql = "SELECT c.id, m.name, c.name, c.step, c.created_at
                   FROM checkpoints c JOIN models m ON m.id = c.model_id
                   WHERE $1::text IS NULL OR m.name = $1
                   ORDER BY m.name COLLATE \"C\", c.step IS NULL, c.step, c.id";
        let mut out = self.rows(sql, Some(model), |r| {
            Ok(Checkpoint {
                id: CheckpointId(r.try_get(0)?),
                model: r.try_get(1)?,
                checkpoint: r.try_get(2)?,
                step: r.try_get(3)?,
                created_at: r.try_get(4)?,
                meta: Default::default(),
            })
        })?;
        let mut meta = self.checkpoint_meta()?;
        for c in &mut out {
            c.meta = meta.remove(&c.id).unwrap_or_default();
        }
        Ok(out)
    }

    fn checkpoint_meta(&self) -> Result<HashMap<CheckpointId, BTreeMap<String, String>>> {
        self.run(async {
            let rows: Vec<(i64, String, String)> =
                sqlx::query_as("SELECT checkpoint_id, key, value FROM checkpoint_meta")
                    .fetch_all(self.pool())
                    .await?;
            let mut out: HashMap<CheckpointId, BTreeMap<String, String>> = HashMap::new();
            for (c, k, v) in rows {
                out.entry(CheckpointId(c)).or_default().insert(k, v);
            }
            Ok(out)
        })
    }

    fn reps(&self, f: &RepFilter) -> Result<Vec<Rep>> {
        self.run(async {
            let rows = sqlx::query(
                "SELECT r.blob_hash, m.name, c.name, ds.name, r.layer, r.pool, b.dtype, b.n, b.d,
                        c.id, m.modality, r.layout, m.family, c.step, ds.id
                 FROM representations r
                 JOIN checkpoints c ON c.id = r.checkpoint_id
                 JOIN models m ON m.id = c.model_id
                 JOIN datasets ds ON ds.id = r.dataset_id
                 JOIN blobs b ON b.hash = r.blob_hash
                 WHERE ($1::text IS NULL OR m.name = $1)
                   AND ($2::bigint IS NULL OR c.id = $2)
                   AND ($3::text IS NULL OR ds.name = $3)
                   AND ($4::text IS NULL OR r.pool = $4)
                   AND ($5::text IS NULL OR starts_with(r.blob_hash, $5))
                 ORDER BY m.name COLLATE \"C\", c.step IS NULL, c.step, c.id, ds.name COLLATE \"C\",
                          r.pool COLLATE \"C\", r.layer",
            )
            .bind(&f.model)
            .bind(f.checkpoint_id.map(|c| c.0))
            .bind(&f.dataset)
            .bind(&f.pool)
            .bind(f.hash_prefix.as_ref().map(|s| s.to_ascii_lowercase()))
            .fetch_all(self.pool())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Rep {
                        hash: r.try_get::<String, _>(0)?.parse()?,
                        model: r.try_get(1)?,
                        checkpoint: r.try_get(2)?,
                        dataset: r.try_get(3)?,
                        layer: r.try_get(4)?,
                        pool: r.try_get(5)?,
                        dtype: r.try_get(6)?,
                        n: r.try_get::<i64, _>(7)? as usize,
                        d: r.try_get::<i64, _>(8)? as usize,
                        checkpoint_id: CheckpointId(r.try_get(9)?),
                        modality: r.try_get(10)?,
                        layout: r.try_get(11)?,
                        family: r.try_get(12)?,
                        step: r.try_get(13)?,
                        dataset_id: DatasetId(r.try_get(14)?),
                    })
                })
                .collect()
        })
    }

    fn blobs(&self) -> Result<Vec<StoredBlob>> {
        self.run(async {
            let rows = sqlx::query(
                "SELECT b.hash, b.dtype, b.n, b.d, b.bytes,
                        (SELECT m.name || ' @ ' || c.name || ' layer ' || r.layer FROM representations r
                         JOIN checkpoints c ON c.id = r.checkpoint_id JOIN models m ON m.id = c.model_id
                         WHERE r.blob_hash = b.hash ORDER BY r.id LIMIT 1)
                 FROM blobs b ORDER BY b.hash COLLATE \"C\"",
            )
            .fetch_all(self.pool())
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let sizes = (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
                let hash: String = r.try_get(0)?;
                out.extend(StoredBlob::from_sql(&hash, r.try_get(1)?, sizes, r.try_get(5)?));
            }
            Ok(out)
        })
    }

    fn blob_named(&self, hash: &BlobHash) -> Result<bool> {
        self.run(async {
            let named: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = $1)
                     OR EXISTS (SELECT 1 FROM representations WHERE blob_hash = $1)",
            )
            .bind(hash.to_hex())
            .fetch_one(self.pool())
            .await?;
            Ok(named)
        })
    }

    fn scores(&self, model: Option<&str>) -> Result<Vec<Score>> {
        let sql = "SELECT m.name, c.name, s.name, s.value, s.higher_is_better, c.id
                   FROM scores s JOIN checkpoints c ON c.id = s.checkpoint_id
                   JOIN models m ON m.id = c.model_id
                   WHERE $1::text IS NULL OR m.name = $1
                   ORDER BY m.name COLLATE \"C\", c.step IS NULL, c.step, c.id,
                            s.name COLLATE \"C\"";
        self.rows(sql, Some(model), |r| {
            Ok(Score {
                model: r.try_get(0)?,
                checkpoint: r.try_get(1)?,
                name: r.try_get(2)?,
                value: r.try_get(3)?,
                higher_is_better: r.try_get::<Option<i64>, _>(4)?.map(|v| v != 0),
                checkpoint_id: CheckpointId(r.try_get(5)?),
            })
        })
    }

    fn transact(&mut self, f: &mut dyn FnMut(&mut dyn CatalogTx) -> Result<()>) -> Result<()> {
        let rt = self.db.rt.clone();
        // A transaction dropped on an error path returns its connection inside the runtime.
        let _in = rt.get().enter();
        let mut tx = rt.block_on(async {
            let mut tx = self.pool().begin().await?;
            xact_lock(&mut tx, WRITE_LOCK).await?;
            Ok::<_, Error>(tx)
        })?;
        let out = f(&mut Tx {
            rt: &rt,
            conn: &mut tx,
        });
        match out {
            Ok(()) => Ok(rt.block_on(tx.commit())?),
            Err(e) => {
                let _ = rt.block_on(tx.rollback());
                Err(e)
            }
        }
    }

    fn cached_cells(&self, m: &MetricKey, x: CellSide, y: CellSide) -> Result<Vec<CachedCell>> {
        let (ix, iy) = (layers_by_id(x.ids), layers_by_id(y.ids));
        let orientations: &[bool] = if m.symmetric {
            &[false, true]
        } else {
            &[false]
        };
        let mut out = Vec::new();
        for &swapped in orientations {
            let (a, b) = if swapped {
                (y.ids, x.ids)
            } else {
                (x.ids, y.ids)
            };
            let rows: Vec<(i64, i64, f64)> = self.run(async {
                Ok(sqlx::query_as(
                    "SELECT x, y, value FROM cells WHERE m = $1 AND x = ANY($2) AND y = ANY($3)",
                )
                .bind(m.id())
                .bind(a)
                .bind(b)
                .fetch_all(self.pool())
                .await?)
            })?;
            spread(rows, swapped, &ix, &iy, &mut out);
        }
        Ok(out)
    }

    fn store_cells(
        &mut self,
        keys: &[MetricKey],
        x: CellSide,
        y: CellSide,
        new: &[NewCell],
    ) -> Result<()> {
        let rt = self.db.rt.clone();
        let _in = rt.get().enter();
        rt.block_on(async {
            let mut tx = self.pool().begin().await?;
            store_cells(&mut tx, keys, x, y, new).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn cell_metrics(&self) -> Result<Vec<MetricEntry>> {
        self.run(async {
            let rows: Vec<(i64, String, i64, String)> =
                sqlx::query_as("SELECT id, metric, version, params FROM cell_metrics")
                    .fetch_all(self.pool())
                    .await?;
            Ok(rows
                .into_iter()
                .map(|(id, metric, version, params)| MetricEntry {
                    id,
                    metric,
                    version,
                    params,
                })
                .collect())
        })
    }

    fn cell_sides(&self) -> Result<Vec<SideEntry>> {
        self.run(async {
            let rows: Vec<(i64, String, String)> =
                sqlx::query_as("SELECT id, hash, prep FROM cell_sides")
                    .fetch_all(self.pool())
                    .await?;
            Ok(rows
                .into_iter()
                .map(|(id, hash, prep)| SideEntry { id, hash, prep })
                .collect())
        })
    }

    fn cell_counts(&self) -> Result<(u64, u64)> {
        self.run(async {
            let (served, imported): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM cells), (SELECT count(*) FROM imported_cells)",
            )
            .fetch_one(self.pool())
            .await?;
            Ok((served as u64, imported as u64))
        })
    }

    fn cell_readers(&self, n: usize) -> Result<Vec<Box<dyn CellReader>>> {
        Ok((0..n)
            .map(|_| Box::new(Reader(self.db.clone())) as Box<dyn CellReader>)
            .collect())
    }

    fn cell_rows(&self, table: CellTable) -> Result<Vec<CellRow>> {
        let table = match table {
            CellTable::Served => "cells",
            CellTable::Imported => "imported_cells",
        };
        let sql = format!(
            "SELECT sx.hash, sy.hash, k.metric, k.version, k.params, sx.prep, sy.prep, c.value, c.m, c.x, c.y
             FROM {table} c JOIN cell_metrics k ON k.id = c.m
             JOIN cell_sides sx ON sx.id = c.x JOIN cell_sides sy ON sy.id = c.y"
        );
        self.run(async {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(self.pool())
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(CellRow {
                        ids: [r.try_get(8)?, r.try_get(9)?, r.try_get(10)?],
                        hash_x: r.try_get(0)?,
                        hash_y: r.try_get(1)?,
                        metric: r.try_get(2)?,
                        version: r.try_get(3)?,
                        params: r.try_get(4)?,
                        prep_x: r.try_get(5)?,
                        prep_y: r.try_get(6)?,
                        value: r.try_get(7)?,
                    })
                })
                .collect()
        })
    }

    fn promote_cell(&mut self, ids: [i64; 3]) -> Result<()> {
        let rt = self.db.rt.clone();
        let _in = rt.get().enter();
        rt.block_on(async {
            let mut tx = self.pool().begin().await?;
            sqlx::query(
                "INSERT INTO cells (m, x, y, value, micros, computed_at)
                 SELECT m, x, y, value, micros, computed_at FROM imported_cells
                 WHERE m = $1 AND x = $2 AND y = $3 ON CONFLICT DO NOTHING",
            )
            .bind(ids[0])
            .bind(ids[1])
            .bind(ids[2])
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM imported_cells WHERE m = $1 AND x = $2 AND y = $3")
                .bind(ids[0])
                .bind(ids[1])
                .bind(ids[2])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn clamp_thresholds_at(&self, keys: &[String], q: f64) -> Result<Vec<Option<f64>>> {
        let found: HashMap<String, f64> = self.run(async {
            let rows: Vec<(String, f64)> = sqlx::query_as(
                "SELECT layers_key, threshold FROM clamp_thresholds WHERE q = $1 AND layers_key = ANY($2)",
            )
            .bind(q)
            .bind(keys)
            .fetch_all(self.pool())
            .await?;
            Ok(rows.into_iter().collect())
        })?;
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }

    fn put_clamp_threshold(&self, layers_key: &str, q: f64, threshold: f64) -> Result<()> {
        self.run(async {
            sqlx::query(
                "INSERT INTO clamp_thresholds (layers_key, q, threshold) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(layers_key)
            .bind(q)
            .bind(threshold)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn clamp_thresholds(&self) -> Result<Vec<(String, f64, f64)>> {
        self.run(async {
            Ok(
                sqlx::query_as("SELECT layers_key, q, threshold FROM clamp_thresholds")
                    .fetch_all(self.pool())
                    .await?,
            )
        })
    }

    fn knn_ties(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>> {
        self.run(async {
            Ok(sqlx::query_scalar(
                "SELECT rows FROM knn_ties WHERE hash = $1 AND prep = $2 AND k = $3",
            )
            .bind(hash.to_hex())
            .bind(prep)
            .bind(k as i64)
            .fetch_optional(self.pool())
            .await?)
        })
    }

    fn put_knn_ties(&self, hash: &BlobHash, prep: &str, k: usize, rows: &[u8]) -> Result<()> {
        self.run(async {
            sqlx::query(
                "INSERT INTO knn_ties (hash, prep, k, rows) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(hash.to_hex())
            .bind(prep)
            .bind(k as i64)
            .bind(rows)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn knn_graph_keys(&self) -> Result<Vec<(BlobHash, String, usize)>> {
        let rows: Vec<(String, String, i64)> = self.run(async {
            Ok(sqlx::query_as("SELECT hash, prep, k FROM knn_graphs")
                .fetch_all(self.pool())
                .await?)
        })?;
        rows.into_iter()
            .map(|(h, p, k)| Ok((h.parse()?, p, k as usize)))
            .collect()
    }

    fn knn_graph(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Option<Vec<u8>>> {
        self.run(async {
            Ok(sqlx::query_scalar(
                "SELECT graph FROM knn_graphs WHERE hash = $1 AND prep = $2 AND k = $3",
            )
            .bind(hash.to_hex())
            .bind(prep)
            .bind(k as i64)
            .fetch_optional(self.pool())
            .await?)
        })
    }

    fn put_knn_graph(&self, hash: &BlobHash, prep: &str, k: usize, graph: &[u8]) -> Result<()> {
        self.run(async {
            sqlx::query(
                "INSERT INTO knn_graphs (hash, prep, k, graph) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hash, prep, k) DO UPDATE SET graph = EXCLUDED.graph",
            )
            .bind(hash.to_hex())
            .bind(prep)
            .bind(k as i64)
            .bind(graph)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn put_knn_graph_part(
        &self,
        hash: &BlobHash,
        prep: &str,
        k: usize,
        rows: (i64, i64),
        part: &[u8],
    ) -> Result<()> {
        self.run(async {
            sqlx::query(
                "INSERT INTO knn_graph_parts (hash, prep, k, row_from, row_to, part)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (hash, prep, k, row_from)
                 DO UPDATE SET row_to = EXCLUDED.row_to, part = EXCLUDED.part",
            )
            .bind(hash.to_hex())
            .bind(prep)
            .bind(k as i64)
            .bind(rows.0)
            .bind(rows.1)
            .bind(part)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<Vec<GraphPart>> {
        let rows: Vec<(i64, i64, Vec<u8>)> = self.run(async {
            Ok(sqlx::query_as(
                "SELECT row_from, row_to, part FROM knn_graph_parts
                 WHERE hash = $1 AND prep = $2 AND k = $3 ORDER BY row_from",
            )
            .bind(hash.to_hex())
            .bind(prep)
            .bind(k as i64)
            .fetch_all(self.pool())
            .await?)
        })?;
        Ok(rows.into_iter().map(|(a, b, p)| ((a, b), p)).collect())
    }

    fn drop_knn_graph_parts(&self, hash: &BlobHash, prep: &str, k: usize) -> Result<()> {
        self.run(async {
            sqlx::query("DELETE FROM knn_graph_parts WHERE hash = $1 AND prep = $2 AND k = $3")
                .bind(hash.to_hex())
                .bind(prep)
                .bind(k as i64)
                .execute(self.pool())
                .await?;
            Ok(())
        })
    }

    fn draws(&self, k: &DrawKey) -> Result<Option<Vec<u8>>> {
        self.run(async {
            Ok(sqlx::query_scalar(
                "SELECT vals FROM null_samples WHERE pair_key = $1 AND kind = $2 AND metric = $3
                 AND version = $4 AND params = $5 AND prep_x = $6 AND prep_y = $7 AND seed = $8",
            )
            .bind(k.pair_key)
            .bind(k.kind)
            .bind(k.metric)
            .bind(i64::from(k.version))
            .bind(k.params)
            .bind(k.prep_x)
            .bind(k.prep_y)
            .bind(k.seed as i64)
            .fetch_optional(self.pool())
            .await?)
        })
    }

    fn put_draws(&self, k: &DrawKey, vals: &[u8]) -> Result<()> {
        self.run(async {
            sqlx::query(
                "INSERT INTO null_samples (pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (pair_key, kind, metric, version, params, prep_x, prep_y, seed)
                 DO UPDATE SET vals = excluded.vals
                 WHERE length(excluded.vals) > length(null_samples.vals)",
            )
            .bind(k.pair_key)
            .bind(k.kind)
            .bind(k.metric)
            .bind(i64::from(k.version))
            .bind(k.params)
            .bind(k.prep_x)
            .bind(k.prep_y)
            .bind(k.seed as i64)
            .bind(vals)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn integrity_check(&self) -> Result<Option<String>> {
        let sql = format!(
            "SELECT (SELECT count(*) FROM blobs WHERE NOT {})
                  + (SELECT count(*) FROM representations WHERE NOT {})",
            is_hash("hash"),
            is_hash("blob_hash")
        );
        let bad: i64 = self.run(async {
            Ok(sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(self.pool())
                .await?)
        })?;
        Ok((bad > 0).then(|| format!("{bad} blob or representation rows name no valid hash")))
    }

    fn gc_plan(&self, current: &[(&str, u32)]) -> Result<GcPlan> {
        let (names, versions) = current_arrays(current);
        self.run(async {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT hash, bytes FROM blobs WHERE hash NOT IN (SELECT blob_hash FROM representations)",
            )
            .fetch_all(self.pool())
            .await?;
            let unreferenced = rows
                .into_iter()
                .filter_map(|(h, b)| Some((h.parse().ok()?, b as u64)))
                .collect();
            let count = |what: &str| {
                let sql = format!("SELECT count(*) FROM {what}");
                let (names, versions) = (names.clone(), versions.clone());
                async move {
                    let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                        .bind(names)
                        .bind(versions)
                        .fetch_one(self.pool())
                        .await?;
                    Ok::<_, Error>(n as usize)
                }
            };
            Ok(GcPlan {
                unreferenced,
                stale_cells: count(STALE_CELLS).await?,
                stale_draws: count(STALE_DRAWS).await?,
            })
        })
    }

    fn gc_apply(&mut self, current: &[(&str, u32)], unreferenced: &[BlobHash]) -> Result<()> {
        let (names, versions) = current_arrays(current);
        let hashes: Vec<String> = unreferenced.iter().map(BlobHash::to_hex).collect();
        let rt = self.db.rt.clone();
        let _in = rt.get().enter();
        rt.block_on(async {
            let mut tx = self.pool().begin().await?;
            xact_lock(&mut tx, WRITE_LOCK).await?;
            for what in [STALE_CELLS, STALE_DRAWS] {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {what}")))
                    .bind(&names)
                    .bind(&versions)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM blobs WHERE hash = ANY($1)")
                .bind(&hashes)
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(
                "DELETE FROM knn_ties WHERE hash NOT IN (SELECT blob_hash FROM representations);
                 DELETE FROM knn_graphs WHERE hash NOT IN (SELECT blob_hash FROM representations);
                 DELETE FROM knn_graph_parts
                     WHERE hash NOT IN (SELECT blob_hash FROM representations);
                 DELETE FROM imported_cells AS i WHERE
                     EXISTS (SELECT 1 FROM cells c WHERE c.m = i.m AND c.x = i.x AND c.y = i.y)
                     OR i.x IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))
                     OR i.y IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations));
                 DELETE FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations);",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn export_snapshot(&self, dest: &Path, models: Option<&[String]>) -> Result<SnapshotInfo> {
        let tables = self.read_tables()?;
        super::snapshot::write(dest, &tables, models)
    }

    fn merge_snapshot(&mut self, snapshot: &Path, opts: MergeOptions) -> Result<MergeCounts> {
        let tables = super::snapshot::read_tables(snapshot)?;
        let rt = self.db.rt.clone();
        let _in = rt.get().enter();
        merge::merge(&rt, self.pool(), &tables, opts)
    }

    fn create_sweep(&mut self, spec: &str, label: &str, units: &[NewUnit]) -> Result<i64> {
        self.run(sweeps::create(self.pool(), spec, label, units))
    }

    fn claim_unit(
        &mut self,
        sweep: Option<i64>,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<Unit>> {
        self.run(sweeps::claim(self.pool(), sweep, worker, lease_ms))
    }

    fn renew_lease(&self, sweep: i64, idx: i64, worker: &str, lease_ms: i64) -> Result<bool> {
        self.run(sweeps::renew(self.pool(), sweep, idx, worker, lease_ms))
    }

    fn finish_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
        self.run(sweeps::finish(self.pool(), sweep, idx, worker))
    }

    fn release_unit(&mut self, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
        self.run(sweeps::release(self.pool(), sweep, idx, worker))
    }

    fn sweep_rows(&self) -> Result<(Vec<SweepRow>, Vec<UnitRow>)> {
        self.run(sweeps::rows(self.pool()))
    }

    fn now_ms(&self) -> Result<i64> {
        self.run(sweeps::now(self.pool()))
    }
}

impl PgCatalog {
    /// The URL as shown in messages.
    pub fn url(&self) -> &str {
        &self.shown
    }
}

/// Stores a pair's computed cells inside `tx`: the keys entered in the dictionaries (one
/// statement each, then one check that every id holds its own key), the cells in one statement.
async fn store_cells(
    tx: &mut PgConnection,
    keys: &[MetricKey],
    x: CellSide<'_>,
    y: CellSide<'_>,
    cells: &[NewCell],
) -> Result<()> {
    let ids: Vec<i64> = keys.iter().map(MetricKey::id).collect();
    let metrics: Vec<String> = keys.iter().map(|k| k.metric.to_string()).collect();
    let versions: Vec<i64> = keys.iter().map(|k| i64::from(k.version)).collect();
    let params: Vec<String> = keys.iter().map(|k| k.params.clone()).collect();
    sqlx::query(
        "INSERT INTO cell_metrics (id, metric, version, params)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&metrics)
    .bind(&versions)
    .bind(&params)
    .execute(&mut *tx)
    .await?;
    let wrong: Option<String> = sqlx::query_scalar(
        "SELECT k.metric || '(' || k.params || ')'
         FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS k(id, metric, version, params)
         WHERE NOT EXISTS (SELECT 1 FROM cell_metrics c WHERE c.id = k.id AND c.metric = k.metric
                           AND c.version = k.version AND c.params = k.params)
         LIMIT 1",
    )
    .bind(&ids)
    .bind(&metrics)
    .bind(&versions)
    .bind(&params)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(w) = wrong {
        return Err(collision(&format!("metric {w}")));
    }
    let mut side_ids = Vec::new();
    let mut hashes = Vec::new();
    let mut preps = Vec::new();
    for s in [&x, &y] {
        for ((h, p), &id) in s.hashes.iter().zip(s.preps).zip(s.ids) {
            side_ids.push(id);
            hashes.push(h.to_hex());
            preps.push(p.clone());
        }
    }
    sqlx::query(
        "INSERT INTO cell_sides (id, hash, prep)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&side_ids)
    .bind(&hashes)
    .bind(&preps)
    .execute(&mut *tx)
    .await?;
    let wrong: Option<String> = sqlx::query_scalar(
        "SELECT 'blob ' || k.hash || ' prepared ' || k.prep
         FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS k(id, hash, prep)
         WHERE NOT EXISTS (SELECT 1 FROM cell_sides s WHERE s.id = k.id AND s.hash = k.hash
                           AND s.prep = k.prep)
         LIMIT 1",
    )
    .bind(&side_ids)
    .bind(&hashes)
    .bind(&preps)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(w) = wrong {
        return Err(collision(&w));
    }
    let mut cols: [Vec<i64>; 4] = Default::default();
    let mut values = Vec::with_capacity(cells.len());
    for &(mi, i, j, v, secs) in cells {
        let [m, a, b] = stored_ids(&keys[mi], &x, &y, i, j);
        cols[0].push(m);
        cols[1].push(a);
        cols[2].push(b);
        cols[3].push((secs * 1e6).round() as i64);
        values.push(v);
    }
    let [m, a, b, micros] = cols;
    sqlx::query(
        "INSERT INTO cells (m, x, y, value, micros)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[], $5::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(m)
    .bind(a)
    .bind(b)
    .bind(values)
    .bind(micros)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A reader scanning served cells on the shared pool.
struct Reader(Arc<Db>);

impl CellReader for Reader {
    fn scan(&mut self, m: i64, lo: i64, hi: i64, f: &mut dyn FnMut(i64, i64, f64)) -> Result<()> {
        let db = &self.0;
        let rows: Vec<(i64, i64, f64)> = db.rt.block_on(async {
            sqlx::query_as("SELECT x, y, value FROM cells WHERE m = $1 AND x BETWEEN $2 AND $3")
                .bind(m)
                .bind(lo)
                .bind(hi)
                .fetch_all(&*db.pool)
                .await
        })?;
        for (x, y, v) in rows {
            f(x, y, v);
        }
        Ok(())
    }
}

/// The row operations of one write transaction.
struct Tx<'a> {
    rt: &'a Rt,
    conn: &'a mut sqlx::Transaction<'static, Postgres>,
}

impl Tx<'_> {
    /// Runs a statement; how many rows it changed.
    fn exec(
        &mut self,
        q: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64> {
        let conn = &mut **self.conn;
        Ok(self
            .rt
            .block_on(async { q.execute(conn).await })?
            .rows_affected())
    }

    /// Runs an UPDATE whose `$1` is `value` and `$2` a row id.
    fn set_by_id<'v, T>(&mut self, sql: &'static str, value: T, id: i64) -> Result<()>
    where
        T: 'v + Send + sqlx::Encode<'v, Postgres> + sqlx::Type<Postgres>,
    {
        self.exec(sqlx::query(sql).bind(value).bind(id)).map(drop)
    }

    /// The first column of the one row a query finds, if any.
    fn one<T>(
        &mut self,
        q: sqlx::query::QueryScalar<'_, Postgres, T, sqlx::postgres::PgArguments>,
    ) -> Result<Option<T>>
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let conn = &mut **self.conn;
        Ok(self.rt.block_on(async { q.fetch_optional(conn).await })?)
    }
}

impl CatalogTx for Tx<'_> {
    fn dataset(&mut self, name: &str) -> Result<Option<(DatasetId, usize)>> {
        let conn = &mut **self.conn;
        let row: Option<(i64, i64)> = self.rt.block_on(async {
            sqlx::query_as("SELECT id, n FROM datasets WHERE name = $1")
                .bind(name)
                .fetch_optional(conn)
                .await
        })?;
        Ok(row.map(|(id, n)| (DatasetId(id), n as usize)))
    }

    fn insert_dataset(&mut self, name: &str, n: usize, desc: Option<&str>) -> Result<DatasetId> {
        let q = sqlx::query_scalar(
            "INSERT INTO datasets (name, n, description) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(n as i64)
        .bind(desc);
        Ok(DatasetId(self.one(q)?.expect("RETURNING gives a row")))
    }

    fn insert_samples(&mut self, dataset: DatasetId, ids: &[String]) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO dataset_samples (dataset_id, idx, sample_id)
             SELECT $1, t.i - 1, t.s FROM UNNEST($2::text[]) WITH ORDINALITY AS t(s, i)",
        )
        .bind(dataset.0)
        .bind(ids);
        self.exec(q).map(drop)
    }

    fn model(&mut self, name: &str) -> Result<Option<(ModelId, String)>> {
        let conn = &mut **self.conn;
        let row: Option<(i64, String)> = self.rt.block_on(async {
            sqlx::query_as("SELECT id, modality FROM models WHERE name = $1")
                .bind(name)
                .fetch_optional(conn)
                .await
        })?;
        Ok(row.map(|(id, m)| (ModelId(id), m)))
    }

    fn insert_model(&mut self, name: &str, modality: &str, fam: Option<&str>) -> Result<ModelId> {
        let q = sqlx::query_scalar(
            "INSERT INTO models (name, modality, family) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(modality)
        .bind(fam);
        Ok(ModelId(self.one(q)?.expect("RETURNING gives a row")))
    }

    fn set_num_params(&mut self, model: ModelId, num_params: i64) -> Result<()> {
        self.set_by_id(
            "UPDATE models SET num_params = $1 WHERE id = $2",
            num_params,
            model.0,
        )
    }

    fn fill_family(&mut self, model: ModelId, family: &str) -> Result<()> {
        let sql = "UPDATE models SET family = $1 WHERE id = $2 AND family IS NULL";
        self.set_by_id(sql, family, model.0)
    }

    fn checkpoint(&mut self, model: ModelId, name: &str) -> Result<Option<CheckpointId>> {
        let q = sqlx::query_scalar("SELECT id FROM checkpoints WHERE model_id = $1 AND name = $2")
            .bind(model.0)
            .bind(name);
        Ok(self.one(q)?.map(CheckpointId))
    }

    fn insert_checkpoint(
        &mut self,
        m: ModelId,
        name: &str,
        step: Option<i64>,
    ) -> Result<CheckpointId> {
        let q = sqlx::query_scalar(
            "INSERT INTO checkpoints (model_id, name, step) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(m.0)
        .bind(name)
        .bind(step);
        Ok(CheckpointId(self.one(q)?.expect("RETURNING gives a row")))
    }

    fn fill_step(&mut self, checkpoint: CheckpointId, step: i64) -> Result<()> {
        let sql = "UPDATE checkpoints SET step = $1 WHERE id = $2 AND step IS NULL";
        self.set_by_id(sql, step, checkpoint.0)
    }

    fn insert_blob(&mut self, b: &BlobRow) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO blobs (hash, dtype, n, d, bytes) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(b.hash.to_hex())
        .bind(&b.dtype)
        .bind(b.n as i64)
        .bind(b.d as i64)
        .bind(b.bytes as i64);
        self.exec(q).map(drop)
    }

    fn rep_blob(&mut self, at: RepSlot) -> Result<Option<BlobHash>> {
        let q = sqlx::query_scalar::<_, String>(
            "SELECT blob_hash FROM representations
             WHERE checkpoint_id = $1 AND dataset_id = $2 AND layer = $3 AND pool = $4",
        )
        .bind(at.checkpoint.0)
        .bind(at.dataset.0)
        .bind(at.layer as i64)
        .bind(at.pool);
        self.one(q)?.map(|h| h.parse()).transpose()
    }

    fn insert_rep(&mut self, at: RepSlot, rep: NewRep) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO representations (checkpoint_id, dataset_id, layer, pool, blob_hash, source, layout)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(at.checkpoint.0)
        .bind(at.dataset.0)
        .bind(at.layer as i64)
        .bind(at.pool)
        .bind(rep.blob.to_hex())
        .bind(rep.source)
        .bind(rep.layout);
        self.exec(q).map(drop)
    }

    fn fill_layout(&mut self, at: RepSlot, layout: &str) -> Result<bool> {
        let q = sqlx::query(
            "UPDATE representations SET layout = $5 WHERE checkpoint_id = $1
             AND dataset_id = $2 AND layer = $3 AND pool = $4 AND layout IS NULL",
        )
        .bind(at.checkpoint.0)
        .bind(at.dataset.0)
        .bind(at.layer as i64)
        .bind(at.pool)
        .bind(layout);
        Ok(self.exec(q)? > 0)
    }

    fn score(&mut self, checkpoint: CheckpointId, name: &str) -> Result<Option<ScoreValue>> {
        let conn = &mut **self.conn;
        let row: Option<(f64, Option<i64>)> = self.rt.block_on(async {
            sqlx::query_as(
                "SELECT value, higher_is_better FROM scores WHERE checkpoint_id = $1 AND name = $2",
            )
            .bind(checkpoint.0)
            .bind(name)
            .fetch_optional(conn)
            .await
        })?;
        Ok(row.map(|(value, h)| ScoreValue {
            value,
            higher_is_better: h.map(|h| h != 0),
        }))
    }

    fn put_score(&mut self, checkpoint: CheckpointId, name: &str, s: ScoreValue) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO scores (checkpoint_id, name, value, higher_is_better) VALUES ($1, $2, $3, $4)
             ON CONFLICT (checkpoint_id, name) DO UPDATE SET value = excluded.value,
                 higher_is_better = excluded.higher_is_better",
        )
        .bind(checkpoint.0)
        .bind(name)
        .bind(s.value)
        .bind(s.higher_is_better.map(i64::from));
        self.exec(q).map(drop)
    }

    fn put_meta(&mut self, checkpoint: CheckpointId, key: &str, value: &str) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO checkpoint_meta (checkpoint_id, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (checkpoint_id, key) DO UPDATE SET value = excluded.value
             WHERE checkpoint_meta.value != excluded.value",
        )
        .bind(checkpoint.0)
        .bind(key)
        .bind(value);
        Ok(self.exec(q)? > 0)
    }
}
