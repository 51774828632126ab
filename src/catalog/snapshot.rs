//! A bundle's `catalog.db` (docs/design.md §10): an SQLite catalog whatever the registry's backend,
//! written by `export` and, on import, checked by [`check`] before anything of it is read.
//! Every backend uses it (the SQLite one to export, PostgreSQL to write and read bundles), so it
//! lives beside them; with `catalog/sqlite/` it is the only code that names rusqlite.

use std::path::Path;

use rusqlite::Connection;

use super::sqlite::cells::{self, register_functions};
use super::sqlite::{MIGRATIONS, SqliteCatalog};
use crate::catalog::tables::{Kind, TABLES, TableRows, Value};
use crate::catalog::{CellRow, CellTable, SnapshotInfo};
use crate::error::{Error, Result};
use crate::names::validate_name;
use crate::store::BlobHash;

/// Writes a consistent snapshot of the catalog on `conn` to `dest` (`VACUUM INTO`, consistent
/// while others write), keeping only `models` and what they need when given.
pub(crate) fn export(
    conn: &Connection,
    dest: &Path,
    models: Option<&[String]>,
) -> Result<SnapshotInfo> {
    conn.execute("VACUUM INTO ?1", [dest.to_string_lossy().as_ref()])?;
    finish(dest, models)
}

/// Writes `tables` (another backend's rows, [`crate::catalog::tables`]) as a new SQLite catalog
/// at `dest`, keeping only `models` and what they need when given.
pub fn write(dest: &Path, tables: &[TableRows], models: Option<&[String]>) -> Result<SnapshotInfo> {
    let cat = SqliteCatalog::create(dest)?;
    {
        let tx = cat.conn.unchecked_transaction()?;
        for t in tables {
            let marks: Vec<String> = (1..=t.spec.columns.len())
                .map(|i| format!("?{i}"))
                .collect();
            let mut st = tx.prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({})",
                t.spec.name,
                t.spec.column_list(),
                marks.join(", ")
            ))?;
            for row in &t.rows {
                st.execute(rusqlite::params_from_iter(row.iter().map(sql_value)))?;
            }
        }
        tx.commit()?;
    }
    drop(cat);
    finish(dest, models)
}

/// Every table of the (checked) catalog file at `path` as plain rows, for another backend.
pub fn read_tables(path: &Path) -> Result<Vec<TableRows>> {
    use rusqlite::types::ValueRef;
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut out = Vec::with_capacity(TABLES.len());
    for spec in TABLES {
        let mut st = db.prepare(&format!("SELECT {} FROM {}", spec.column_list(), spec.name))?;
        let mut rows = st.query([])?;
        let mut got = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(spec.columns.len());
            for (i, (_, kind)) in spec.columns.iter().enumerate() {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) if *kind == Kind::Real => Value::Real(v as f64),
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                });
            }
            got.push(row);
        }
        out.push(TableRows { spec, rows: got });
    }
    Ok(out)
}

/// A plain value as SQLite's.
fn sql_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Int(i) => V::Integer(*i),
        Value::Real(r) => V::Real(*r),
        Value::Text(t) => V::Text(t.clone()),
        Value::Bytes(b) => V::Blob(b.clone()),
    }
}

