//! Model-pair scores for `prh trend`, `prh matrix` and `prh trajectory`: what to fill through the sweep engine, and how results become rows.

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::args::MetricArgs;
use super::progress::Bar;
use prh::analysis::PairScore;
use prh::engine::Reduce;
use prh::metrics::{MetricSpec, Prep};
use prh::registry::Registry;
use prh::sweep::{self, Selector, SweepRequest};

pub(super) fn to_rows<T: Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).expect("serialises"))
        .collect()
}

/// The metric a query is about: exactly one.
pub(super) fn one_spec(m: &MetricArgs) -> Result<(MetricSpec, Prep, String)> {
    let specs = m.specs()?;
    if specs.len() != 1 {
        bail!("give exactly one --metric for this query");
    }
    let prep = m.prep()?;
    let kind = prep.kind();
    Ok((specs[0], prep, kind))
}

/// The metric as plots title it, with the layer aggregate unless it is the max.
pub(super) fn label(spec: &MetricSpec, reduce: Reduce) -> String {
    match reduce {
        Reduce::Max => spec.metric.name().to_string(),
        r => format!("{} ({})", spec.metric, r.key()),
    }
}

/// Adds the layer aggregate to every output row.
pub(super) fn with_reduce(mut rows: Vec<Value>, reduce: Reduce) -> Vec<Value> {
    for r in &mut rows {
        if let Value::Object(o) = r {
            o.insert("reduce".into(), reduce.key().into());
        }
    }
    rows
}

pub(super) fn metric_flags(spec: &MetricSpec, prep: Prep, reduce: Reduce) -> String {
    let mut s = format!("--metric {}", spec.metric);
    if reduce != Reduce::Max {
        s.push_str(&format!(" --reduce {}", reduce.key()));
    }
    if spec.ties == prh::metrics::TieBreak::Expected {
        s.push_str(" --ties expected");
    }
    if spec.metric.uses_k() {
        s.push_str(&format!(" --k {}", spec.k));
    }
    if let prh::metrics::Kernel::Rbf { sigma } = spec.kernel {
        s.push_str(&format!(" --kernel rbf --sigma {sigma}"));
    }
    if prep == Prep::NONE {
        s.push_str(" --no-prep");
    }
    match prep.scope {
        prh::metrics::ClampScope::Auto => {}
        prh::metrics::ClampScope::Checkpoint => s.push_str(" --clamp-scope checkpoint"),
        prh::metrics::ClampScope::Layer => s.push_str(" --clamp-scope layer"),
    }
    s
}

/// What to fill through the sweep engine before a query.
#[derive(Clone, Copy)]
pub(super) struct Fill {
    pub spec: MetricSpec,
    pub prep: Prep,
    pub all_checkpoints: bool,
    pub null: usize,
    pub seed: u64,
    pub alpha: f64,
    pub reduce: Reduce,
}

impl Fill {
    /// The cells of one metric (no null), at the latest checkpoints unless `all_checkpoints`.
    pub fn cells(spec: MetricSpec, prep: Prep, reduce: Reduce, all_checkpoints: bool) -> Self {
        Fill {
            spec,
            prep,
            all_checkpoints,
            null: 0,
            seed: 0,
            alpha: prh::stats::DEFAULT_ALPHA,
            reduce,
        }
    }

    /// With a permutation null of `null` permutations (0: none), seed and level.
    pub fn stats(self, null: usize, seed: u64, alpha: f64) -> Self {
        Fill {
            null,
            seed,
            alpha,
            ..self
        }
    }
}

/// Fills missing cells (and nulls when asked) through the sweep engine.
pub(super) fn compute(
    reg: &mut Registry,
    f: Fill,
    x: Selector,
    y: Selector,
) -> Result<Vec<sweep::PairResult>> {
    let req = SweepRequest {
        x,
        y,
        dataset: None,
        pool: None,
        all_checkpoints: f.all_checkpoints,
        x_checkpoint: None,
        specs: vec![f.spec],
        prep: f.prep,
        mem_budget: 4096 << 20,
        null: f.null,
        bootstrap: 0,
        seed: f.seed,
        alpha: f.alpha,
        reduce: f.reduce,
    };
    let bar = Bar::new(false);
    Ok(sweep::sweep(reg, &req, &bar)?)
}

pub(super) fn from_results(
    r: &[sweep::PairResult],
    value: impl Fn(&sweep::PairResult) -> f64,
) -> Vec<PairScore> {
    r.iter()
        .filter(|p| p.x_model != p.y_model)
        .map(|p| PairScore {
            x_model: p.x_model.clone(),
            x_checkpoint: p.x_checkpoint.clone(),
            x_checkpoint_id: p.x_checkpoint_id,
            x_step: None,
            y_model: p.y_model.clone(),
            y_checkpoint_id: p.y_checkpoint_id,
            score: value(p),
        })
        .collect()
}
