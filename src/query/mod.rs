//! Polars-powered queries over the catalog.
//!
//! The catalog is exposed as LazyFrames with documented names and columns:
//!
//! | table | columns |
//! | --- | --- |
//! | `models` | name, modality, family, num_params |
//! | `checkpoints` | model, checkpoint, step, created_at |
//! | `datasets` | name, n, description |
//! | `reps` | rep, hash, model, modality, family, checkpoint, checkpoint_id, step, dataset, layer, pool, n, d, layers, layout |
//! | `scores` | model, checkpoint, checkpoint_id, name, value, higher_is_better |
//! | `reps` also has `meta`: the checkpoint's provenance as a JSON object (`--meta`) |
//! | `cells` | x_rep, y_rep, metric, params, prep, value: one row per layer pair and orientation |
//! | `alignment` | x_model, x_checkpoint, x_step, x_modality, y_model, y_checkpoint, y_step, y_modality, metric, params, prep, reduce, score, x_layer, y_layer, cells, complete, x_checkpoint_id, y_checkpoint_id |
//!
//! `cells` comes from the content-addressed cache: each cached (hash_x, hash_y) value is
//! expanded to every representation pair that uses those blobs, in both orientations for
//! symmetric metrics. `prep` is the preparation without thresholds (`clamp(q=0.95);l2`, `l2`,
//! `raw`): a cell counts for a layer set only when it was computed at the clamp scope the set
//! resolves to (the official rule by default: per layer for features given as per-layer
//! arrays, over the checkpoint for a stacked tensor; `scope=checkpoint` or `scope=layer` in
//! the kind forces one, see [`crate::metrics::Prep::kind`]) and with that set's thresholds.
//! `alignment` is the model-pair best over layer pairs; `complete` says every layer pair is
//! cached.

use std::collections::HashMap;

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::catalog::{Catalog, CellReader, CheckpointId, DatasetId};
use crate::error::{Error, Result};
use crate::layers::Reduce;
use crate::metrics::{ClampRule, ClampScope, Layout, Metric, Scope, prep};
use crate::registry::Registry;

/// A polars failure inside prh's own pipeline (the frames are prh's, so it is a bug).
pub(crate) fn pe(e: PolarsError) -> Error {
    Error::Internal(format!("polars: {e}"))
}

/// A polars failure running the user's SQL: their query's fault.
fn user_sql(e: PolarsError) -> Error {
    Error::Invalid(format!("query: {e}"))
}

mod cells;
mod frames;
mod reps;

pub use cells::*;
pub use frames::*;
pub use reps::*;

/// Which cached cells to load.
#[derive(Debug, Clone, Default)]
pub struct CellFilter {
    /// Only this metric.
    pub metric: Option<String>,
    /// Only these canonical parameters.
    pub params: Option<String>,
    /// The clamp scope a layer set's cells must have been computed at.
    pub scope: ClampScope,
}

/// Writes a DataFrame as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    polars_io::parquet::write::ParquetWriter::new(f)
        .finish(df)
        .map_err(pe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_output_reads_back_as_the_same_frame() {
        use polars_io::SerReader;
        let rows = vec![
            serde_json::json!({"model": "a", "step": 1, "score": 0.25}),
            serde_json::json!({"model": "b", "step": null, "score": 0.5}),
        ];
        let mut df = crate::frame::from_rows(&rows).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_parquet(&mut df, &path).unwrap();
        let back =
            polars_io::parquet::read::ParquetReader::new(std::fs::File::open(&path).unwrap())
                .finish()
                .unwrap();
        assert!(back.equals_missing(&df), "{back} vs {df}");
    }
}
