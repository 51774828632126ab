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
    /// Per layer set, its cached clamp thresholds as (q, f32 bits of t): a cell computed with
    /// another set's threshold (a blob shared by checkpoints whose other layers differ) is not
    /// this set's.
    pub(super) set_clamp: Vec<Vec<(f64, u32)>>,
    /// Per layer set, its recorded layout and layer count (which decide its clamp scope).
    pub(super) set_layout: Vec<(Option<Layout>, usize)>,
    /// Per representation, its layer's own cached clamp thresholds (for per-layer scope).
    pub(super) rep_clamp: Vec<Vec<(f64, u32)>>,
}

impl RepIndex {
    /// Whether a cell side prepared with `clamp` (q, threshold bits, scope) belongs to
    /// representation `rep` when sets are clamped at `scope`.
    pub(super) fn owns(
        &self,
        rep: u32,
        clamp: Option<(f64, u32, Scope)>,
        scope: ClampScope,
    ) -> bool {
        let Some((q, t, cell_scope)) = clamp else {
            return true;
        };
        let set = self.set_of[rep as usize] as usize;
        let (layout, layers) = self.set_layout[set];
        if scope.resolve(layout, layers) != cell_scope {
            return false;
        }
        match cell_scope {
            Scope::Checkpoint => self.set_clamp[set].contains(&(q, t)),
            Scope::Layer => self.rep_clamp[rep as usize].contains(&(q, t)),
        }
    }
}

pub(super) fn column<T, N: Into<PlSmallStr>>(name: N, v: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), v)
}

