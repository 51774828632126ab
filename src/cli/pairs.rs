//! Model-pair scores for `prh trend`, `prh matrix` and `prh trajectory`: the view a command's
//! metric flags ask for, filling through the sweep engine, and how results become rows.

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::args::MetricArgs;
use super::progress::Bar;
use prh::Error;
use prh::layers::Reduce;
use prh::registry::Registry;
use prh::sweep::{self, Selector};
use prh::views::{NullSpec, View};

pub(super) fn to_rows<T: Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).expect("serialises"))
        .collect()
}

/// The view a query is about: exactly one metric.
pub(super) fn one_view(m: &MetricArgs) -> Result<View> {
    let specs = m.specs()?;
    if specs.len() != 1 {
        bail!(Error::Invalid(
            "give exactly one --metric for this query".into()
        ));
    }
    Ok(View {
        spec: specs[0],
        prep: m.prep()?,
        reduce: m.reduce,
    })
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

/// Fills missing cells (and a null when asked) through the sweep engine, with a progress bar.
pub(super) fn compute(
    reg: &mut Registry,
    view: &View,
    sel: (Selector, Selector),
    all_checkpoints: bool,
    null: Option<NullSpec>,
) -> Result<Vec<sweep::PairResult>> {
    let bar = Bar::new(false);
    Ok(view.fill(reg, sel, all_checkpoints, null, &bar)?)
}