/// Drops from the snapshot at `dest` what `models` do not need (when given), sets it to a
/// single-file journal and reports what it holds.
fn finish(dest: &Path, models: Option<&[String]>) -> Result<SnapshotInfo> {
    let db = Connection::open(dest)?;
    // Sweep bookkeeping is this registry's own business, and kNN graphs are derived data the
    // importer recomputes (docs/design.md §13): neither travels.
    let graphs: i64 = db.query_row("SELECT count(*) FROM knn_graphs", [], |r| r.get(0))?;
    db.execute_batch(
        "DELETE FROM sweep_units; DELETE FROM sweeps; DELETE FROM knn_graphs;
         DELETE FROM knn_graph_parts;",
    )?;
    if graphs > 0 && models.is_none() {
        db.execute_batch("VACUUM")?; // the graphs' pages would otherwise travel as free pages
    }
    db.pragma_update(None, "journal_mode", "DELETE")?;
    if let Some(keep) = models {
        for m in keep {
            let found: i64 =
                db.query_row("SELECT count(*) FROM models WHERE name = ?1", [m], |r| {
                    r.get(0)
                })?;
            if found == 0 {
                return Err(Error::NotFound(format!("no model named {m} to export")));
            }
        }
        db.execute_batch("CREATE TEMP TABLE keep (name TEXT PRIMARY KEY)")?;
        for m in keep {
            db.execute("INSERT OR IGNORE INTO keep VALUES (?1)", [m])?;
        }
        db.execute_batch(
            "PRAGMA foreign_keys = OFF;
             DELETE FROM scores WHERE checkpoint_id IN (SELECT c.id FROM checkpoints c JOIN models m ON m.id = c.model_id WHERE m.name NOT IN (SELECT name FROM keep));
             DELETE FROM checkpoint_meta WHERE checkpoint_id IN (SELECT c.id FROM checkpoints c JOIN models m ON m.id = c.model_id WHERE m.name NOT IN (SELECT name FROM keep));
             DELETE FROM representations WHERE checkpoint_id IN (SELECT c.id FROM checkpoints c JOIN models m ON m.id = c.model_id WHERE m.name NOT IN (SELECT name FROM keep));
             DELETE FROM checkpoints WHERE model_id IN (SELECT id FROM models WHERE name NOT IN (SELECT name FROM keep));
             DELETE FROM models WHERE name NOT IN (SELECT name FROM keep);
             DELETE FROM blobs WHERE hash NOT IN (SELECT blob_hash FROM representations);
             DELETE FROM cell_sides WHERE hash NOT IN (SELECT hash FROM blobs);
             DELETE FROM cells WHERE x NOT IN (SELECT id FROM cell_sides) OR y NOT IN (SELECT id FROM cell_sides);
             DELETE FROM imported_cells WHERE x NOT IN (SELECT id FROM cell_sides) OR y NOT IN (SELECT id FROM cell_sides);
             DELETE FROM null_samples;
             DELETE FROM dataset_samples WHERE dataset_id NOT IN (SELECT dataset_id FROM representations);
             DELETE FROM datasets WHERE id NOT IN (SELECT dataset_id FROM representations);",
        )?;
        db.execute_batch("VACUUM")?;
    }
    let schema_version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut blobs = Vec::new();
    {
        let mut st = db.prepare("SELECT hash, bytes FROM blobs ORDER BY hash")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            blobs.push((r.get::<_, String>(0)?.parse()?, r.get::<_, i64>(1)? as u64));
        }
    }
    let count = |sql: &str| -> Result<usize> {
        Ok(db.query_row(sql, [], |r| r.get::<_, i64>(0))? as usize)
    };
    Ok(SnapshotInfo {
        schema_version: schema_version as usize,
        blobs,
        models: count("SELECT count(*) FROM models")?,
        representations: count("SELECT count(*) FROM representations")?,
        cells: count("SELECT count(*) FROM cells")?,
    })
}

/// Checks a staged bundle catalog before anything of it is read: exactly prh's schema for its
/// version, then brought to ours, rows that make sense, every cache key id derived from its
/// content, SQLite's integrity check. The message says what is wrong.
pub fn check(staged: &Path) -> std::result::Result<(), String> {
    check_schema(staged)?;
    drop(SqliteCatalog::open(staged).map_err(|e| e.to_string())?);
    check_rows(staged)?;
    let db = Connection::open(staged).map_err(|e| e.to_string())?;
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if ok != "ok" {
        return Err(format!("fails its integrity check: {ok}"));
    }
    Ok(())
}

/// The name columns a bundle's catalog holds, as (what, table, column).
const NAME_COLUMNS: [(&str, &str, &str); 7] = [
    ("dataset", "datasets", "name"),
    ("model", "models", "name"),
    ("modality", "models", "modality"),
    ("family", "models", "family"),
    ("checkpoint", "checkpoints", "name"),
    ("score", "scores", "name"),
    ("meta key", "checkpoint_meta", "key"),
];

/// Puts a checked snapshot's names into NFC, as prh stores every name a user gives (a bundle
/// written before prh normalised names may spell one decomposed, and no lookup would find it).
/// Two names that are one in NFC are refused, naming it. Returns how many names changed.
pub fn names_to_nfc(staged: &Path) -> std::result::Result<usize, String> {
    use rusqlite::functions::FunctionFlags;
    let sql = |e: rusqlite::Error| e.to_string();
    let mut db = Connection::open(staged).map_err(sql)?;
    db.create_scalar_function(
        "prh_nfc",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(crate::names::nfc(&ctx.get::<String>(0)?)),
    )
    .map_err(sql)?;
    let tx = db.transaction().map_err(sql)?;
    let mut changed = 0;
    for (what, table, col) in NAME_COLUMNS {
        let stmt = format!(
            "UPDATE {table} SET {col} = prh_nfc({col}) WHERE {col} IS NOT NULL AND {col} <> prh_nfc({col})"
        );
        changed += match tx.execute(&stmt, []) {
            Ok(n) => n,
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let clash: String = tx
                    .query_row(
                        &format!(
                            "SELECT prh_nfc({col}) FROM {table} WHERE {col} IS NOT NULL
                             GROUP BY prh_nfc({col}) HAVING count(DISTINCT {col}) > 1 LIMIT 1"
                        ),
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sql)?;
                return Err(format!(
                    "two {what} names are the same name in two Unicode spellings ({clash}, composed and decomposed); prh keeps one spelling (NFC) of each name, so rename one in the registry that wrote the bundle"
                ));
            }
            Err(e) => return Err(sql(e)),
        };
    }
    tx.commit().map_err(sql)?;
    Ok(changed)
}

