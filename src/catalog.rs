//! The SQLite catalog: every row of metadata and every cached number (DESIGN.md §1).
//!
//! Opened in WAL mode with foreign keys on and a busy timeout, so several `prh` processes can
//! share one registry. The schema comes from the numbered files in `migrations/`, embedded in
//! the binary and applied in order, each in its own transaction; `PRAGMA user_version` records
//! how many have been applied. A shipped migration is never edited.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::BlobHash;

mod cells;
pub(crate) use cells::register_functions;
pub use cells::{CellSide, MetricKey, NewCell, metric_id, side_id, side_ids};

/// The migrations, in order. Index + 1 is the schema version each one produces.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    ("0002_cache", include_str!("../migrations/0002_cache.sql")),
    ("0003_nulls", include_str!("../migrations/0003_nulls.sql")),
    (
        "0004_imported_cells",
        include_str!("../migrations/0004_imported_cells.sql"),
    ),
    (
        "0005_checkpoint_meta",
        include_str!("../migrations/0005_checkpoint_meta.sql"),
    ),
    ("0006_layout", include_str!("../migrations/0006_layout.sql")),
    (
        "0007_knn_ties",
        include_str!("../migrations/0007_knn_ties.sql"),
    ),
    (
        "0008_compact_cells",
        include_str!("../migrations/0008_compact_cells.sql"),
    ),
];

/// How long a writer waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A dataset row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Dataset {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub n: usize,
    pub description: Option<String>,
    pub has_ids: bool,
}

/// A model row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Model {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub modality: String,
    pub family: Option<String>,
    pub num_params: Option<i64>,
}

/// A checkpoint row, with its model's name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkpoint {
    #[serde(skip)]
    pub id: i64,
    pub model: String,
    pub checkpoint: String,
    pub step: Option<i64>,
    pub created_at: String,
    /// Provenance given at ingest (`--meta KEY=VALUE`), by key.
    pub meta: std::collections::BTreeMap<String, String>,
}

/// A representation with everything a listing shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rep {
    pub hash: String,
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
    #[serde(skip)]
    pub checkpoint_id: i64,
    #[serde(skip)]
    pub modality: String,
}

/// A score row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    pub model: String,
    pub checkpoint: String,
    pub name: String,
    pub value: f64,
    pub higher_is_better: Option<bool>,
}

/// Filters for [`Catalog::reps`].
#[derive(Debug, Clone, Default)]
pub struct RepFilter {
    pub model: Option<String>,
    pub checkpoint_id: Option<i64>,
    pub dataset: Option<String>,
    pub pool: Option<String>,
    pub hash_prefix: Option<String>,
}

/// A connection to `catalog.db`.
pub struct Catalog {
    conn: Connection,
}

