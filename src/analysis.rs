//! The questions researchers ask of a zoo, as polars pipelines over [`crate::query`] frames:
//! alignment vs. performance (`trend`), the model × model table (`matrix`), alignment across
//! training checkpoints (`trajectory`), and alignment within performance bins (`within`).

use std::collections::{BTreeMap, HashMap, HashSet};

use polars::prelude::*;
use serde::Serialize;

use crate::catalog::CheckpointId;
use crate::error::{Error, Result};
use crate::layers::Reduce;
use crate::metrics::MetricSpec;
use crate::query::{self, pe};
use crate::registry::Registry;
use crate::stats;

/// What to relate.
#[derive(Debug, Clone)]
pub struct TrendRequest {
    /// The metric (and its parameters) whose cached alignments are related.
    pub spec: MetricSpec,
    /// Preparation kind (see [`crate::metrics::prep::kind_of_key`]); the official one by default.
    pub prep: String,
    /// How each pair's layer-pair table became its score.
    pub reduce: Reduce,
    /// The models whose performance is on the horizontal axis.
    pub x: Vec<String>,
    /// The reference models each x model is aligned with.
    pub y: Vec<String>,
    /// Name of the performance score.
    pub perf: String,
    /// Direction of the score; `None` uses the stored direction (else higher is better).
    pub lower_is_better: Option<bool>,
    /// One series per y model instead of the mean over y.
    pub per_y: bool,
    /// Bootstrap resamples (over models) for the interval of r.
    pub bootstrap: usize,
    /// Seed of those resamples.
    pub seed: u64,
}

/// One model in a trend.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrendPoint {
    pub model: String,
    pub checkpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y_model: Option<String>,
    pub alignment: f64,
    pub performance: f64,
}

/// A trend and its statistics (`trend --format json` prints exactly this object).
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    /// How each pair's layer-pair table became its alignment (`max`, `mean`, ...).
    pub reduce: String,
    pub models: Vec<TrendPoint>,
    pub pearson_r: Option<f64>,
    pub pearson_p: Option<f64>,
    pub spearman_rho: Option<f64>,
    pub spearman_p: Option<f64>,
    /// Least squares alignment = slope · performance + intercept.
    pub slope: Option<f64>,
    pub intercept: Option<f64>,
    pub r_ci95: Option<[f64; 2]>,
    pub n_models: usize,
    pub higher_is_better: bool,
    pub verdict: String,
}

/// A model pair's score, the input every analysis starts from.
#[derive(Debug, Clone)]
pub struct PairScore {
    pub x_model: String,
    pub x_checkpoint: String,
    pub x_checkpoint_id: CheckpointId,
    pub x_step: Option<i64>,
    pub y_model: String,
    pub y_checkpoint_id: CheckpointId,
    pub score: f64,
}

/// Latest checkpoint id of each model.
pub fn latest(reg: &Registry, models: &[String]) -> Result<HashMap<String, CheckpointId>> {
    models
        .iter()
        .map(|m| {
            let ck = reg
                .catalog
                .latest_checkpoint(m)?
                .ok_or_else(|| Error::NotFound(format!("model {m} has no checkpoint")))?;
            Ok((m.clone(), ck.id))
        })
        .collect()
}

/// Model-pair scores from the cache for the given checkpoints, as a frame pipeline.
/// Errors with the `prh align` command that fills what is missing.
pub fn cached_pairs(
    reg: &Registry,
    spec: &MetricSpec,
    prep: &str,
    reduce: Reduce,
    x_ids: &[CheckpointId],
    y_ids: &[CheckpointId],
    align_hint: &str,
) -> Result<Vec<PairScore>> {
    let df = query::alignment_for(reg, spec.metric, &spec.params_key(), prep, reduce)?;
    let raw = |ids: &[CheckpointId]| ids.iter().map(|c| c.0).collect::<Vec<i64>>();
    let xs = Series::new("x".into(), raw(x_ids));
    let ys = Series::new("y".into(), raw(y_ids));
    let out = df
        .lazy()
        .filter(
            col("x_checkpoint_id")
                .is_in(lit(xs).implode(false), false)
                .and(col("y_checkpoint_id").is_in(lit(ys).implode(false), false))
                .and(col("x_checkpoint_id").neq(col("y_checkpoint_id")))
                .and(col("complete")),
        )
        .select([
            col("x_model"),
            col("x_checkpoint"),
            col("x_checkpoint_id"),
            col("x_step"),
            col("y_model"),
            col("y_checkpoint_id"),
            col("score"),
        ])
        // The alignment frame's group order varies from run to run; a fixed order makes
        // every sum over pairs (the trend's mean over y) the same to the last bit.
        .sort(["x_checkpoint_id", "y_checkpoint_id"], Default::default())
        .collect()
        .map_err(pe)?;
    let pairs = pair_scores(&out)?;
    // A complete table without the asked-for cell: a fixed layer pair the models lack. Never
    // a statistic over missing values.
    if let Some(p) = pairs.iter().find(|p| !p.score.is_finite()) {
        return Err(Error::Invalid(match reduce {
            Reduce::Layers(i, j) => format!(
                "--reduce layers={i},{j}: {} × {} has no such layer pair (layer indices are 0-based; `prh ls reps --model {}` lists its layers)",
                p.x_model, p.y_model, p.x_model
            ),
            _ => format!(
                "no {} score for {} × {}: its cached cells hold no finite value",
                reduce.key(),
                p.x_model,
                p.y_model
            ),
        }));
    }
    let have: HashSet<(CheckpointId, CheckpointId)> = pairs
        .iter()
        .map(|p| (p.x_checkpoint_id, p.y_checkpoint_id))
        .collect();
    let missing = x_ids
        .iter()
        .flat_map(|&x| y_ids.iter().map(move |&y| (x, y)))
        .filter(|(x, y)| x != y && !have.contains(&(*x, *y)))
        .count();
    if missing > 0 {
        return Err(Error::NotCached {
            pairs: missing,
            what: format!("{} ({})", spec.metric, spec.params_key()),
            command: align_hint.to_string(),
        });
    }
    Ok(pairs)
}

