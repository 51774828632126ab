//! Polars-powered queries over the catalog (DESIGN.md §6).
//!
//! The catalog is exposed as LazyFrames with documented names and columns:
//!
//! | table | columns |
//! | --- | --- |
//! | `models` | name, modality, family, num_params |
//! | `checkpoints` | model, checkpoint, step, created_at |
//! | `datasets` | name, n, description |
//! | `reps` | rep, hash, model, modality, family, checkpoint, checkpoint_id, step, dataset, layer, pool, n, d, layers |
//! | `scores` | model, checkpoint, checkpoint_id, name, value, higher_is_better |
//! | `cells` | x_rep, y_rep, metric, params, prep, value: one row per layer pair and orientation |
//! | `alignment` | x_model, x_checkpoint, x_step, x_modality, y_model, y_checkpoint, y_step, y_modality, metric, params, prep, score, x_layer, y_layer, cells, complete, x_checkpoint_id, y_checkpoint_id |
//!
//! `cells` comes from the content-addressed cache: each cached (hash_x, hash_y) value is
//! expanded to every representation pair that uses those blobs, in both orientations for
//! symmetric metrics. `prep` is the preparation without the per-checkpoint threshold
//! (`clamp(q=0.95);l2`, `l2`, `raw`). `alignment` is the model-pair best over layer pairs;
//! `complete` says every layer pair is cached.

use std::collections::HashMap;

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::error::{Error, Result};
use crate::metrics::Metric;
use crate::registry::Registry;

/// Turns a polars error into ours.
fn pe(e: PolarsError) -> Error {
    Error::Invalid(format!("query: {e}"))
}

/// The official preparation's key without its threshold.
pub const OFFICIAL_PREP: &str = "clamp(q=0.95);l2";

/// A prep key without the per-checkpoint threshold: `clamp(q=0.95,t=0x…);l2` → `clamp(q=0.95);l2`.
pub fn prep_kind(key: &str) -> String {
    key.split(';')
        .map(|part| match part.strip_prefix("clamp(") {
            Some(inner) => {
                let kept: Vec<&str> = inner
                    .trim_end_matches(')')
                    .split(',')
                    .filter(|kv| !kv.starts_with("t="))
                    .collect();
                format!("clamp({})", kept.join(","))
            }
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Which cached cells to load.
#[derive(Debug, Clone, Default)]
pub struct CellFilter {
    pub metric: Option<String>,
    pub params: Option<String>,
}

/// One row per representation, with its checkpoint's layer count.
pub struct RepIndex {
    pub frame: DataFrame,
    by_hash: HashMap<String, Vec<(u32, i64)>>,
}

fn col<T, N: Into<PlSmallStr>>(name: N, v: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), v)
}

/// Loads the `reps` frame and a hash → representations index.
pub fn reps(reg: &Registry) -> Result<RepIndex> {
    let conn = reg.catalog.conn();
    let mut st = conn.prepare(
        "SELECT r.blob_hash, m.name, m.modality, m.family, c.name, c.id, c.step, d.name, d.id,
                r.layer, r.pool, b.n, b.d,
                (SELECT count(*) FROM representations r2 WHERE r2.checkpoint_id = r.checkpoint_id
                   AND r2.dataset_id = r.dataset_id AND r2.pool = r.pool)
         FROM representations r JOIN checkpoints c ON c.id = r.checkpoint_id
         JOIN models m ON m.id = c.model_id JOIN datasets d ON d.id = r.dataset_id
         JOIN blobs b ON b.hash = r.blob_hash
         ORDER BY m.name, c.step, c.id, r.layer",
    )?;
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
    let mut by_hash: HashMap<String, Vec<(u32, i64)>> = HashMap::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let h: String = r.get(0)?;
        let ds_id: i64 = r.get(8)?;
        by_hash
            .entry(h.clone())
            .or_default()
            .push((hash.len() as u32, ds_id));
        hash.push(h);
        model.push(r.get::<_, String>(1)?);
        modality.push(r.get::<_, String>(2)?);
        family.push(r.get(3)?);
        ck.push(r.get::<_, String>(4)?);
        ck_id.push(r.get::<_, i64>(5)?);
        step.push(r.get(6)?);
        dataset.push(r.get::<_, String>(7)?);
        layer.push(r.get::<_, i64>(9)?);
        pool.push(r.get::<_, String>(10)?);
        n.push(r.get::<_, i64>(11)?);
        d.push(r.get::<_, i64>(12)?);
        layers.push(r.get::<_, i64>(13)?);
    }
    let rep: Vec<u32> = (0..hash.len() as u32).collect();
    let frame = DataFrame::new_infer_height(vec![
        col("rep", rep),
        col("hash", hash),
        col("model", model),
        col("modality", modality),
        col("family", family),
        col("checkpoint", ck),
        col("checkpoint_id", ck_id),
        col("step", step),
        col("dataset", dataset),
        col("layer", layer),
        col("pool", pool),
        col("n", n),
        col("d", d),
        col("layers", layers),
    ])
    .map_err(pe)?;
    Ok(RepIndex { frame, by_hash })
}

