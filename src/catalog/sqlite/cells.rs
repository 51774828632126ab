//! The cell cache in SQLite: `cells` and `imported_cells` keyed by (m, x, y) over the
//! `cell_metrics` and `cell_sides` dictionaries (see [`crate::catalog`]'s keys). One statement
//! finds every cached cell of a model pair, one transaction stores the pair's computed cells.

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, params};

use crate::catalog::{
    CachedCell, CellRow, CellSide, CellTable, MetricKey, NewCell, collision, layers_by_id,
    metric_id, side_id, spread, stored_ids,
};
use crate::error::Result;

/// Ids as a JSON array, for `json_each`.
fn json_array(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", list.join(","))
}

/// Makes `prh_side_id(hash, prep)` and `prh_metric_id(metric, version, params)` callable from
/// SQL on `conn` (the migration to compact keys converts existing rows with them).
pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("prh_side_id", 2, flags, |ctx| {
        Ok(side_id(&ctx.get::<String>(0)?, &ctx.get::<String>(1)?))
    })?;
    conn.create_scalar_function("prh_metric_id", 3, flags, |ctx| {
        Ok(metric_id(
            &ctx.get::<String>(0)?,
            ctx.get::<i64>(1)?,
            &ctx.get::<String>(2)?,
        ))
    })
}

const FIND: &str = "SELECT x, y, value FROM cells
     WHERE m = ?1 AND x IN (SELECT value FROM json_each(?2)) AND y IN (SELECT value FROM json_each(?3))";