fn pair_scores(df: &DataFrame) -> Result<Vec<PairScore>> {
    let s = |name: &str| df.column(name).map_err(pe);
    let xm = s("x_model")?.str().map_err(pe)?.clone();
    let xc = s("x_checkpoint")?.str().map_err(pe)?.clone();
    let xi = s("x_checkpoint_id")?.i64().map_err(pe)?.clone();
    let xs = s("x_step")?.i64().map_err(pe)?.clone();
    let ym = s("y_model")?.str().map_err(pe)?.clone();
    let yi = s("y_checkpoint_id")?.i64().map_err(pe)?.clone();
    let sc = s("score")?.f64().map_err(pe)?.clone();
    Ok((0..df.height())
        .map(|i| PairScore {
            x_model: xm.get(i).unwrap_or_default().to_string(),
            x_checkpoint: xc.get(i).unwrap_or_default().to_string(),
            x_checkpoint_id: CheckpointId(xi.get(i).unwrap_or_default()),
            x_step: xs.get(i),
            y_model: ym.get(i).unwrap_or_default().to_string(),
            y_checkpoint_id: CheckpointId(yi.get(i).unwrap_or_default()),
            score: sc.get(i).unwrap_or(f64::NAN),
        })
        .collect())
}

/// A score of each checkpoint, and whether higher is better: `lower_is_better` when given,
/// else the stored direction, else higher.
fn perf_of(
    reg: &Registry,
    perf: &str,
    lower_is_better: Option<bool>,
) -> Result<(HashMap<CheckpointId, f64>, bool)> {
    let mut out = HashMap::new();
    let mut stored = None;
    for s in reg
        .catalog
        .scores(None)?
        .into_iter()
        .filter(|s| s.name == perf)
    {
        out.insert(s.checkpoint_id, s.value);
        if let Some(h) = s.higher_is_better {
            stored = Some(h);
        }
    }
    let higher = lower_is_better.map(|l| !l).or(stored).unwrap_or(true);
    Ok((out, higher))
}