/// The `cells` frame: cached layer-pair values expanded to representation pairs.
pub fn cells(reg: &Registry, idx: &RepIndex, filter: &CellFilter) -> Result<DataFrame> {
    let conn = reg.catalog.conn();
    let mut st = conn.prepare(
        "SELECT hash_x, hash_y, metric, version, params, prep_x, prep_y, value FROM cells
         WHERE (?1 IS NULL OR metric = ?1) AND (?2 IS NULL OR params = ?2)",
    )?;
    let versions: HashMap<&str, (u32, bool)> = crate::metrics::ALL
        .iter()
        .map(|m| (m.name(), (m.version(), m.symmetric())))
        .collect();
    let mut kinds: HashMap<(String, String), String> = HashMap::new();
    let (mut xs, mut ys, mut metric, mut params, mut prep, mut value) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut rows = st.query(rusqlite::params![filter.metric, filter.params])?;
    while let Some(r) = rows.next()? {
        let m = r
            .get_ref(2)?
            .as_str()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let Some(&(version, symmetric)) = versions.get(m) else {
            continue;
        };
        if r.get::<_, i64>(3)? != version as i64 {
            continue; // a stale row from an older metric version
        }
        let hx = r
            .get_ref(0)?
            .as_str()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let hy = r
            .get_ref(1)?
            .as_str()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let (Some(rx), Some(ry)) = (idx.by_hash.get(hx), idx.by_hash.get(hy)) else {
            continue;
        };
        let px = r
            .get_ref(5)?
            .as_str()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let py = r
            .get_ref(6)?
            .as_str()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let kind = kinds
            .entry((px.to_string(), py.to_string()))
            .or_insert_with(|| {
                let (a, b) = (prep_kind(px), prep_kind(py));
                if a == b { a } else { format!("{a}|{b}") }
            })
            .clone();
        let p = r.get::<_, String>(4)?;
        let v: f64 = r.get(7)?;
        let mut emit = |a: u32, b: u32| {
            xs.push(a);
            ys.push(b);
            metric.push(m.to_string());
            params.push(p.clone());
            prep.push(kind.clone());
            value.push(v);
        };
        for &(a, da) in rx {
            for &(b, db) in ry {
                if da != db {
                    continue;
                }
                emit(a, b);
                if symmetric && hx != hy {
                    emit(b, a);
                }
            }
        }
    }
    DataFrame::new_infer_height(vec![
        col("x_rep", xs),
        col("y_rep", ys),
        col("metric", metric),
        col("params", params),
        col("prep", prep),
        col("value", value),
    ])
    .map_err(pe)
}

/// Prefixes every column of the reps frame for one side of a join.
fn side(reps: &DataFrame, p: &str) -> LazyFrame {
    reps.clone().lazy().select([
        polars::prelude::col("rep").alias(format!("{p}_rep")),
        polars::prelude::col("model").alias(format!("{p}_model")),
        polars::prelude::col("modality").alias(format!("{p}_modality")),
        polars::prelude::col("checkpoint").alias(format!("{p}_checkpoint")),
        polars::prelude::col("checkpoint_id").alias(format!("{p}_checkpoint_id")),
        polars::prelude::col("step").alias(format!("{p}_step")),
        polars::prelude::col("layer").alias(format!("{p}_layer")),
        polars::prelude::col("pool").alias(format!("{p}_pool")),
        polars::prelude::col("layers").alias(format!("{p}_layers")),
    ])
}

/// The `alignment` pipeline: model-pair best over layer pairs, from the `cells` frame.
pub fn alignment(reps: &DataFrame, cells: DataFrame) -> LazyFrame {
    use polars::prelude::col as c;
    let desc = SortMultipleOptions::default()
        .with_order_descending(true)
        .with_maintain_order(true);
    cells
        .lazy()
        .inner_join(side(reps, "x"), c("x_rep"), c("x_rep"))
        .inner_join(side(reps, "y"), c("y_rep"), c("y_rep"))
        .group_by_stable([
            c("x_checkpoint_id"),
            c("y_checkpoint_id"),
            c("x_pool"),
            c("y_pool"),
            c("metric"),
            c("params"),
            c("prep"),
        ])
        .agg([
            c("x_model").first(),
            c("x_checkpoint").first(),
            c("x_step").first(),
            c("x_modality").first(),
            c("y_model").first(),
            c("y_checkpoint").first(),
            c("y_step").first(),
            c("y_modality").first(),
            c("value").max().alias("score"),
            c("x_layer").sort_by([c("value")], desc.clone()).first(),
            c("y_layer").sort_by([c("value")], desc).first(),
            len().alias("cells"),
            (c("x_layers").first() * c("y_layers").first()).alias("expected"),
        ])
        .with_columns([c("cells")
            .cast(DataType::Int64)
            .eq(c("expected"))
            .alias("complete")])
        .select([
            c("x_model"),
            c("x_checkpoint"),
            c("x_step"),
            c("x_modality"),
            c("y_model"),
            c("y_checkpoint"),
            c("y_step"),
            c("y_modality"),
            c("metric"),
            c("params"),
            c("prep"),
            c("score"),
            c("x_layer"),
            c("y_layer"),
            c("cells"),
            c("complete"),
            c("x_checkpoint_id"),
            c("y_checkpoint_id"),
        ])
}

