//! The `reps` frame: one row per representation with its model, checkpoint, layer set and
//! preparation, read from the catalog once per query.

use super::*;

/// Hashes a hex content hash by its first 16 digits: they are already uniformly random, so
/// the map needs no further mixing (a million lookups per scan).
#[derive(Default, Clone, Copy)]
pub struct HexHash;

/// The hasher of [`HexHash`].
#[derive(Default)]
pub struct HexHasher(u64);

impl std::hash::Hasher for HexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
    }
}

impl std::hash::BuildHasher for HexHash {
    type Hasher = HexHasher;
    fn build_hasher(&self) -> HexHasher {
        HexHasher(0)
    }
}

/// One row per representation, with its checkpoint's layer count.
pub struct RepIndex {
    /// One row per representation (the `reps` table).
    pub frame: DataFrame,
    /// One row per (checkpoint, dataset, pool): the layer set a model-pair score is over.
    pub sets: DataFrame,
    pub(super) by_hash: HashMap<Box<[u8]>, Vec<(u32, i64)>, HexHash>,
    pub(super) set_of: Vec<u32>,
    pub(super) layer_of: Vec<i64>,
    /// Per layer set, its cached clamp thresholds as (q, f32 bits of t, rule): a cell computed
    /// with another set's threshold (a blob shared by checkpoints whose other layers differ) is
    /// not this set's.
    pub(super) set_clamp: Vec<Vec<(f64, u32, ClampRule)>>,
    /// Per layer set, its recorded layout and layer count (which decide its clamp scope).
    pub(super) set_layout: Vec<(Option<Layout>, usize)>,
    /// Per representation, its layer's own cached clamp thresholds (for per-layer scope).
    pub(super) rep_clamp: Vec<Vec<(f64, u32, ClampRule)>>,
}

impl RepIndex {
    /// Whether a cell side prepared with `clamp` (q, threshold bits, scope) belongs to
    /// representation `rep` when sets are clamped at `scope`.
    pub(super) fn owns(&self, rep: u32, clamp: Option<prep::KeyClamp>, scope: ClampScope) -> bool {
        let Some((q, t, cell_scope, rule)) = clamp else {
            return true;
        };
        let set = self.set_of[rep as usize] as usize;
        let (layout, layers) = self.set_layout[set];
        if scope.resolve(layout, layers) != cell_scope {
            return false;
        }
        match cell_scope {
            Scope::Checkpoint => self.set_clamp[set].contains(&(q, t, rule)),
            Scope::Layer => self.rep_clamp[rep as usize].contains(&(q, t, rule)),
        }
    }
}

pub(super) fn column<T, N: Into<PlSmallStr>>(name: N, v: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), v)
}