/// Relates alignment to performance over models (the paper's "alignment vs. performance").
pub fn trend(reg: &Registry, req: &TrendRequest, pairs: &[PairScore]) -> Result<Trend> {
    let (perf, higher_is_better) = perf_of(reg, &req.perf, req.lower_is_better)?;
    // Mean over y (or one row per y) as a polars pipeline.
    let df = DataFrame::new_infer_height(vec![
        Column::new(
            "model".into(),
            pairs.iter().map(|p| p.x_model.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "checkpoint".into(),
            pairs
                .iter()
                .map(|p| p.x_checkpoint.clone())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "checkpoint_id".into(),
            pairs
                .iter()
                .map(|p| p.x_checkpoint_id.0)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "y_model".into(),
            pairs.iter().map(|p| p.y_model.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "score".into(),
            pairs.iter().map(|p| p.score).collect::<Vec<_>>(),
        ),
    ])
    .map_err(pe)?;
    let keys: Vec<Expr> = if req.per_y {
        vec![
            col("model"),
            col("checkpoint"),
            col("checkpoint_id"),
            col("y_model"),
        ]
    } else {
        vec![col("model"), col("checkpoint"), col("checkpoint_id")]
    };
    let agg = df
        .lazy()
        .group_by_stable(keys)
        .agg([col("score").mean().alias("alignment")])
        .sort(
            ["model"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .collect()
        .map_err(pe)?;
    let model = agg.column("model").map_err(pe)?.str().map_err(pe)?.clone();
    let ck = agg
        .column("checkpoint")
        .map_err(pe)?
        .str()
        .map_err(pe)?
        .clone();
    let ck_id = agg
        .column("checkpoint_id")
        .map_err(pe)?
        .i64()
        .map_err(pe)?
        .clone();
    let al = agg
        .column("alignment")
        .map_err(pe)?
        .f64()
        .map_err(pe)?
        .clone();
    let ym = if req.per_y {
        Some(
            agg.column("y_model")
                .map_err(pe)?
                .str()
                .map_err(pe)?
                .clone(),
        )
    } else {
        None
    };
    let mut points = Vec::new();
    let mut no_score = Vec::new();
    for i in 0..agg.height() {
        let name = model.get(i).unwrap_or_default().to_string();
        match perf.get(&CheckpointId(ck_id.get(i).unwrap_or_default())) {
            Some(&p) => points.push(TrendPoint {
                model: name,
                checkpoint: ck.get(i).unwrap_or_default().to_string(),
                y_model: ym
                    .as_ref()
                    .map(|c| c.get(i).unwrap_or_default().to_string()),
                alignment: al.get(i).unwrap_or(f64::NAN),
                performance: p,
            }),
            None => no_score.push(name),
        }
    }
    if !no_score.is_empty() {
        no_score.dedup();
        return Err(Error::NotFound(format!(
            "no {} score for {} (set it with `prh score set --model M {}=VALUE`)",
            req.perf,
            no_score.join(", "),
            req.perf
        )));
    }
    Ok(summarize_trend(
        points,
        higher_is_better,
        req.reduce,
        req.bootstrap,
        req.seed,
    ))
}

/// Correlations, fit, interval and verdict of trend points.
pub fn summarize_trend(
    points: Vec<TrendPoint>,
    higher_is_better: bool,
    reduce: Reduce,
    bootstrap: usize,
    seed: u64,
) -> Trend {
    let a: Vec<f64> = points.iter().map(|p| p.alignment).collect();
    let p: Vec<f64> = points.iter().map(|p| p.performance).collect();
    let n = points.len();
    let r = stats::pearson(&p, &a);
    let rho = stats::spearman(&p, &a);
    let rho_p = rho.and(stats::spearman_p(&p, &a));
    let fit = stats::least_squares(&p, &a);
    let verdict = match (rho, rho_p) {
        (Some(rho), Some(pv)) => {
            let good = if higher_is_better { rho } else { -rho };
            let answer = if pv >= 0.05 {
                "not significant"
            } else if good > 0.0 {
                "yes"
            } else {
                "no"
            };
            format!("better models align more: {answer}, ρ = {rho:.3} (p = {pv:.3}, {n} models)")
        }
        _ => format!("better models align more: undetermined ({n} models)"),
    };
    Trend {
        reduce: reduce.key(),
        pearson_p: r.and_then(|v| stats::correlation_p(v, n)),
        pearson_r: r,
        spearman_rho: rho,
        spearman_p: rho_p,
        slope: fit.map(|f| f.0),
        intercept: fit.map(|f| f.1),
        r_ci95: if bootstrap > 0 {
            stats::pearson_ci95(&p, &a, bootstrap, seed)
        } else {
            None
        },
        n_models: n,
        higher_is_better,
        verdict,
        models: points,
    }
}

/// One bin of the within-set analysis.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    pub bin: usize,
    pub n_models: usize,
    pub performance_mean: f64,
    /// Mean alignment over the pairs of models inside the bin.
    pub alignment_mean: Option<f64>,
    pub models: String,
}

/// The paper's Figure 2 form: bin models by performance and average the pairwise alignment
/// inside each bin. Bins are equal-count, from worst to best.
pub fn within(
    reg: &Registry,
    pairs: &[PairScore],
    models: &[(String, CheckpointId)],
    perf: &str,
    lower_is_better: Option<bool>,
    bins: usize,
) -> Result<Vec<Bin>> {
    let (scores, higher) = perf_of(reg, perf, lower_is_better)?;
    let mut ranked: Vec<(String, CheckpointId, f64)> = models
        .iter()
        .map(|(m, id)| {
            scores
                .get(id)
                .map(|&s| (m.clone(), *id, s))
                .ok_or_else(|| Error::NotFound(format!("no {perf} score for {m}")))
        })
        .collect::<Result<_>>()?;
    ranked.sort_by(|a, b| {
        if higher {
            a.2.total_cmp(&b.2)
        } else {
            b.2.total_cmp(&a.2)
        }
    });
    let bins = bins.clamp(1, ranked.len().max(1));
    let score: HashMap<(CheckpointId, CheckpointId), f64> = pairs
        .iter()
        .map(|p| ((p.x_checkpoint_id, p.y_checkpoint_id), p.score))
        .collect();
    let mut out = Vec::new();
    for b in 0..bins {
        let lo = b * ranked.len() / bins;
        let hi = (b + 1) * ranked.len() / bins;
        let members = &ranked[lo..hi];
        let mut vals = Vec::new();
        for i in members {
            for j in members {
                if i.1 != j.1
                    && let Some(v) = score.get(&(i.1, j.1))
                {
                    vals.push(*v);
                }
            }
        }
        out.push(Bin {
            bin: b,
            n_models: members.len(),
            performance_mean: members.iter().map(|m| m.2).sum::<f64>()
                / members.len().max(1) as f64,
            alignment_mean: (!vals.is_empty())
                .then(|| vals.iter().sum::<f64>() / vals.len() as f64),
            models: members
                .iter()
                .map(|m| m.0.clone())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    Ok(out)
}

/// A model × model table: `rows` × `cols` with `values[i][j]` (None when not cached).
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    /// The score the rows are ordered by (worst to best), when ordered.
    pub row_order: Option<String>,
    /// The score the columns are ordered by: each side by a score its own models have.
    pub col_order: Option<String>,
    /// What the cells hold when not the scores: `p_value`, `q_value` or `calibrated`.
    pub holds: Option<&'static str>,
}

/// Arranges pair scores as a matrix; rows and columns in the given orders.
pub fn matrix(pairs: &[PairScore], rows: &[String], cols: &[String]) -> Matrix {
    let m: HashMap<(&str, &str), f64> = pairs
        .iter()
        .map(|p| ((p.x_model.as_str(), p.y_model.as_str()), p.score))
        .collect();
    Matrix {
        values: rows
            .iter()
            .map(|r| {
                cols.iter()
                    .map(|c| m.get(&(r.as_str(), c.as_str())).copied())
                    .collect()
            })
            .collect(),
        rows: rows.to_vec(),
        cols: cols.to_vec(),
        row_order: None,
        col_order: None,
        holds: None,
    }
}

/// Orders models from worst to best by a score (ties and missing scores by name).
/// The score to order `models` by: `preferred` when any of their latest checkpoints has it,
/// else the score most of them have (the first by name on a tie); `None` when they have none.
/// So a language × vision table orders the language rows by bpb and the vision columns by
/// their own accuracy, not alphabetically.
pub fn own_score(reg: &Registry, models: &[String], preferred: &str) -> Result<Option<String>> {
    let ids: HashSet<CheckpointId> = latest(reg, models)?.into_values().collect();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for s in reg.catalog.scores(None)? {
        if ids.contains(&s.checkpoint_id) {
            *count.entry(s.name).or_default() += 1;
        }
    }
    if count.contains_key(preferred) {
        return Ok(Some(preferred.to_string()));
    }
    let mut best: Option<(String, usize)> = None;
    for (name, n) in count {
        if best.as_ref().is_none_or(|(_, b)| n > *b) {
            best = Some((name, n));
        }
    }
    Ok(best.map(|(name, _)| name))
}

pub fn order_by_perf(
    reg: &Registry,
    models: &[String],
    perf: &str,
    lower_is_better: Option<bool>,
) -> Result<Vec<String>> {
    let (scores, higher) = perf_of(reg, perf, lower_is_better)?;
    let ids = latest(reg, models)?;
    let mut v: Vec<(String, Option<f64>)> = models
        .iter()
        .map(|m| (m.clone(), scores.get(&ids[m]).copied()))
        .collect();
    v.sort_by(|a, b| match (a.1, b.1) {
        (Some(x), Some(y)) => {
            let o = x.total_cmp(&y);
            if higher { o } else { o.reverse() }
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.0.cmp(&b.0),
    });
    Ok(v.into_iter().map(|x| x.0).collect())
}

/// One point of a trajectory.
#[derive(Debug, Clone, Serialize)]
pub struct TrajectoryPoint {
    pub checkpoint: String,
    pub step: Option<i64>,
    pub against: String,
    pub score: f64,
}

/// Alignment of one model's checkpoints (in step order) to each reference model.
pub fn trajectory(pairs: &[PairScore]) -> Vec<TrajectoryPoint> {
    let mut by: BTreeMap<(i64, CheckpointId, String), TrajectoryPoint> = BTreeMap::new();
    for p in pairs {
        by.insert(
            (
                p.x_step.unwrap_or(i64::MAX),
                p.x_checkpoint_id,
                p.y_model.clone(),
            ),
            TrajectoryPoint {
                checkpoint: p.x_checkpoint.clone(),
                step: p.x_step,
                against: p.y_model.clone(),
                score: p.score,
            },
        );
    }
    by.into_values().collect()
}