/// Loads the `reps` frame and a hash → representations index.
pub fn reps(reg: &Registry) -> Result<RepIndex> {
    // Ordered by model, step (none first), checkpoint, layer; each layer set's size counted.
    let mut rows = reg.catalog.reps(&crate::catalog::RepFilter::default())?;
    rows.sort_by(|a, b| {
        (&a.model, a.step, a.checkpoint_id, a.layer).cmp(&(
            &b.model,
            b.step,
            b.checkpoint_id,
            b.layer,
        ))
    });
    let mut set_sizes: HashMap<(CheckpointId, DatasetId, &str), i64> = HashMap::new();
    for r in &rows {
        *set_sizes
            .entry((r.checkpoint_id, r.dataset_id, r.pool.as_str()))
            .or_default() += 1;
    }
    let mut hash = Vec::new();
    let mut model = Vec::new();
    let mut modality = Vec::new();
    let mut family: Vec<Option<String>> = Vec::new();
    let mut ck = Vec::new();
    let mut ck_id = Vec::new();
    let mut step: Vec<Option<i64>> = Vec::new();
    let mut dataset = Vec::new();
    let mut layer = Vec::new();
    let mut pool = Vec::new();
    let mut n = Vec::new();
    let mut d = Vec::new();
    let mut layers = Vec::new();
    let mut layout: Vec<Option<String>> = Vec::new();
    let mut meta: Vec<String> = Vec::new();
    let ck_meta = reg.catalog.checkpoint_meta()?;
    let mut by_hash: HashMap<Box<[u8]>, Vec<(u32, i64)>, HexHash> = HashMap::default();
    for r in &rows {
        let hex = r.hash.to_hex();
        by_hash
            .entry(hex.as_bytes().into())
            .or_default()
            .push((hash.len() as u32, r.dataset_id.0));
        layers.push(set_sizes[&(r.checkpoint_id, r.dataset_id, r.pool.as_str())]);
        hash.push(hex);
        model.push(r.model.clone());
        modality.push(r.modality.clone());
        family.push(r.family.clone());
        ck.push(r.checkpoint.clone());
        ck_id.push(r.checkpoint_id.0);
        step.push(r.step);
        dataset.push(r.dataset.clone());
        layer.push(r.layer);
        pool.push(r.pool.clone());
        n.push(r.n as i64);
        d.push(r.d as i64);
        layout.push(r.layout.clone());
        meta.push(
            ck_meta
                .get(&r.checkpoint_id)
                .map(|m| serde_json::to_string(m).expect("strings serialise"))
                .unwrap_or_else(|| "{}".into()),
        );
    }
    let rep: Vec<u32> = (0..hash.len() as u32).collect();
    // Layer sets: distinct (checkpoint, dataset, pool), numbered in order.
    let mut set_ids: HashMap<(i64, String, String), u32> = HashMap::new();
    let mut set_of = Vec::with_capacity(hash.len());
    let (
        mut s_id,
        mut s_model,
        mut s_modality,
        mut s_ck,
        mut s_ck_id,
        mut s_step,
        mut s_pool,
        mut s_layers,
    ) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    // Each set's layer hashes in layer order (rows come ordered by layer), for its clamp key.
    let mut set_layers: Vec<Vec<crate::store::BlobHash>> = Vec::new();
    for i in 0..hash.len() {
        let key = (ck_id[i], dataset[i].clone(), pool[i].clone());
        let next = set_ids.len() as u32;
        let id = *set_ids.entry(key).or_insert_with(|| {
            s_id.push(next);
            s_model.push(model[i].clone());
            s_modality.push(modality[i].clone());
            s_ck.push(ck[i].clone());
            s_ck_id.push(ck_id[i]);
            s_step.push(step[i]);
            s_pool.push(pool[i].clone());
            s_layers.push(layers[i]);
            next
        });
        set_of.push(id);
        if set_layers.len() <= id as usize {
            set_layers.push(Vec::new());
        }
        if let Ok(h) = hash[i].parse() {
            set_layers[id as usize].push(h);
        }
    }
    // The sweep keys a checkpoint's threshold by BLAKE3 of its ordered layer hashes.
    let mut thresholds: HashMap<String, Vec<(f64, u32)>> = HashMap::new();
    for (k, q, t) in reg.catalog.clamp_thresholds()? {
        thresholds
            .entry(k)
            .or_default()
            .push((q, (t as f32).to_bits()));
    }
    let cached = |hashes: &[crate::store::BlobHash]| {
        thresholds
            .get(&crate::sweep::layers_key(hashes))
            .cloned()
            .unwrap_or_default()
    };
    let set_clamp: Vec<Vec<(f64, u32)>> = set_layers.iter().map(|h| cached(h)).collect();
    let rep_clamp: Vec<Vec<(f64, u32)>> = hash
        .iter()
        .map(|h| {
            h.parse()
                .map(|h| cached(std::slice::from_ref(&h)))
                .unwrap_or_default()
        })
        .collect();
    let mut set_members: Vec<Vec<Option<&str>>> = vec![Vec::new(); set_layers.len()];
    for (i, &s) in set_of.iter().enumerate() {
        set_members[s as usize].push(layout[i].as_deref());
    }
    let set_layout: Vec<(Option<Layout>, usize)> = set_members
        .into_iter()
        .map(|m| {
            let n = m.len();
            (crate::sweep::set_layout(m.into_iter()), n)
        })
        .collect();
    let sets = DataFrame::new_infer_height(vec![
        column("set", s_id),
        column("model", s_model),
        column("modality", s_modality),
        column("checkpoint", s_ck),
        column("checkpoint_id", s_ck_id),
        column("step", s_step),
        column("pool", s_pool),
        column("layers", s_layers),
    ])
    .map_err(pe)?;
    let layer_of = layer.clone();
    let frame = DataFrame::new_infer_height(vec![
        column("rep", rep),
        column("hash", hash),
        column("model", model),
        column("modality", modality),
        column("family", family),
        column("checkpoint", ck),
        column("checkpoint_id", ck_id),
        column("step", step),
        column("dataset", dataset),
        column("layer", layer),
        column("pool", pool),
        column("n", n),
        column("d", d),
        column("layers", layers),
        column("layout", layout),
        column("meta", meta),
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
