//! The metric cache protocol (DESIGN.md §5) at model-pair granularity: one statement finds
//! every cached cell of a pair, one transaction stores the pair's computed cells. A sweep
//! never asks for a single cell.
//!
//! A cell's key is (hash_x, prep_x, hash_y, prep_y, metric, version, params); a row names it
//! by three 64-bit ids derived from that content ([`side_id`], [`metric_id`]), kept in the
//! `cell_sides` and `cell_metrics` dictionaries. Derived ids make a key's id the same in every
//! registry (bundles merge without renumbering) and let a warm sweep form its keys without a
//! round trip. Two contents with one id would need a 64-bit BLAKE3 collision; storing checks
//! the dictionary all the same and refuses rather than mix them up.

use std::collections::HashMap;

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, params};

use super::Catalog;
use crate::error::{Error, Result};
use crate::store::BlobHash;

/// The cache identity of a metric: name, implementation version and canonical parameters.
/// Symmetric metrics store one orientation of each cell (`hash_x <= hash_y`).
#[derive(Debug, Clone)]
pub struct MetricKey {
    pub metric: &'static str,
    pub version: u32,
    pub params: String,
    pub symmetric: bool,
}

impl MetricKey {
    fn id(&self) -> i64 {
        metric_id(self.metric, self.version as i64, &self.params)
    }
}

/// One side of a model pair as the cache sees it: each layer's blob, preparation key and side
/// id ([`side_ids`] of the two, formed once per checkpoint by the caller, not once per lookup).
#[derive(Debug, Clone, Copy)]
pub struct CellSide<'a> {
    pub hashes: &'a [BlobHash],
    pub preps: &'a [String],
    pub ids: &'a [i64],
}

/// Each layer's side id.
pub fn side_ids(hashes: &[BlobHash], preps: &[String]) -> Vec<i64> {
    hashes
        .iter()
        .zip(preps)
        .map(|(h, p)| side_id(&h.to_hex(), p))
        .collect()
}

/// Layer indices by side id; a blob may serve several layers.
fn layers_by_id(ids: &[i64]) -> HashMap<i64, Vec<usize>> {
    let mut m: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, &id) in ids.iter().enumerate() {
        m.entry(id).or_default().push(i);
    }
    m
}

/// Ids as a JSON array, for `json_each`.
fn json_array(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", list.join(","))
}

/// The first 8 bytes of a BLAKE3 key derived from `parts` (each followed by a 0 byte).
fn derived_id(context: &str, parts: &[&[u8]]) -> i64 {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
        h.update(&[0]);
    }
    let bytes = h.finalize();
    i64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The id of one side of a cell: a blob (64 lower-case hex digits) prepared as `prep`.
pub fn side_id(hash_hex: &str, prep: &str) -> i64 {
    derived_id(
        "prh 2026-11-29 cell side",
        &[hash_hex.as_bytes(), prep.as_bytes()],
    )
}

/// The id of a metric's cache identity.
pub fn metric_id(metric: &str, version: i64, params: &str) -> i64 {
    derived_id(
        "prh 2026-11-29 cell metric",
        &[
            metric.as_bytes(),
            version.to_string().as_bytes(),
            params.as_bytes(),
        ],
    )
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

/// A computed cell of a model pair: metric (an index into the keys given with it), x layer,
/// y layer, value, seconds it took.
pub type NewCell = (usize, usize, usize, f64, f64);

const FIND: &str = "SELECT x, y, value FROM cells
     WHERE m = ?1 AND x IN (SELECT value FROM json_each(?2)) AND y IN (SELECT value FROM json_each(?3))";

impl Catalog {
    /// The cached cells of the pair `x` × `y` for one metric, as (x layer, y layer, value):
    /// one statement (two for symmetric metrics, one per stored orientation).
    pub fn cached_cells(
        &self,
        m: &MetricKey,
        x: CellSide,
        y: CellSide,
    ) -> Result<Vec<(usize, usize, f64)>> {
        let (ix, iy) = (layers_by_id(x.ids), layers_by_id(y.ids));
        let (jx, jy) = (json_array(x.ids), json_array(y.ids));
        let mut st = self.conn.prepare_cached(FIND)?;
        let mut out = Vec::new();
        let orientations: &[bool] = if m.symmetric {
            &[false, true]
        } else {
            &[false]
        };
        let mid = m.id();
        for &swapped in orientations {
            let (a, b) = if swapped { (&jy, &jx) } else { (&jx, &jy) };
            let mut rows = st.query(params![mid, a, b])?;
            while let Some(r) = rows.next()? {
                let (ka, kb, v): (i64, i64, f64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                let (kx, ky) = if swapped { (kb, ka) } else { (ka, kb) };
                if let (Some(is), Some(js)) = (ix.get(&kx), iy.get(&ky)) {
                    for &i in is {
                        out.extend(js.iter().map(|&j| (i, j, v)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stores computed cells of the pair `x` × `y`, for any of the metrics `keys` (a cell names
    /// its metric by index), in one transaction: a pair's cells land together or not at all.
    /// A cell another process stored meanwhile is kept (same key, same value by construction).
    pub fn store_cells(
        &mut self,
        keys: &[MetricKey],
        x: CellSide,
        y: CellSide,
        cells: &[NewCell],
    ) -> Result<()> {
        let mids: Vec<i64> = keys.iter().map(MetricKey::id).collect();
        self.write(|tx| {
            for (k, &id) in keys.iter().zip(&mids) {
                claim(
                    tx,
                    "cell_metrics (id, metric, version, params) VALUES (?1, ?2, ?3, ?4)",
                    "metric = ?2 AND version = ?3 AND params = ?4 FROM cell_metrics",
                    params![id, k.metric, k.version, k.params],
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
                let (mut a, mut b) = ((&x.hashes[i], x.ids[i]), (&y.hashes[j], y.ids[j]));
                if keys[mi].symmetric && b.0 < a.0 {
                    std::mem::swap(&mut a, &mut b);
                }
                let micros = (secs * 1e6).round() as i64;
                ins.execute(params![mids[mi], a.1, b.1, v, micros])?;
            }
            Ok(())
        })
    }
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
    Err(Error::Invalid(format!(
        "the cache id of {} is already taken by another key (a 64-bit hash collision); nothing stored — please report it",
        what()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut c = Catalog::create(&dir.path().join("catalog.db")).unwrap();
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
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), 8);
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
