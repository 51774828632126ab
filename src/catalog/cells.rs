//! The metric cache protocol (DESIGN.md §5) at model-pair granularity: one statement finds
//! every cached cell of a pair, one transaction stores the pair's computed cells. A sweep
//! never asks for a single cell.

use std::collections::HashMap;

use rusqlite::params;

use super::Catalog;
use crate::error::Result;
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

/// One side of a model pair as the cache sees it: each layer's blob and preparation key.
#[derive(Debug, Clone, Copy)]
pub struct CellSide<'a> {
    pub hashes: &'a [BlobHash],
    pub preps: &'a [String],
}

impl CellSide<'_> {
    fn hex(&self) -> Vec<String> {
        self.hashes.iter().map(BlobHash::to_hex).collect()
    }

    /// Layer indices by (hex hash, prep key); a blob may serve several layers.
    fn index<'h>(&'h self, hex: &'h [String]) -> HashMap<(&'h str, &'h str), Vec<usize>> {
        let mut m: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, (h, p)) in hex.iter().zip(self.preps).enumerate() {
            m.entry((h.as_str(), p.as_str())).or_default().push(i);
        }
        m
    }
}

/// Hex hashes as a JSON array (they need no escaping), for `json_each`.
fn json_array(hex: &[String]) -> String {
    format!("[\"{}\"]", hex.join("\",\""))
}

/// A TEXT column without copying it.
fn text<'r>(r: &'r rusqlite::Row, i: usize) -> rusqlite::Result<&'r str> {
    let v = r.get_ref(i)?;
    v.as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)))
}

/// A computed cell of a model pair: metric (an index into the keys given with it), x layer,
/// y layer, value, seconds it took.
pub type NewCell = (usize, usize, usize, f64, f64);

const FIND: &str = "SELECT hash_x, prep_x, hash_y, prep_y, value FROM cells
     WHERE hash_x IN (SELECT value FROM json_each(?1)) AND hash_y IN (SELECT value FROM json_each(?2))
       AND metric = ?3 AND version = ?4 AND params = ?5";

impl Catalog {
    /// The cached cells of the pair `x` × `y` for one metric, as (x layer, y layer, value):
    /// one statement (two for symmetric metrics, one per stored orientation).
    pub fn cached_cells(
        &self,
        m: &MetricKey,
        x: CellSide,
        y: CellSide,
    ) -> Result<Vec<(usize, usize, f64)>> {
        let (hx, hy) = (x.hex(), y.hex());
        let (ix, iy) = (x.index(&hx), y.index(&hy));
        let (jx, jy) = (json_array(&hx), json_array(&hy));
        let mut st = self.conn.prepare_cached(FIND)?;
        let mut out = Vec::new();
        let orientations: &[bool] = if m.symmetric {
            &[false, true]
        } else {
            &[false]
        };
        for &swapped in orientations {
            let (a, b) = if swapped { (&jy, &jx) } else { (&jx, &jy) };
            let mut rows = st.query(params![a, b, m.metric, m.version, m.params])?;
            while let Some(r) = rows.next()? {
                let (ha, pa) = (text(r, 0)?, text(r, 1)?);
                let (hb, pb) = (text(r, 2)?, text(r, 3)?);
                let v: f64 = r.get(4)?;
                let ((kx, px), (ky, py)) = if swapped {
                    ((hb, pb), (ha, pa))
                } else {
                    ((ha, pa), (hb, pb))
                };
                if let (Some(is), Some(js)) = (ix.get(&(kx, px)), iy.get(&(ky, py))) {
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
        let (hx, hy) = (x.hex(), y.hex());
        self.write(|tx| {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO cells (hash_x, hash_y, metric, version, params, prep_x, prep_y, value, seconds)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for &(mi, i, j, v, secs) in cells {
                let m = &keys[mi];
                let (mut a, mut b) = ((&hx[i], &x.preps[i]), (&hy[j], &y.preps[j]));
                if m.symmetric && b.0 < a.0 {
                    std::mem::swap(&mut a, &mut b);
                }
                ins.execute(params![a.0, b.0, m.metric, m.version, m.params, a.1, b.1, v, secs])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let x = CellSide {
            hashes: &xh,
            preps: &xp,
        };
        let y = CellSide {
            hashes: &yh,
            preps: &yp,
        };
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
        let x2 = CellSide {
            hashes: &xh,
            preps: &other,
        };
        assert!(c.cached_cells(&sym, x2, y).unwrap().is_empty());
        // A blob serving two layers gets the value in both.
        let dup = [h(1), h(1)];
        let xd = CellSide {
            hashes: &dup,
            preps: &xp,
        };
        let mut d = c.cached_cells(&sym, xd, y).unwrap();
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(d, vec![(0, 1, 0.25), (1, 1, 0.25)]);
    }
}