/// One value per row of `rows`.
fn of<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Loads the `reps` frame and a hash → representations index.
pub fn reps(reg: &Registry) -> Result<RepIndex> {
    // Ordered by model, step (none first), checkpoint, layer.
    let mut rows = reg.catalog.reps(&crate::catalog::RepFilter::default())?;
    rows.sort_by(|a, b| {
        (&a.model, a.step, a.checkpoint_id, a.layer).cmp(&(
            &b.model,
            b.step,
            b.checkpoint_id,
            b.layer,
        ))
    });
    // Layer sets: distinct (checkpoint, dataset, pool), numbered in order of first appearance,
    // each with its first row and its layers' hashes in layer order (for its clamp key).
    let mut set_ids: HashMap<(CheckpointId, DatasetId, &str), u32> = HashMap::new();
    let mut first_row: Vec<usize> = Vec::new();
    let mut set_layers: Vec<Vec<crate::store::BlobHash>> = Vec::new();
    let mut set_of: Vec<u32> = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let next = first_row.len() as u32;
        let id = *set_ids
            .entry((r.checkpoint_id, r.dataset_id, r.pool.as_str()))
            .or_insert(next);
        if id == next {
            first_row.push(i);
            set_layers.push(Vec::new());
        }
        set_layers[id as usize].push(r.hash);
        set_of.push(id);
    }
    let set_size: Vec<i64> = set_layers.iter().map(|l| l.len() as i64).collect();
    let mut by_hash: HashMap<Box<[u8]>, Vec<(u32, i64)>, HexHash> = HashMap::default();
    for (i, r) in rows.iter().enumerate() {
        by_hash
            .entry(r.hash.to_hex().as_bytes().into())
            .or_default()
            .push((i as u32, r.dataset_id.0));
    }
    // The sweep keys a checkpoint's threshold by BLAKE3 of its ordered layer hashes.
    let mut thresholds: HashMap<String, Vec<(f64, u32, ClampRule)>> = HashMap::new();
    for (k, q, t) in reg.catalog.clamp_thresholds()? {
        let (rule, set) = ClampRule::of_table_key(&k);
        thresholds
            .entry(set.to_string())
            .or_default()
            .push((q, (t as f32).to_bits(), rule));
    }
    let cached = |hashes: &[crate::store::BlobHash]| {
        thresholds
            .get(&crate::sweep::layers_key(hashes))
            .cloned()
            .unwrap_or_default()
    };
    let set_clamp: Vec<Vec<(f64, u32, ClampRule)>> = set_layers.iter().map(|h| cached(h)).collect();
    let rep_clamp = of(&rows, |r| cached(std::slice::from_ref(&r.hash)));
    let mut set_members: Vec<Vec<Option<&str>>> = vec![Vec::new(); set_layers.len()];
    for (r, &s) in rows.iter().zip(&set_of) {
        set_members[s as usize].push(r.layout.as_deref());
    }
    let set_layout: Vec<(Option<Layout>, usize)> = set_members
        .into_iter()
        .map(|m| {
            let n = m.len();
            (crate::sweep::set_layout(m.into_iter()), n)
        })
        .collect();
    let firsts: Vec<&crate::catalog::Rep> = first_row.iter().map(|&i| &rows[i]).collect();
    let sets = DataFrame::new_infer_height(vec![
        column("set", (0..firsts.len() as u32).collect::<Vec<_>>()),
        column("model", of(&firsts, |r| r.model.clone())),
        column("modality", of(&firsts, |r| r.modality.clone())),
        column("checkpoint", of(&firsts, |r| r.checkpoint.clone())),
        column("checkpoint_id", of(&firsts, |r| r.checkpoint_id.0)),
        column("step", of(&firsts, |r| r.step)),
        column("pool", of(&firsts, |r| r.pool.clone())),
        column("layers", set_size.clone()),
    ])
    .map_err(pe)?;
    let ck_meta = reg.catalog.checkpoint_meta()?;
    let meta = |r: &crate::catalog::Rep| {
        ck_meta
            .get(&r.checkpoint_id)
            .map(|m| serde_json::to_string(m).expect("strings serialise"))
            .unwrap_or_else(|| "{}".into())
    };
    let layer_of = of(&rows, |r| r.layer);
    let frame = DataFrame::new_infer_height(vec![
        column("rep", (0..rows.len() as u32).collect::<Vec<_>>()),
        column("hash", of(&rows, |r| r.hash.to_hex())),
        column("model", of(&rows, |r| r.model.clone())),
        column("modality", of(&rows, |r| r.modality.clone())),
        column("family", of(&rows, |r| r.family.clone())),
        column("checkpoint", of(&rows, |r| r.checkpoint.clone())),
        column("checkpoint_id", of(&rows, |r| r.checkpoint_id.0)),
        column("step", of(&rows, |r| r.step)),
        column("dataset", of(&rows, |r| r.dataset.clone())),
        column("layer", layer_of.clone()),
        column("pool", of(&rows, |r| r.pool.clone())),
        column("n", of(&rows, |r| r.n as i64)),
        column("d", of(&rows, |r| r.d as i64)),
        column("layers", of(&set_of, |&s| set_size[s as usize])),
        column("layout", of(&rows, |r| r.layout.clone())),
        column("meta", of(&rows, meta)),
    ])
    .map_err(pe)?;
    Ok(RepIndex {
        frame,
        sets,
        by_hash,
        set_of,
        layer_of,
        set_clamp,
        set_layout,
        rep_clamp,
    })
}
