//! A pair's permutation null and bootstrap, from cached draws when the same were taken before.

use super::*;

/// The content key of a model pair's layer sets.
pub(super) fn pair_key(x: &CheckpointLayers, y: &CheckpointLayers) -> String {
    let mut h = blake3::Hasher::new();
    for l in &x.layers {
        h.update(&l.0);
    }
    h.update(b"|");
    for l in &y.layers {
        h.update(&l.0);
    }
    h.finalize().to_hex().to_string()
}

/// A cached sample of null or bootstrap draws, extended to `want` draws when shorter, in
/// blocks: work no longer wanted ([`go_on`]) stops between blocks and keeps the draws taken.
#[allow(clippy::too_many_arguments)]
pub(super) fn cached_draws(
    reg: &Registry,
    kind: &str,
    key: &str,
    spec: &MetricSpec,
    params: &str,
    px: &str,
    py: &str,
    seed: u64,
    want: usize,
    progress: &dyn Progress,
    mut compute: impl FnMut(&Registry, std::ops::Range<usize>) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    let draw_key = DrawKey {
        pair_key: key,
        kind,
        metric: spec.metric.name(),
        version: spec.metric.version(),
        params,
        prep_x: px,
        prep_y: py,
        seed,
    };
    let stored = reg.catalog.draws(&draw_key)?;
    let mut vals: Vec<f64> = stored
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let had = vals.len();
    if had < want {
        // Blocks large enough to keep every core busy, small enough to stop soon.
        let block = 64.max(8 * rayon::current_num_threads());
        let mut stopped = Ok(());
        while vals.len() < want {
            stopped = go_on(progress);
            if stopped.is_err() {
                break;
            }
            let end = want.min(vals.len() + block);
            let more = compute(reg, vals.len()..end)?;
            vals.extend(more);
        }
        if vals.len() > had {
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            reg.catalog.put_draws(&draw_key, &bytes)?;
        }
        stopped?;
    }
    vals.truncate(want);
    Ok(vals)
}

/// Adds permutation-null and bootstrap statistics to every pair result.
pub(super) fn add_statistics(
    reg: &Registry,
    req: &SweepRequest,
    set: &PairSet,
    out: &mut [PairResult],
    cache: &mut DerivedCache,
    progress: &dyn Progress,
) -> Result<()> {
    // The sweep's own derived data: a representation's neighbour lists, kernels and bases
    // computed for the cells serve the null and the bootstrap too.
    let (pairs, preps) = (&set.pairs, &set.preps);
    progress.start((pairs.len() * req.specs.len() * (req.null + req.bootstrap)) as u64);
    for (si, spec) in req.specs.iter().enumerate() {
        for (pi, (x, y)) in pairs.iter().enumerate() {
            progress.message(&format!("null {} × {}", x.model, y.model));
            let (prep_x, prep_y) = (&preps[&x.checkpoint_id], &preps[&y.checkpoint_id]);
            let (px, py) = (&prep_x.set_key, &prep_y.set_key);
            let key = pair_key(x, y);
            // Samples of another aggregate are other samples (the max keeps its old key).
            let params = match req.reduce {
                Reduce::Max => spec.params_key(),
                r => format!("{};reduce={}", spec.params_key(), r.key()),
            };
            let result = &mut out[si * pairs.len() + pi];
            let mut loaded: Option<(Layers, Layers)> = None;
            let mut load = |reg: &Registry| -> Result<(Layers, Layers)> {
                if let Some(l) = &loaded {
                    return Ok(l.clone());
                }
                let l = (
                    cache.get(reg, x, &prep_x.thresholds, req.prep)?,
                    cache.get(reg, y, &prep_y.thresholds, req.prep)?,
                );
                // The kNN graphs an earlier run stored; any still missing searched and stored.
                if spec.metric.uses_k() {
                    let sides = [(*x, prep_x, &l.0), (*y, prep_y, &l.1)];
                    ensure_graphs(reg, &sides, spec.k, progress)?;
                }
                loaded = Some(l.clone());
                Ok(l)
            };
            let mut sample = |how: Resampling, want: usize| {
                cached_draws(
                    reg,
                    how.name(),
                    &key,
                    spec,
                    &params,
                    px,
                    py,
                    req.seed,
                    want,
                    progress,
                    |reg, range| {
                        let (dx, dy) = load(reg)?;
                        let v = stats::draws(how, spec, req.reduce, (&dx, &dy), req.seed, range)?;
                        progress.advance(v.len() as u64);
                        Ok(v)
                    },
                )
            };
            if req.null > 0 {
                let draws = sample(Resampling::Permutation, req.null)?;
                let s = stats::summarize(result.score, &draws, spec.max_attainable(), req.alpha);
                result.null_mean = Some(s.null_mean);
                result.null_sd = Some(s.null_sd);
                result.p_value = Some(s.p_value);
                result.z = Some(s.z);
                result.tau = Some(s.tau);
                result.calibrated = Some(s.calibrated);
                result.chance_adjusted = Some(s.chance_adjusted);
            }
            if req.bootstrap > 0 {
                result.ci95 = Some(stats::ci95(&sample(Resampling::Bootstrap, req.bootstrap)?));
            }
        }
        // The metric's pairs are one family for false-discovery control.
        let family = &mut out[si * pairs.len()..(si + 1) * pairs.len()];
        if let Some(ps) = family
            .iter()
            .map(|r| r.p_value)
            .collect::<Option<Vec<f64>>>()
        {
            for (r, q) in family.iter_mut().zip(stats::bh_q_values(&ps)) {
                r.q_value = Some(q);
            }
        }
    }
    Ok(())
}
