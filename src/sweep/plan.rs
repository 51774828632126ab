//! The plan: which model pairs, in what order (each checkpoint derived as few times as the
//! budget allows), and which of their cells the cache already holds.

use super::*;

/// The order to compute model pairs in, so that each checkpoint's derived data is computed as
/// few times as the memory budget allows: the side with fewer bytes is held in tiles that fit
/// the budget (less room for one checkpoint of the other side), and for each tile every
/// checkpoint of the other side comes once, with all of its pairs in the tile. A zoo whose
/// smaller side fits derives every checkpoint once (x-major order would re-derive the whole
/// y side for every x once y outgrows the budget). The sweep drops an other-side checkpoint's
/// derived data when it moves on to the next (see [`Plan::other`]), so the least recently used
/// entry is never a held one.
pub(super) struct Plan {
    pub(super) order: Vec<usize>,
    pub(super) held_is_x: bool,
    pub(super) held: HashSet<CheckpointId>,
}

impl Plan {
    /// The pair's checkpoint on the side that is not held.
    pub(super) fn other(&self, pair: (&CheckpointLayers, &CheckpointLayers)) -> CheckpointId {
        if self.held_is_x {
            pair.1.checkpoint_id
        } else {
            pair.0.checkpoint_id
        }
    }
}

pub(super) fn compute_order(
    pairs: &[(&CheckpointLayers, &CheckpointLayers)],
    budget: usize,
) -> Plan {
    // Each side's checkpoints in order of first appearance, with their sizes.
    let side = |pick: fn(&(&CheckpointLayers, &CheckpointLayers)) -> CheckpointId| {
        let mut ids: Vec<CheckpointId> = Vec::new();
        let mut bytes: HashMap<CheckpointId, usize> = HashMap::new();
        for p in pairs {
            let id = pick(p);
            if let std::collections::hash_map::Entry::Vacant(e) = bytes.entry(id) {
                let ck = if id == p.0.checkpoint_id { p.0 } else { p.1 };
                e.insert(derived_bytes(ck, budget));
                ids.push(id);
            }
        }
        (ids, bytes)
    };
    let xs = side(|p| p.0.checkpoint_id);
    let ys = side(|p| p.1.checkpoint_id);
    let total = |s: &(Vec<CheckpointId>, HashMap<CheckpointId, usize>)| s.1.values().sum::<usize>();
    let held_is_x = total(&xs) <= total(&ys);
    let (held, other) = if held_is_x { (&xs, &ys) } else { (&ys, &xs) };
    let room = budget
        .saturating_sub(other.1.values().copied().max().unwrap_or(0))
        .max(1);
    let mut tile: HashMap<CheckpointId, usize> = HashMap::new();
    let (mut t, mut used) = (0, 0);
    for id in &held.0 {
        let b = held.1[id];
        if used > 0 && used + b > room {
            t += 1;
            used = 0;
        }
        used += b;
        tile.insert(*id, t);
    }
    let pos = |ids: &[CheckpointId]| -> HashMap<CheckpointId, usize> {
        ids.iter().enumerate().map(|(i, &id)| (id, i)).collect()
    };
    let (held_pos, other_pos) = (pos(&held.0), pos(&other.0));
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&pi| {
        let (x, y) = pairs[pi];
        let (h, o) = if held_is_x {
            (x.checkpoint_id, y.checkpoint_id)
        } else {
            (y.checkpoint_id, x.checkpoint_id)
        };
        (tile[&h], other_pos[&o], held_pos[&h])
    });
    Plan {
        order,
        held_is_x,
        held: held.0.iter().copied().collect(),
    }
}

/// The pairs of a request (only `only` when given), with each checkpoint's prep and side ids.
pub(super) fn pair_set<'a>(
    reg: &Registry,
    req: &SweepRequest,
    xs: &'a [CheckpointLayers],
    ys: &'a [CheckpointLayers],
    only: Option<(CheckpointId, CheckpointId)>,
    known: &mut HashMap<CheckpointId, CheckpointPrep>,
) -> Result<PairSet<'a>> {
    // A worker's unit (`only`) prepares its own two checkpoints, not the whole request's.
    let wanted = |ck: &&CheckpointLayers| {
        only.is_none_or(|(x, y)| ck.checkpoint_id == x || ck.checkpoint_id == y)
    };
    let members: Vec<&CheckpointLayers> = xs.iter().chain(ys.iter()).filter(wanted).collect();
    let preps = checkpoint_preps(reg, members.iter().copied(), req.prep, known)?;
    Ok(PairSet {
        pairs: xs
            .iter()
            .flat_map(|x| ys.iter().map(move |y| (x, y)))
            .filter(|(x, y)| x.checkpoint_id != y.checkpoint_id)
            .filter(|(x, y)| only.is_none_or(|o| o == (x.checkpoint_id, y.checkpoint_id)))
            .collect(),
        keys: req.specs.iter().map(metric_key).collect(),
        side_ids: members
            .iter()
            .map(|ck| {
                let ids = side_ids(&ck.layers, &preps[&ck.checkpoint_id].keys);
                (ck.checkpoint_id, ids)
            })
            .collect(),
        preps,
    })
}

