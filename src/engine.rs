//! Layer-pair search: every (layer_x, layer_y) score of two models and the best pair
//! (DESIGN.md §4: model-pair alignment = max over layer pairs, with the argmax layers).

use std::sync::Arc;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
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
        LayerTable {
            table,
            best,
            best_layers,
        }
    }
}

/// A checkpoint's derived layers and each layer's clamp threshold.
pub type Prepared = (Vec<Arc<Derived>>, Vec<Option<f32>>);

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
            Ok(Arc::new(Derived::new(prep::prepare(
                l.view(),
                t,
                prep.normalize,
            )?)))
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
