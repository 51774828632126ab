//! Computing the missing cells, one model pair at a time, committing as it goes, and the
//! report of every pair.

use super::*;

/// What a sweep computed: cells per (pair, metric) and kNN graphs per pair.
#[derive(Default)]
pub(super) struct Computed {
    pub cells: HashMap<(usize, usize), usize>,
    pub graphs: HashMap<usize, usize>,
}

/// Computes what is missing, one model pair at a time, committing as it goes; fills `tables`
/// and returns what it computed.
pub(super) fn compute_missing(
    reg: &mut Registry,
    req: &SweepRequest,
    set: &PairSet,
    todo: &Todo,
    tables: &mut Tables,
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<Computed> {
    let (pairs, keys, preps) = (&set.pairs, &set.keys, &set.preps);
    let missing_total: u64 = todo.iter().map(|t| t.len() as u64).sum();
    let mut computed: HashMap<(usize, usize), usize> = HashMap::new();
    let mut graphs: HashMap<usize, usize> = HashMap::new();
    if missing_total > 0 {
        progress.start(missing_total);
        let plan = compute_order(pairs, req.mem_budget);
        let mut last_other: Option<CheckpointId> = None;
        for &pi in &plan.order {
            let (x, y) = pairs[pi];
            let cells = &todo[pi];
            if cells.is_empty() {
                continue;
            }
            go_on(progress)?;
            let other = plan.other(pairs[pi]);
            if let Some(prev) = last_other.filter(|&p| p != other && !plan.held.contains(&p)) {
                cache.forget(prev);
            }
            last_other = Some(other);
            progress.message(&format!("{} × {}", x.model, y.model));
            let (px, py) = (&preps[&x.checkpoint_id], &preps[&y.checkpoint_id]);
            let dx = cache.get(reg, x, &px.thresholds, req.prep)?;
            let dy = cache.get(reg, y, &py.thresholds, req.prep)?;
            // kNN graphs stored by an earlier run (large-n path), the missing ones searched and
            // stored; then derive what else the metrics need on every layer in parallel.
            for k in knn_ks(&req.specs) {
                let sides = [(x, px, &dx), (y, py, &dy)];
                *graphs.entry(pi).or_default() += ensure_graphs(reg, &sides, k, progress)?;
            }
            for spec in &req.specs {
                dx.par_iter()
                    .chain(dy.par_iter())
                    .for_each(|d| d.warm(spec));
            }
            let results = compute_cells(&req.specs, cells, &dx, &dy, progress).map_err(|e| {
                e.prefixed(&format!(
                    "{} @ {} × {} @ {}",
                    x.model, x.checkpoint, y.model, y.checkpoint
                ))
            })?;
            reg.catalog
                .store_cells(keys, side(x, set), side(y, set), &results)?;
            // Each layer's tied rows, while its neighbour lists are at hand.
            for spec in req.specs.iter().filter(|s| s.metric.uses_k()) {
                for (ck, p, d) in [(x, px, &dx), (y, py, &dy)] {
                    for (l, h) in ck.layers.iter().enumerate() {
                        let key = (*h, p.keys[l].clone(), spec.k);
                        if !cache.ties_stored.contains(&key) {
                            store_ties(reg, h, &p.keys[l], spec.k, &d[l].ties(spec.k), ck.n)?;
                            cache.ties_stored.insert(key);
                        }
                    }
                }
            }
            let ny = y.layers.len();
            for (si, i, j, v, _) in results {
                tables[pi][si][i * ny + j] = Some(v);
                *computed.entry((pi, si)).or_default() += 1;
            }
        }
    }

    Ok(Computed {
        cells: computed,
        graphs,
    })
}

/// The distinct k of the kNN metrics among `specs`.
pub(super) fn knn_ks(specs: &[MetricSpec]) -> Vec<usize> {
    let mut ks: Vec<usize> = specs
        .iter()
        .filter(|s| s.metric.uses_k())
        .map(|s| s.k)
        .collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Reports every pair from the (now complete) cell values.
pub(super) fn report(
    reg: &Registry,
    req: &SweepRequest,
    set: &PairSet,
    tables: &Tables,
    computed: &Computed,
) -> Result<Vec<PairResult>> {
    let (pairs, preps) = (&set.pairs, &set.preps);
    let mut out: Vec<PairResult> = Vec::new();
    for (si, spec) in req.specs.iter().enumerate() {
        for (pi, (x, y)) in pairs.iter().enumerate() {
            let table: Vec<Vec<f64>> = tables[pi][si]
                .chunks(y.layers.len())
                .map(|row| {
                    row.iter()
                        .map(|v| v.expect("every cell is cached or computed"))
                        .collect()
                })
                .collect();
            let (score, layers) = req.reduce.apply(&table)?;
            let ties = if spec.metric.uses_k() {
                // The tied rows of the pair the score comes from (the last pair for the mean).
                let [i, j] = layers.unwrap_or([x.layers.len() - 1, y.layers.len() - 1]);
                let tb = |c: &CheckpointLayers, l| {
                    let cp = &preps[&c.checkpoint_id];
                    tie_bits(reg, c, l, cp, req.prep, spec.k, req.mem_budget)
                };
                let (bx, by) = (tb(x, i)?, tb(y, j)?);
                Some(
                    bx.iter()
                        .zip(&by)
                        .map(|(a, b)| (a | b).count_ones() as usize)
                        .sum(),
                )
            } else {
                None
            };
            let total = x.layers.len() * y.layers.len();
            let comp = computed.cells.get(&(pi, si)).copied().unwrap_or(0);
            // Only where the large-n path ran (the dense path stores no graphs).
            let graphs_computed = (spec.metric.uses_k()
                && !crate::metrics::derived::dense_fits(x.n, req.mem_budget))
            .then(|| computed.graphs.get(&pi).copied().unwrap_or(0));
            out.push(PairResult {
                x_model: x.model.clone(),
                y_model: y.model.clone(),
                x_checkpoint: x.checkpoint.clone(),
                y_checkpoint: y.checkpoint.clone(),
                metric: spec.metric.name().to_string(),
                reduce: req.reduce.key(),
                prep: req.prep.kind(),
                score,
                best_layers: layers.map(|[i, j]| [x.layer_ids[i], y.layer_ids[j]]),
                ties,
                cells_computed: comp,
                cells_cached: total - comp,
                graphs_computed,
                null_mean: None,
                null_sd: None,
                p_value: None,
                q_value: None,
                z: None,
                tau: None,
                calibrated: None,
                chance_adjusted: None,
                ci95: None,
                table,
                x_checkpoint_id: x.checkpoint_id,
                y_checkpoint_id: y.checkpoint_id,
            });
        }
    }
    Ok(out)
}

/// Computes the missing cells of one model pair: the CKA family a block at a time (every
/// layer's kernel read once per block; a cell's seconds are its share of the block), the
/// other metrics cell by cell in parallel.
pub(super) fn compute_cells(
    specs: &[MetricSpec],
    cells: &[(usize, usize, usize)],
    dx: &[Arc<Derived>],
    dy: &[Arc<Derived>],
    progress: &dyn Progress,
) -> Result<Vec<NewCell>> {
    let mut out = Vec::with_capacity(cells.len());
    let mut single = Vec::new();
    for (si, spec) in specs.iter().enumerate() {
        let mine: Vec<(usize, usize)> = cells
            .iter()
            .filter(|c| c.0 == si)
            .map(|c| (c.1, c.2))
            .collect();
        if mine.is_empty() {
            continue;
        }
        if !spec.blocks() {
            single.extend(mine.into_iter().map(|(i, j)| (si, i, j)));
            continue;
        }
        let mut rows: Vec<usize> = mine.iter().map(|c| c.0).collect();
        let mut cols: Vec<usize> = mine.iter().map(|c| c.1).collect();
        rows.sort_unstable();
        rows.dedup();
        cols.sort_unstable();
        cols.dedup();
        go_on(progress)?;
        let t = Instant::now();
        let xs: Vec<&Derived> = rows.iter().map(|&i| &*dx[i]).collect();
        let ys: Vec<&Derived> = cols.iter().map(|&j| &*dy[j]).collect();
        let block = spec.compute_block(&xs, &ys).expect("blocks() said so")?;
        let secs = t.elapsed().as_secs_f64() / (rows.len() * cols.len()) as f64;
        progress.advance(mine.len() as u64);
        for (i, j) in mine {
            let (r, c) = (
                rows.binary_search(&i).expect("listed"),
                cols.binary_search(&j).expect("listed"),
            );
            out.push((si, i, j, block[r][c], secs));
        }
    }
    let rest = single
        .par_iter()
        .map(|&(si, i, j)| {
            go_on(progress)?;
            let t = Instant::now();
            let v = specs[si].compute(&dx[i], &dy[j]);
            progress.advance(1);
            v.map(|v| (si, i, j, v, t.elapsed().as_secs_f64()))
        })
        .collect::<Result<Vec<_>>>()?;
    out.extend(rest);
    Ok(out)
}

/// Stores a layer's tied rows at k as a bitset (bit i % 8 of byte i / 8 = row i).
pub(super) fn store_ties(
    reg: &Registry,
    hash: &BlobHash,
    prep_key: &str,
    k: usize,
    ties: &Ties,
    n: usize,
) -> Result<Vec<u8>> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for r in &ties.rows {
        bits[r.row as usize / 8] |= 1 << (r.row % 8);
    }
    reg.catalog.put_knn_ties(hash, prep_key, k, &bits)?;
    Ok(bits)
}

/// Layer `l` of a checkpoint's tied rows at k, from `knn_ties`, or computed from its blob (a
/// cache filled before ties were recorded, or imported from a bundle) and stored.
pub(super) fn tie_bits(
    reg: &Registry,
    ck: &CheckpointLayers,
    l: usize,
    cp: &CheckpointPrep,
    prep: Prep,
    k: usize,
    budget: usize,
) -> Result<Vec<u8>> {
    let (hash, key) = (&ck.layers[l], &cp.keys[l]);
    let stored = reg.catalog.knn_ties(hash, key, k)?;
    if let Some(bits) = stored.filter(|b| b.len() == ck.n.div_ceil(8)) {
        return Ok(bits);
    }
    let store = reg.store.as_ref();
    let d = derive_layer(store, ck, hash, cp.thresholds[l], prep.normalize, budget)?;
    store_ties(reg, hash, key, k, &d.ties(k), ck.n)
}