/// The cached cells of the pair `x` × `y` for one metric: one statement (two for symmetric
/// metrics, one per stored orientation).
pub(super) fn cached(
    conn: &Connection,
    m: &MetricKey,
    x: CellSide,
    y: CellSide,
) -> Result<Vec<CachedCell>> {
    let (ix, iy) = (layers_by_id(x.ids), layers_by_id(y.ids));
    let (jx, jy) = (json_array(x.ids), json_array(y.ids));
    let mut st = conn.prepare_cached(FIND)?;
    let mut out = Vec::new();
    let orientations: &[bool] = if m.symmetric {
        &[false, true]
    } else {
        &[false]
    };
    let mid = m.id();
    for &swapped in orientations {
        let (a, b) = if swapped { (&jy, &jx) } else { (&jx, &jy) };
        let rows: Vec<(i64, i64, f64)> = st
            .query_map(params![mid, a, b], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        spread(rows, swapped, &ix, &iy, &mut out);
    }
    Ok(out)
}

/// Stores a pair's computed cells inside the transaction `tx`, entering their keys in the
/// dictionaries first.
pub(super) fn store(
    tx: &rusqlite::Transaction,
    keys: &[MetricKey],
    x: CellSide,
    y: CellSide,
    cells: &[NewCell],
) -> Result<()> {
    for k in keys {
        claim(
            tx,
            "cell_metrics (id, metric, version, params) VALUES (?1, ?2, ?3, ?4)",
            "metric = ?2 AND version = ?3 AND params = ?4 FROM cell_metrics",
            params![k.id(), k.metric, k.version, k.params],
            || format!("metric {}({})", k.metric, k.params),
        )?;
    }
    for s in [&x, &y] {
        for ((h, p), &id) in s.hashes.iter().zip(s.preps).zip(s.ids) {
            let hex = h.to_hex();
            claim(
                tx,
                "cell_sides (id, hash, prep) VALUES (?1, ?2, ?3)",
                "hash = ?2 AND prep = ?3 FROM cell_sides",
                params![id, hex, p],
                || format!("blob {hex} prepared {p}"),
            )?;
        }
    }
    let mut ins = tx.prepare_cached(
        "INSERT OR IGNORE INTO cells (m, x, y, value, micros) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for &(mi, i, j, v, secs) in cells {
        let [m, a, b] = stored_ids(&keys[mi], &x, &y, i, j);
        let micros = (secs * 1e6).round() as i64;
        ins.execute(params![m, a, b, v, micros])?;
    }
    Ok(())
}

/// Enters a key in a dictionary (`INSERT OR IGNORE INTO {insert}`, ?1 the id) and checks that
/// the row under its id is this key (`SELECT {same} WHERE id = ?1`): a different one would be
/// a 64-bit collision, refused rather than mixed up.
fn claim(
    tx: &rusqlite::Transaction,
    insert: &str,
    same: &str,
    key: &[&dyn rusqlite::ToSql],
    what: impl Fn() -> String,
) -> Result<()> {
    tx.prepare_cached(&format!("INSERT OR IGNORE INTO {insert}"))?
        .execute(key)?;
    let same: bool = tx
        .prepare_cached(&format!("SELECT {same} WHERE id = ?1"))?
        .query_row(key, |r| r.get(0))?;
    if same {
        return Ok(());
    }
    Err(collision(&what()))
}

/// Every row of a cell table with its key spelled out.
pub(crate) fn rows(db: &Connection, table: CellTable) -> rusqlite::Result<Vec<CellRow>> {
    let table = match table {
        CellTable::Served => "cells",
        CellTable::Imported => "imported_cells",
    };
    let mut st = db.prepare(&format!(
        "SELECT sx.hash, sy.hash, k.metric, k.version, k.params, sx.prep, sy.prep, c.value, c.m, c.x, c.y
         FROM {table} c JOIN cell_metrics k ON k.id = c.m
         JOIN cell_sides sx ON sx.id = c.x JOIN cell_sides sy ON sy.id = c.y"
    ))?;
    st.query_map([], |r| {
        Ok(CellRow {
            ids: [r.get(8)?, r.get(9)?, r.get(10)?],
            hash_x: r.get(0)?,
            hash_y: r.get(1)?,
            metric: r.get(2)?,
            version: r.get(3)?,
            params: r.get(4)?,
            prep_x: r.get(5)?,
            prep_y: r.get(6)?,
            value: r.get(7)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::super::SqliteCatalog;
    use super::*;
    use crate::catalog::{Catalog, side_ids};
    use crate::store::BlobHash;
    use rusqlite::Connection;

    fn side<'a>(hashes: &'a [BlobHash], preps: &'a [String]) -> CellSide<'a> {
        let ids = Box::leak(side_ids(hashes, preps).into_boxed_slice());
        CellSide { hashes, preps, ids }
    }

    fn h(b: u8) -> BlobHash {
        BlobHash([b; 32])
    }

    #[test]
    fn a_pair_finds_its_cells_in_either_orientation_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SqliteCatalog::create(&dir.path().join("catalog.db")).unwrap();
        let key = |symmetric| MetricKey {
            metric: "cka",
            version: 1,
            params: "kernel=linear".into(),
            symmetric,
        };
        // x layers 9, 1 (hash 9 sorts after every y hash); y layers 2, 3.
        let (xh, yh) = ([h(9), h(1)], [h(2), h(3)]);
        let p = |n: usize| vec!["l2".to_string(); n];
        let (xp, yp) = (p(2), p(2));
        let x = side(&xh, &xp);
        let y = side(&yh, &yp);
        let sym = key(true);
        c.store_cells(
            std::slice::from_ref(&sym),
            x,
            y,
            &[(0, 0, 0, 0.5, 0.1), (0, 1, 1, 0.25, 0.1)],
        )
        .unwrap();
        // (9, 2) was stored as (2, 9): found from x × y and from y × x.
        let mut found = c.cached_cells(&sym, x, y).unwrap();
        found.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(found, vec![(0, 0, 0.5), (1, 1, 0.25)]);
        let mut back = c.cached_cells(&sym, y, x).unwrap();
        back.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(back, vec![(0, 0, 0.5), (1, 1, 0.25)]);
        // An asymmetric metric reads only the orientation it is asked for.
        assert_eq!(
            c.cached_cells(&key(false), x, y).unwrap(),
            vec![(1, 1, 0.25)]
        );
        // Another prep: not these cells.
        let other = vec!["clamp(q=0.95,t=0x3f800000);l2".to_string(); 2];
        let x2 = side(&xh, &other);
        assert!(c.cached_cells(&sym, x2, y).unwrap().is_empty());
        // A blob serving two layers gets the value in both.
        let dup = [h(1), h(1)];
        let xd = side(&dup, &xp);
        let mut d = c.cached_cells(&sym, xd, y).unwrap();
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(d, vec![(0, 1, 0.25), (1, 1, 0.25)]);
    }

    #[test]
    fn a_catalog_of_schema_7_keeps_its_cells_under_compact_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let db = Connection::open(&path).unwrap();
            for (_, sql) in &crate::catalog::MIGRATIONS[..7] {
                db.execute_batch(sql).unwrap();
            }
            db.pragma_update(None, "user_version", 7).unwrap();
            let (a, b) = (h(1).to_hex(), h(2).to_hex());
            db.execute(
                "INSERT INTO cells VALUES (?1, ?2, 'cka', 1, 'kernel=linear', 'l2', 'raw', 0.75, 0.0125, '2026-11-01T10:00:00.000Z')",
                [&a, &b],
            )
            .unwrap();
            db.execute(
                "INSERT INTO imported_cells VALUES (?1, ?1, 'cka', 1, 'kernel=linear', 'l2', 'l2', 0.5, 0.5, '2026-11-02T00:00:00.000Z', 'bundle')",
                [&b],
            )
            .unwrap();
        }
        let c = SqliteCatalog::open(&path).unwrap();
        assert_eq!(
            c.schema_version().unwrap(),
            crate::catalog::MIGRATIONS.len()
        );
        let key = MetricKey {
            metric: "cka",
            version: 1,
            params: "kernel=linear".into(),
            symmetric: true,
        };
        let (xh, yh) = ([h(1)], [h(2)]);
        let (xp, yp) = (vec!["l2".to_string()], vec!["raw".to_string()]);
        let x = side(&xh, &xp);
        let y = side(&yh, &yp);
        assert_eq!(c.cached_cells(&key, x, y).unwrap(), vec![(0, 0, 0.75)]);
        let (micros, at, ids): (i64, i64, [i64; 3]) = c
            .conn
            .query_row("SELECT micros, computed_at, m, x, y FROM cells", [], |r| {
                Ok((r.get(0)?, r.get(1)?, [r.get(2)?, r.get(3)?, r.get(4)?]))
            })
            .unwrap();
        assert_eq!((micros, at), (12_500, 1_793_527_200));
        assert_eq!(
            ids,
            [
                metric_id("cka", 1, "kernel=linear"),
                side_id(&h(1).to_hex(), "l2"),
                side_id(&h(2).to_hex(), "raw")
            ]
        );
        // The quarantined cell keeps its origin, under its own compact key.
        let (origin, y): (String, i64) = c
            .conn
            .query_row("SELECT origin, y FROM imported_cells", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            (origin.as_str(), y),
            ("bundle", side_id(&h(2).to_hex(), "l2"))
        );
        let sides: i64 = c
            .conn
            .query_row("SELECT count(*) FROM cell_sides", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sides, 3);
    }
}