/// The blob rows of a checked snapshot: (hash as written, bytes).
pub fn blobs(staged: &Path) -> Result<Vec<(String, u64)>> {
    let db = Connection::open(staged)?;
    let mut st = db.prepare("SELECT hash, bytes FROM blobs")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The served cells of a checked snapshot, keys spelled out.
pub fn cell_rows(staged: &Path) -> Result<Vec<CellRow>> {
    let db = Connection::open(staged)?;
    Ok(cells::rows(&db, CellTable::Served)?)
}

/// The distinct preparation keys of a checked snapshot's cache.
pub fn preps(staged: &Path) -> Result<Vec<String>> {
    let db = Connection::open(staged)?;
    let mut st = db.prepare("SELECT DISTINCT prep FROM cell_sides")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The layer sets of a checked snapshot: each (checkpoint, dataset, pool)'s blobs in layer
/// order.
pub fn layer_sets(staged: &Path) -> Result<Vec<Vec<BlobHash>>> {
    let db = Connection::open(staged)?;
    let mut st = db.prepare(
        "SELECT checkpoint_id, dataset_id, pool, blob_hash FROM representations
         ORDER BY checkpoint_id, dataset_id, pool, layer",
    )?;
    let rows: Vec<(i64, i64, String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut sets: Vec<Vec<BlobHash>> = Vec::new();
    let mut last: Option<(i64, i64, String)> = None;
    for (c, d, p, h) in rows {
        let key = Some((c, d, p));
        if key != last {
            sets.push(Vec::new());
            last = key;
        }
        sets.last_mut().expect("pushed").push(h.parse()?);
    }
    Ok(sets)
}

/// The schema objects of a catalog (type, name, table, SQL), in a fixed order.
fn schema_objects(db: &Connection) -> rusqlite::Result<Vec<[Option<String>; 4]>> {
    let mut st =
        db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")?;
    st.query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?
        .collect()
}

/// Accepts only a catalog whose schema is exactly what prh's migrations make for its version:
/// no views, triggers, extra tables or changed columns.
fn check_schema(staged: &Path) -> std::result::Result<(), String> {
    use rusqlite::OpenFlags;
    let sql = |e: rusqlite::Error| format!("not a readable SQLite catalog: {e}");
    let db = Connection::open_with_flags(staged, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    db.pragma_update(None, "trusted_schema", "OFF")
        .map_err(sql)?;
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version < 1 || version as usize > MIGRATIONS.len() {
        return Err(format!(
            "schema version {version} is not one this prh knows (1 to {})",
            MIGRATIONS.len()
        ));
    }
    let expected = {
        let mem = Connection::open_in_memory().map_err(sql)?;
        register_functions(&mem).map_err(sql)?;
        for (_, m) in &MIGRATIONS[..version as usize] {
            mem.execute_batch(m).map_err(sql)?;
        }
        schema_objects(&mem).map_err(sql)?
    };
    let got = schema_objects(&db).map_err(sql)?;
    if got == expected {
        return Ok(());
    }
    let name = |o: &[Option<String>; 4]| {
        format!(
            "{} {}",
            o[0].as_deref().unwrap_or("?"),
            o[1].as_deref().unwrap_or("?")
        )
    };
    for o in &got {
        match expected.iter().find(|e| e[0] == o[0] && e[1] == o[1]) {
            None => {
                return Err(format!(
                    "holds {}, which a prh catalog does not (only prh's own schema is accepted)",
                    name(o)
                ));
            }
            Some(e) if e != o => {
                return Err(format!("{} is not defined as prh defines it", name(o)));
            }
            Some(_) => {}
        }
    }
    Err("lacks part of prh's schema".into())
}

/// Checks the values of a staged catalog (already at our schema): names a listing can print,
/// numbers of the right type, every representation naming a blob row.
fn check_rows(staged: &Path) -> std::result::Result<(), String> {
    let db = Connection::open(staged).map_err(|e| e.to_string())?;
    let names: &[(&str, &str)] = &[
        ("dataset", "SELECT name FROM datasets"),
        ("model", "SELECT name FROM models"),
        ("modality", "SELECT DISTINCT modality FROM models"),
        (
            "family",
            "SELECT DISTINCT family FROM models WHERE family IS NOT NULL",
        ),
        ("checkpoint", "SELECT name FROM checkpoints"),
        ("pool", "SELECT DISTINCT pool FROM representations"),
        ("score", "SELECT DISTINCT name FROM scores"),
        ("meta key", "SELECT DISTINCT key FROM checkpoint_meta"),
    ];
    for (what, q) in names {
        let mut st = db.prepare(q).map_err(|e| e.to_string())?;
        let vals: Vec<rusqlite::types::Value> = st
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        for v in vals {
            let rusqlite::types::Value::Text(t) = v else {
                return Err(format!("a {what} name is not text"));
            };
            validate_name(what, &t).map_err(|e| e.to_string())?;
        }
    }
    let bad_rows: &[(&str, &str)] = &[
        (
            "datasets with a non-integer n",
            "SELECT count(*) FROM datasets WHERE typeof(n) != 'integer' OR n < 1",
        ),
        (
            "blobs with malformed fields",
            "SELECT count(*) FROM blobs WHERE typeof(hash) != 'text' OR length(hash) != 64 OR typeof(n) != 'integer' OR typeof(d) != 'integer' OR typeof(bytes) != 'integer'",
        ),
        (
            "representations with malformed fields",
            "SELECT count(*) FROM representations WHERE typeof(layer) != 'integer' OR typeof(blob_hash) != 'text'",
        ),
        (
            "representations with an unknown layout",
            "SELECT count(*) FROM representations WHERE layout IS NOT NULL AND layout NOT IN ('stacked', 'layers')",
        ),
        (
            "representations naming no blob row",
            "SELECT count(*) FROM representations WHERE blob_hash NOT IN (SELECT hash FROM blobs)",
        ),
        (
            "checkpoints with a non-integer step",
            "SELECT count(*) FROM checkpoints WHERE step IS NOT NULL AND typeof(step) != 'integer'",
        ),
        (
            "scores that are not finite numbers",
            "SELECT count(*) FROM scores WHERE typeof(value) NOT IN ('real', 'integer') OR abs(value) > 1.7976931348623157e308",
        ),
        (
            "cached cells with malformed fields",
            "SELECT count(*) FROM cells WHERE typeof(value) NOT IN ('real', 'integer') OR abs(value) > 1.7976931348623157e308 OR typeof(micros) != 'integer' OR typeof(computed_at) != 'integer'",
        ),
        (
            "cached cells naming no key",
            "SELECT count(*) FROM cells WHERE m NOT IN (SELECT id FROM cell_metrics) OR x NOT IN (SELECT id FROM cell_sides) OR y NOT IN (SELECT id FROM cell_sides)",
        ),
    ];
    {
        let mut st = db
            .prepare("SELECT key, value FROM checkpoint_meta")
            .map_err(|e| e.to_string())?;
        let rows: Vec<(rusqlite::types::Value, rusqlite::types::Value)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        for (k, v) in rows {
            let (rusqlite::types::Value::Text(k), rusqlite::types::Value::Text(v)) = (k, v) else {
                return Err("a meta entry is not text".into());
            };
            crate::names::validate_meta_value(&k, &v).map_err(|e| e.to_string())?;
        }
    }
    for (what, q) in bad_rows {
        let k: i64 = db
            .query_row(q, [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if k > 0 {
            return Err(format!("{k} {what}"));
        }
    }
    check_cell_keys(&db)
}

/// Every cache key id of a staged catalog must be the one its content derives (ids are how
/// rows from different registries meet: a forged one would file a value under another key).
fn check_cell_keys(db: &Connection) -> std::result::Result<(), String> {
    use rusqlite::types::Value;
    let e = |e: rusqlite::Error| e.to_string();
    let mut st = db
        .prepare("SELECT id, hash, prep FROM cell_sides")
        .map_err(e)?;
    let rows: Vec<(Value, Value, Value)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(e)?;
    for row in rows {
        let ok = match &row {
            // The hash must be one prh writes: 64 lower-case hex digits.
            (Value::Integer(id), Value::Text(h), Value::Text(p)) => {
                h.parse::<BlobHash>().is_ok_and(|b| b.to_hex() == *h)
                    && crate::catalog::side_id(h, p) == *id
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "a cache key side ({:?}) does not match its id",
                row.1
            ));
        }
    }
    let mut st = db
        .prepare("SELECT id, metric, version, params FROM cell_metrics")
        .map_err(e)?;
    let rows: Vec<[Value; 4]> = st
        .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))
        .and_then(|rows| rows.collect())
        .map_err(e)?;
    for row in rows {
        let ok = match &row {
            [
                Value::Integer(id),
                Value::Text(m),
                Value::Integer(v),
                Value::Text(p),
            ] => crate::catalog::metric_id(m, *v, p) == *id,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "a cache key metric ({:?}) does not match its id",
                row[1]
            ));
        }
    }
    Ok(())
}
