//! Cache keys (docs/design.md §6), the same in every backend.
//!
//! A cell's key is (hash_x, prep_x, hash_y, prep_y, metric, version, params); a row names it
//! by three 64-bit ids derived from that content ([`side_id`], [`metric_id`]), kept in two
//! dictionaries (sides, metrics). Derived ids make a key's id the same in every registry
//! (bundles merge without renumbering) and let a warm sweep form its keys without a round
//! trip. Two contents with one id would need a 64-bit BLAKE3 collision; a backend checks its
//! dictionary when storing all the same and refuses rather than mix them up.

use std::collections::HashMap;

use crate::store::BlobHash;

/// The cache identity of a metric: name, implementation version and canonical parameters.
/// Symmetric metrics store one orientation of each cell (`hash_x <= hash_y`).
#[derive(Debug, Clone)]
pub struct MetricKey {
    /// The metric's name.
    pub metric: &'static str,
    /// Its implementation version.
    pub version: u32,
    /// Canonical parameters ([`crate::metrics::MetricSpec::params_key`]).
    pub params: String,
    /// Whether one orientation serves both.
    pub symmetric: bool,
}

impl MetricKey {
    /// This key's id in the metric dictionary.
    pub fn id(&self) -> i64 {
        metric_id(self.metric, self.version as i64, &self.params)
    }
}

/// One side of a model pair as the cache sees it: each layer's blob, preparation key and side
/// id ([`side_ids`] of the two, formed once per checkpoint by the caller, not once per lookup).
#[derive(Debug, Clone, Copy)]
pub struct CellSide<'a> {
    /// Each layer's blob.
    pub hashes: &'a [BlobHash],
    /// Each layer's preparation key.
    pub preps: &'a [String],
    /// Each layer's side id ([`side_ids`]).
    pub ids: &'a [i64],
}

/// A cached cell of a model pair: x layer, y layer, value.
pub type CachedCell = (usize, usize, f64);

/// A computed cell of a model pair: metric (an index into the keys given with it), x layer,
/// y layer, value, seconds it took.
pub type NewCell = (usize, usize, usize, f64, f64);

/// Each layer's side id.
pub fn side_ids(hashes: &[BlobHash], preps: &[String]) -> Vec<i64> {
    hashes
        .iter()
        .zip(preps)
        .map(|(h, p)| side_id(&h.to_hex(), p))
        .collect()
}

/// Layer indices by side id; a blob may serve several layers.
pub(crate) fn layers_by_id(ids: &[i64]) -> HashMap<i64, Vec<usize>> {
    let mut m: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, &id) in ids.iter().enumerate() {
        m.entry(id).or_default().push(i);
    }
    m
}

/// Adds the cached cells that `rows` (x side id, y side id, value, as stored) give the pair's
/// layers (`ix`, `iy`: [`layers_by_id`] of each side); `swapped` when the rows were found with
/// the two sides exchanged (the other stored orientation of a symmetric metric).
pub(crate) fn spread(
    rows: impl IntoIterator<Item = (i64, i64, f64)>,
    swapped: bool,
    ix: &HashMap<i64, Vec<usize>>,
    iy: &HashMap<i64, Vec<usize>>,
    out: &mut Vec<CachedCell>,
) {
    for (ka, kb, v) in rows {
        let (kx, ky) = if swapped { (kb, ka) } else { (ka, kb) };
        if let (Some(is), Some(js)) = (ix.get(&kx), iy.get(&ky)) {
            for &i in is {
                out.extend(js.iter().map(|&j| (i, j, v)));
            }
        }
    }
}

/// The stored orientation of cell (i, j) of `x` × `y`: (metric id, x side id, y side id), with
/// the sides swapped for a symmetric metric when y's blob sorts first.
pub(crate) fn stored_ids(
    key: &MetricKey,
    x: &CellSide,
    y: &CellSide,
    i: usize,
    j: usize,
) -> [i64; 3] {
    let (mut a, mut b) = ((&x.hashes[i], x.ids[i]), (&y.hashes[j], y.ids[j]));
    if key.symmetric && b.0 < a.0 {
        std::mem::swap(&mut a, &mut b);
    }
    [key.id(), a.1, b.1]
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

/// The collision error: an id taken by another key.
pub(crate) fn collision(what: &str) -> crate::Error {
    crate::Error::Internal(format!(
        "the cache id of {what} is already taken by another key (a 64-bit hash collision); nothing stored — please report it"
    ))
}
