//! Layer-pair search: every (layer_x, layer_y) score of two models, and the model-pair score as
//! an aggregate of that table (docs/design.md §4): by default the max over layer pairs with the
//! argmax layers, as the official code; or the mean, the last-layer pair, or a fixed pair.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::metrics::{Derived, Layout, MetricSpec, Prep, prep};

/// All layer-pair scores of one model pair and the best one.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTable {
    /// Scores, rows = x layers, columns = y layers.
    pub table: Vec<Vec<f64>>,
    /// The maximum over all layer pairs (the true max, also when every score is negative).
    pub best: f64,
    /// [x_layer, y_layer] of the maximum (first in row-major order on ties).
    pub best_layers: [usize; 2],
}

impl LayerTable {
    /// Builds the table's best from its scores.
    pub fn from_table(table: Vec<Vec<f64>>) -> Self {
        let (best, best_layers) = argmax(&table);
        LayerTable {
            table,
            best,
            best_layers,
        }
    }
}

/// The largest value of a table (the true max, also when every value is negative) and its
/// [row, column], the first in row-major order on ties.
fn argmax(table: &[Vec<f64>]) -> (f64, [usize; 2]) {
    let mut best = f64::NEG_INFINITY;
    let mut best_layers = [0, 0];
    for (i, row) in table.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if v > best {
                best = v;
                best_layers = [i, j];
            }
        }
    }
    (best, best_layers)
}

/// A checkpoint's derived layers and each layer's clamp threshold.
pub type Prepared = (Vec<Arc<Derived>>, Vec<Option<f32>>);

/// How a model pair's layer-pair table becomes one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduce {
    /// The max over all layer pairs, with its layers (the official choice).
    #[default]
    Max,
    /// The mean over all layer pairs.
    Mean,
    /// The last x layer with the last y layer.
    Last,
    /// One fixed pair: x layer I with y layer J.
    Layers(usize, usize),
}

impl Reduce {
    /// The canonical name, as given on the command line and printed with every score.
    pub fn key(&self) -> String {
        match self {
            Reduce::Max => "max".into(),
            Reduce::Mean => "mean".into(),
            Reduce::Last => "last".into(),
            Reduce::Layers(i, j) => format!("layers={i},{j}"),
        }
    }

    /// The layer pair this reduction scores on its own, for a table of `lx` × `ly` layers
    /// (`None` for max and mean, which need every pair).
    pub fn single(&self, lx: usize, ly: usize) -> Result<Option<[usize; 2]>> {
        match *self {
            Reduce::Max | Reduce::Mean => Ok(None),
            Reduce::Last => Ok(Some([lx - 1, ly - 1])),
            Reduce::Layers(i, j) if i < lx && j < ly => Ok(Some([i, j])),
            Reduce::Layers(i, j) => Err(Error::Invalid(format!(
                "--reduce layers={i},{j}: the models have {lx} × {ly} layers (0-based indices)"
            ))),
        }
    }

    /// The score of a full table and the layer pair it comes from (none for the mean).
    pub fn apply(&self, table: &[Vec<f64>]) -> Result<(f64, Option<[usize; 2]>)> {
        let (lx, ly) = (table.len(), table.first().map_or(0, |r| r.len()));
        if lx == 0 || ly == 0 {
            return Err(Error::Internal("no layer pairs to aggregate".into()));
        }
        if let Some([i, j]) = self.single(lx, ly)? {
            return Ok((table[i][j], Some([i, j])));
        }
        if *self == Reduce::Mean {
            let sum: f64 = table.iter().flatten().sum();
            return Ok((sum / (lx * ly) as f64, None));
        }
        let (best, layers) = argmax(table);
        Ok((best, Some(layers)))
    }
}

impl std::str::FromStr for Reduce {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "bad --reduce {s:?}: use max, mean, last or layers=I,J (0-based layer indices)"
            ))
        };
        match s.trim() {
            "max" => Ok(Reduce::Max),
            "mean" => Ok(Reduce::Mean),
            "last" => Ok(Reduce::Last),
            other => {
                let (i, j) = other
                    .strip_prefix("layers=")
                    .and_then(|v| v.split_once(','))
                    .ok_or_else(bad)?;
                Ok(Reduce::Layers(
                    i.trim().parse().map_err(|_| bad())?,
                    j.trim().parse().map_err(|_| bad())?,
                ))
            }
        }
    }
}

/// Prepares every layer of one checkpoint given in `layout`: the clamp thresholds are computed
/// at the scope `prep` resolves to (over all layers together, or per layer), then each layer
/// is clamped and row-normalised. Returns the derived data and each layer's threshold.
pub fn derive_checkpoint(layers: &[Array2<f32>], prep: Prep, layout: Layout) -> Result<Prepared> {
    let views: Vec<ArrayView2<f32>> = layers.iter().map(|l| l.view()).collect();
    let scope = prep.scope.resolve(Some(layout), layers.len());
    let thresholds = prep.thresholds(&views, scope);
    let derived = layers
        .par_iter()
        .zip(thresholds.par_iter())
        .map(|(l, &t)| {
            Ok(Arc::new(Derived::within(
                prep::prepare(l.view(), t, prep.normalize)?,
                crate::metrics::derived::DEFAULT_BUDGET,
            )))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((derived, thresholds))
}

/// Scores every layer pair (in parallel) and finds the best.
pub fn layer_table(
    spec: &MetricSpec,
    xs: &[Arc<Derived>],
    ys: &[Arc<Derived>],
) -> Result<LayerTable> {
    if let Some(block) = spec.compute_block(xs, ys) {
        return Ok(LayerTable::from_table(block?));
    }
    xs.par_iter()
        .chain(ys.par_iter())
        .for_each(|d| d.warm(spec));
    let cells: Vec<(usize, usize)> = (0..xs.len())
        .flat_map(|i| (0..ys.len()).map(move |j| (i, j)))
        .collect();
    let values = cells
        .par_iter()
        .map(|&(i, j)| spec.compute(&xs[i], &ys[j]))
        .collect::<Result<Vec<f64>>>()?;
    let table = values.chunks(ys.len()).map(|r| r.to_vec()).collect();
    Ok(LayerTable::from_table(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reduce_key_reads_back_as_what_wrote_it() {
        for r in [
            Reduce::Max,
            Reduce::Mean,
            Reduce::Last,
            Reduce::Layers(0, 0),
            Reduce::Layers(3, 11),
        ] {
            assert_eq!(r.key().parse::<Reduce>().unwrap(), r, "{}", r.key());
        }
        for bad in ["min", "layers=1", "layers=a,b", "layers=1,2,3", ""] {
            assert!(bad.parse::<Reduce>().is_err(), "{bad}");
        }
    }
}