/// The small catalog tables as frames.
pub fn small_tables(reg: &Registry) -> Result<Vec<(&'static str, DataFrame)>> {
    let models = reg.catalog.models()?;
    let cks = reg.catalog.checkpoints(None)?;
    let ds = reg.catalog.datasets()?;
    let conn = reg.catalog.conn();
    let mut st = conn.prepare(
        "SELECT m.name, c.name, c.id, s.name, s.value, s.higher_is_better FROM scores s
         JOIN checkpoints c ON c.id = s.checkpoint_id JOIN models m ON m.id = c.model_id",
    )?;
    let (mut sm, mut sc, mut sci, mut sn, mut sv, mut sh) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::<Option<bool>>::new(),
    );
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        sm.push(r.get::<_, String>(0)?);
        sc.push(r.get::<_, String>(1)?);
        sci.push(r.get::<_, i64>(2)?);
        sn.push(r.get::<_, String>(3)?);
        sv.push(r.get::<_, f64>(4)?);
        sh.push(r.get::<_, Option<i64>>(5)?.map(|v| v != 0));
    }
    Ok(vec![
        (
            "models",
            DataFrame::new_infer_height(vec![
                col(
                    "name",
                    models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                ),
                col(
                    "modality",
                    models
                        .iter()
                        .map(|m| m.modality.clone())
                        .collect::<Vec<_>>(),
                ),
                col(
                    "family",
                    models.iter().map(|m| m.family.clone()).collect::<Vec<_>>(),
                ),
                col(
                    "num_params",
                    models.iter().map(|m| m.num_params).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "checkpoints",
            DataFrame::new_infer_height(vec![
                col(
                    "model",
                    cks.iter().map(|c| c.model.clone()).collect::<Vec<_>>(),
                ),
                col(
                    "checkpoint",
                    cks.iter().map(|c| c.checkpoint.clone()).collect::<Vec<_>>(),
                ),
                col("step", cks.iter().map(|c| c.step).collect::<Vec<_>>()),
                col(
                    "created_at",
                    cks.iter().map(|c| c.created_at.clone()).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "datasets",
            DataFrame::new_infer_height(vec![
                col(
                    "name",
                    ds.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
                ),
                col("n", ds.iter().map(|d| d.n as i64).collect::<Vec<_>>()),
                col(
                    "description",
                    ds.iter().map(|d| d.description.clone()).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "scores",
            DataFrame::new_infer_height(vec![
                col("model", sm),
                col("checkpoint", sc),
                col("checkpoint_id", sci),
                col("name", sn),
                col("value", sv),
                col("higher_is_better", sh),
            ])
            .map_err(pe)?,
        ),
    ])
}

/// Runs free SQL over every table (`models`, `checkpoints`, `datasets`, `reps`, `scores`,
/// `cells`, `alignment`) through polars' SQL context.
pub fn sql(reg: &Registry, query: &str) -> Result<DataFrame> {
    let mut ctx = SQLContext::new();
    for (name, df) in small_tables(reg)? {
        ctx.register(name, df.lazy());
    }
    let idx = reps(reg)?;
    let cells = cells(reg, &idx, &CellFilter::default())?;
    ctx.register("alignment", alignment(&idx.frame, cells.clone()));
    ctx.register("cells", cells.lazy());
    ctx.register("reps", idx.frame.lazy());
    ctx.execute(query).map_err(pe)?.collect().map_err(pe)
}

/// The model-pair alignment frame for one metric, collected.
pub fn alignment_for(
    reg: &Registry,
    metric: Metric,
    params: &str,
    prep: &str,
) -> Result<DataFrame> {
    let idx = reps(reg)?;
    let cells = cells(
        reg,
        &idx,
        &CellFilter {
            metric: Some(metric.name().to_string()),
            params: Some(params.to_string()),
        },
    )?;
    alignment(&idx.frame, cells)
        .filter(polars::prelude::col("prep").eq(lit(prep.to_string())))
        .collect()
        .map_err(pe)
}

/// A DataFrame as JSON objects (one per row), for the table/CSV/JSON printers.
pub fn to_json_rows(df: &mut DataFrame) -> Result<Vec<serde_json::Value>> {
    let mut buf = Vec::new();
    JsonWriter::new(&mut buf)
        .with_json_format(JsonFormat::Json)
        .finish(df)
        .map_err(pe)?;
    let v: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| Error::Invalid(format!("query output: {e}")))?;
    Ok(match v {
        serde_json::Value::Array(a) => a,
        other => vec![other],
    })
}

/// Writes a DataFrame as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    ParquetWriter::new(f).finish(df).map_err(pe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prep_kind_drops_the_threshold() {
        assert_eq!(prep_kind("clamp(q=0.95,t=0x400a3c1e);l2"), OFFICIAL_PREP);
        assert_eq!(prep_kind("l2"), "l2");
        assert_eq!(prep_kind("raw"), "raw");
    }
}