impl Catalog {
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
        let mut cat = Catalog { conn };
        cat.migrate()?;
        Ok(cat)
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<usize> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(v as usize)
    }

    fn migrate(&mut self) -> Result<()> {
        let current = self.schema_version()?;
        if current > MIGRATIONS.len() {
            return Err(Error::Invalid(format!(
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

    /// The raw connection, for queries this module does not wrap.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` inside an IMMEDIATE transaction (takes the write lock up front, so concurrent
    /// writers queue on the busy timeout instead of failing on lock upgrade).
    pub fn write<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    // ----- datasets -----

    /// The dataset called `name`, if any.
    pub fn dataset(&self, name: &str) -> Result<Option<Dataset>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, n, description,
                        EXISTS(SELECT 1 FROM dataset_samples s WHERE s.dataset_id = d.id)
                 FROM datasets d WHERE name = ?1",
                [name],
                dataset_row,
            )
            .optional()?)
    }

    /// All datasets, by name.
    pub fn datasets(&self) -> Result<Vec<Dataset>> {
        let mut st = self.conn.prepare(
            "SELECT id, name, n, description,
                    EXISTS(SELECT 1 FROM dataset_samples s WHERE s.dataset_id = d.id)
             FROM datasets d ORDER BY name",
        )?;
        let rows = st.query_map([], dataset_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sample ids of a dataset, in order (empty when it has none).
    pub fn dataset_ids(&self, dataset_id: i64) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT sample_id FROM dataset_samples WHERE dataset_id = ?1 ORDER BY idx")?;
        let rows = st.query_map([dataset_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ----- models and checkpoints -----

    /// The model called `name`, if any.
    pub fn model(&self, name: &str) -> Result<Option<Model>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, modality, family, num_params FROM models WHERE name = ?1",
                [name],
                model_row,
            )
            .optional()?)
    }

    /// All models, by name.
    pub fn models(&self) -> Result<Vec<Model>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, modality, family, num_params FROM models ORDER BY name")?;
        let rows = st.query_map([], model_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Checkpoints, optionally of one model, ordered by model then step then creation.
    pub fn checkpoints(&self, model: Option<&str>) -> Result<Vec<Checkpoint>> {
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
        let mut meta = self.all_checkpoint_meta()?;
        for c in &mut out {
            c.meta = meta.remove(&c.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// Every checkpoint's provenance, by checkpoint id.
    pub fn all_checkpoint_meta(
        &self,
    ) -> Result<std::collections::HashMap<i64, std::collections::BTreeMap<String, String>>> {
        let mut st = self
            .conn
            .prepare("SELECT checkpoint_id, key, value FROM checkpoint_meta")?;
        let mut out: std::collections::HashMap<i64, std::collections::BTreeMap<String, String>> =
            Default::default();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            out.entry(r.get(0)?)
                .or_default()
                .insert(r.get(1)?, r.get(2)?);
        }
        Ok(out)
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

    // ----- representations -----

    /// Representations matching a filter, ordered by model, checkpoint, dataset, pool, layer.
    pub fn reps(&self, f: &RepFilter) -> Result<Vec<Rep>> {
        let mut st = self.conn.prepare(
            "SELECT r.blob_hash, m.name, c.name, ds.name, r.layer, r.pool, b.dtype, b.n, b.d,
                    c.id, m.modality, r.layout
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
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every blob hash the catalog knows (whether referenced or not).
    pub fn blob_hashes(&self) -> Result<Vec<BlobHash>> {
        let mut st = self.conn.prepare("SELECT hash FROM blobs ORDER BY hash")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|h| h?.parse()).collect::<Result<Vec<_>>>()
    }

    // ----- scores -----

    /// Scores, optionally of one model.
    pub fn scores(&self, model: Option<&str>) -> Result<Vec<Score>> {
        let mut st = self.conn.prepare(
            "SELECT m.name, c.name, s.name, s.value, s.higher_is_better
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
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        let c = Catalog::create(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len());
        drop(c);
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len());
        let mode: String = c
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = c
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let c = Catalog::create(&p).unwrap();
        c.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Catalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("newer than this prh"), "{e}");
    }

    #[test]
    fn only_create_makes_a_catalog_and_foreign_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.db");
        let e = Catalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("catalog.db"), "{e}");
        assert!(!p.exists(), "open must not create a catalog");
        std::fs::write(&p, b"").unwrap();
        let e = Catalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a prh catalog (the file is empty)"), "{e}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        std::fs::remove_file(&p).unwrap();
        let other = Connection::open(&p).unwrap();
        other
            .execute_batch("CREATE TABLE notes (t TEXT); PRAGMA user_version = 2;")
            .unwrap();
        drop(other);
        let before = std::fs::read(&p).unwrap();
        let e = Catalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("no prh schema"), "{e}");
        let e = Catalog::create(&p).err().unwrap().to_string();
        assert!(e.contains("no prh schema"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        std::fs::write(
            &p,
            b"hello, not sqlite at all, but long enough to look like a header....",
        )
        .unwrap();
        let e = Catalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a prh catalog"), "{e}");
    }
}