/// The x and y checkpoints a request selects, on one dataset, with its metrics validated for
/// that dataset's n.
pub(super) fn resolve(
    reg: &Registry,
    req: &SweepRequest,
) -> Result<(Vec<CheckpointLayers>, Vec<CheckpointLayers>)> {
    let xm = select_models(reg, &req.x)?;
    let ym = select_models(reg, &req.y)?;
    let mut all_models = xm.clone();
    all_models.extend(ym.iter().cloned());
    let dataset = choose_dataset(reg, &all_models, req.dataset.as_deref())?;
    let xs = resolve_checkpoints(
        reg,
        &xm,
        &dataset,
        req.pool.as_deref(),
        req.all_checkpoints,
        req.x_checkpoint.as_deref(),
    )?;
    let ys = resolve_checkpoints(
        reg,
        &ym,
        &dataset,
        req.pool.as_deref(),
        req.all_checkpoints,
        None,
    )?;
    let n = xs.first().or(ys.first()).map(|c| c.n).unwrap_or(0);
    for s in &req.specs {
        s.validate(n)?;
    }
    Ok((xs, ys))
}

/// Prep keys (clamp thresholds) once per checkpoint, taken from `known` where it has them
/// (a worker's, for the checkpoints of earlier units of its sweep) and added to it.
pub(super) fn checkpoint_preps<'a>(
    reg: &Registry,
    checkpoints: impl Iterator<Item = &'a CheckpointLayers>,
    prep: Prep,
    known: &mut HashMap<CheckpointId, CheckpointPrep>,
) -> Result<HashMap<CheckpointId, CheckpointPrep>> {
    let mut preps: HashMap<CheckpointId, CheckpointPrep> = HashMap::new();
    for ck in checkpoints {
        if let std::collections::hash_map::Entry::Vacant(e) = preps.entry(ck.checkpoint_id) {
            e.insert(known_prep(reg, ck, prep, known)?);
        }
    }
    Ok(preps)
}

/// One checkpoint's preparation from `known` (a worker's, for checkpoints of earlier units of
/// its sweep), or computed and added to it.
pub(super) fn known_prep(
    reg: &Registry,
    ck: &CheckpointLayers,
    prep: Prep,
    known: &mut HashMap<CheckpointId, CheckpointPrep>,
) -> Result<CheckpointPrep> {
    if let Some(p) = known.get(&ck.checkpoint_id) {
        return Ok(p.clone());
    }
    let p = checkpoint_prep(reg, ck, prep)?;
    known.insert(ck.checkpoint_id, p.clone());
    Ok(p)
}

/// The model pairs of a sweep (x checkpoint × y checkpoint), the cache key of each metric, and
/// each checkpoint's prep keys and cache side ids (by checkpoint id).
pub(super) struct PairSet<'a> {
    pub(super) pairs: Vec<(&'a CheckpointLayers, &'a CheckpointLayers)>,
    pub(super) keys: Vec<MetricKey>,
    pub(super) preps: HashMap<CheckpointId, CheckpointPrep>,
    pub(super) side_ids: HashMap<CheckpointId, Vec<i64>>,
}

/// The x checkpoint of a one-pair set cut to its layers whose stored index lies in `block`
/// (inclusive), with their preparation (the whole checkpoint's thresholds) and side ids.
pub(super) fn x_block(
    set: &PairSet,
    (lo, hi): (i64, i64),
) -> (CheckpointLayers, CheckpointPrep, Vec<i64>) {
    let x = set.pairs[0].0;
    let keep: Vec<usize> = (0..x.layers.len())
        .filter(|&l| (lo..=hi).contains(&x.layer_ids[l]))
        .collect();
    fn pick<T: Clone>(keep: &[usize], v: &[T]) -> Vec<T> {
        keep.iter().map(|&l| v[l].clone()).collect()
    }
    let prep = &set.preps[&x.checkpoint_id];
    let cut = CheckpointLayers {
        layers: pick(&keep, &x.layers),
        layer_ids: pick(&keep, &x.layer_ids),
        f32_bytes: x.f32_bytes / x.layers.len().max(1) * keep.len(),
        ..x.clone()
    };
    let cut_prep = CheckpointPrep {
        keys: pick(&keep, &prep.keys),
        thresholds: pick(&keep, &prep.thresholds),
        set_key: prep.set_key.clone(),
    };
    (cut, cut_prep, pick(&keep, &set.side_ids[&x.checkpoint_id]))
}

/// Per pair and metric, the layer × layer values (row-major; `None` until known).
pub(super) type Tables = Vec<Vec<Vec<Option<f64>>>>;
/// Per pair, its missing cells as (metric, x layer, y layer).
pub(super) type Todo = Vec<Vec<(usize, usize, usize)>>;

/// Which cells are cached? One catalog statement per model pair and metric orientation.
pub(super) fn cached_tables(reg: &Registry, set: &PairSet) -> Result<(Tables, Todo)> {
    let (pairs, keys) = (&set.pairs, &set.keys);
    let mut tables: Tables = Vec::with_capacity(pairs.len());
    let mut todo: Todo = Vec::with_capacity(pairs.len());
    for (x, y) in pairs {
        let ny = y.layers.len();
        let mut per_spec = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (si, key) in keys.iter().enumerate() {
            let mut t = vec![None; x.layers.len() * ny];
            for (i, j, v) in reg.catalog.cached_cells(key, side(x, set), side(y, set))? {
                t[i * ny + j] = Some(v);
            }
            missing.extend(
                t.iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_none())
                    .map(|(c, _)| (si, c / ny, c % ny)),
            );
            per_spec.push(t);
        }
        todo.push(missing);
        tables.push(per_spec);
    }

    Ok((tables, todo))
}
