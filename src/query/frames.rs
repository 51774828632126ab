//! Frames built on `reps` and `cells`: model-pair `alignment`, the small tables, layer cells,
//! and free SQL over all of them.

use super::*;

/// The layer sets with every column prefixed for one side of a join.
pub(super) fn side(sets: &DataFrame, p: &str) -> LazyFrame {
    use polars::prelude::col as c;
    sets.clone().lazy().select([
        c("set").alias(format!("{p}_set")),
        c("model").alias(format!("{p}_model")),
        c("modality").alias(format!("{p}_modality")),
        c("checkpoint").alias(format!("{p}_checkpoint")),
        c("checkpoint_id").alias(format!("{p}_checkpoint_id")),
        c("step").alias(format!("{p}_step")),
        c("layers").alias(format!("{p}_layers")),
    ])
}

/// The `alignment` pipeline: each model pair's layer-pair cells aggregated by `reduce` (the
/// max with its layers by default). One group-by over integer keys on the big frame; names
/// and counts are joined onto the small result. `cells` always counts every cached layer
/// pair, so `complete` means the whole table is there (also for `last` and `layers=I,J`).
pub fn alignment(idx: &RepIndex, cells: &Cells, reduce: Reduce) -> LazyFrame {
    use polars::prelude::col as c;
    // The one cell a single-pair reduction takes, as a mask over the group's cells.
    let pick = |x: Expr, y: Expr| c("x_layer").eq(x).and(c("y_layer").eq(y));
    let (score, x_layer, y_layer) = match reduce {
        Reduce::Max => (
            c("value").max(),
            c("x_layer").get(c("value").arg_max(), false),
            c("y_layer").get(c("value").arg_max(), false),
        ),
        Reduce::Mean => (
            c("value").mean(),
            lit(NULL).cast(DataType::Int64),
            lit(NULL).cast(DataType::Int64),
        ),
        Reduce::Last => {
            let m = pick(c("x_layer").max(), c("y_layer").max());
            (
                c("value").filter(m.clone()).first(),
                c("x_layer").filter(m.clone()).first(),
                c("y_layer").filter(m).first(),
            )
        }
        Reduce::Layers(i, j) => {
            let m = pick(lit(i as i64), lit(j as i64));
            (
                c("value").filter(m.clone()).first(),
                c("x_layer").filter(m.clone()).first(),
                c("y_layer").filter(m).first(),
            )
        }
    };
    cells
        .frame
        .clone()
        .lazy()
        .group_by([c("x_set"), c("y_set"), c("key")])
        .agg([
            score.alias("score"),
            x_layer.alias("x_layer"),
            y_layer.alias("y_layer"),
            len().alias("cells"),
        ])
        .with_column(lit(reduce.key()).alias("reduce"))
        .inner_join(cells.keys.clone().lazy(), c("key"), c("key"))
        .inner_join(side(&idx.sets, "x"), c("x_set"), c("x_set"))
        .inner_join(side(&idx.sets, "y"), c("y_set"), c("y_set"))
        .with_columns([c("cells")
            .cast(DataType::Int64)
            .eq(c("x_layers") * c("y_layers"))
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
            c("reduce"),
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
    let (mut sm, mut sc, mut sci, mut sn, mut sv, mut sh) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::<Option<bool>>::new(),
    );
    for s in reg.catalog.scores(None)? {
        sm.push(s.model);
        sc.push(s.checkpoint);
        sci.push(s.checkpoint_id.0);
        sn.push(s.name);
        sv.push(s.value);
        sh.push(s.higher_is_better);
    }
    Ok(vec![
        (
            "models",
            DataFrame::new_infer_height(vec![
                column(
                    "name",
                    models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                ),
                column(
                    "modality",
                    models
                        .iter()
                        .map(|m| m.modality.clone())
                        .collect::<Vec<_>>(),
                ),
                column(
                    "family",
                    models.iter().map(|m| m.family.clone()).collect::<Vec<_>>(),
                ),
                column(
                    "num_params",
                    models.iter().map(|m| m.num_params).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "checkpoints",
            DataFrame::new_infer_height(vec![
                column(
                    "model",
                    cks.iter().map(|c| c.model.clone()).collect::<Vec<_>>(),
                ),
                column(
                    "checkpoint",
                    cks.iter().map(|c| c.checkpoint.clone()).collect::<Vec<_>>(),
                ),
                column("step", cks.iter().map(|c| c.step).collect::<Vec<_>>()),
                column(
                    "created_at",
                    cks.iter().map(|c| c.created_at.clone()).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "datasets",
            DataFrame::new_infer_height(vec![
                column(
                    "name",
                    ds.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
                ),
                column("n", ds.iter().map(|d| d.n as i64).collect::<Vec<_>>()),
                column(
                    "description",
                    ds.iter().map(|d| d.description.clone()).collect::<Vec<_>>(),
                ),
            ])
            .map_err(pe)?,
        ),
        (
            "scores",
            DataFrame::new_infer_height(vec![
                column("model", sm),
                column("checkpoint", sc),
                column("checkpoint_id", sci),
                column("name", sn),
                column("value", sv),
                column("higher_is_better", sh),
            ])
            .map_err(pe)?,
        ),
    ])
}

/// Runs free SQL over every table (`models`, `checkpoints`, `datasets`, `reps`, `scores`,
/// `cells`, `alignment`) through polars' SQL context; anything but one read-only SELECT is
/// refused first ([`crate::sqlguard`]).
pub fn sql(reg: &Registry, query: &str) -> Result<DataFrame> {
    crate::sqlguard::check(query)?;
    let mut ctx = SQLContext::new();
    let mut sizes = std::collections::HashMap::new();
    for (name, df) in small_tables(reg)? {
        sizes.insert(name.to_string(), df.height() as u64);
        ctx.register(name, df.lazy());
    }
    let idx = reps(reg)?;
    let cells = cells(reg, &idx, &CellFilter::default())?;
    sizes.insert("reps".into(), idx.frame.height() as u64);
    sizes.insert("cells".into(), cells.frame.height() as u64);
    sizes.insert("alignment".into(), cells.frame.height() as u64);
    crate::sqlguard::check_size(query, &sizes)?;
    ctx.register("alignment", alignment(&idx, &cells, Reduce::Max));
    ctx.register("cells", cells.table());
    ctx.register("reps", idx.frame.lazy());
    ctx.execute(query)
        .map_err(user_sql)?
        .collect()
        .map_err(user_sql)
}

/// The model-pair alignment frame for one metric, collected.
pub fn alignment_for(
    reg: &Registry,
    metric: Metric,
    params: &str,
    prep: &str,
    reduce: Reduce,
) -> Result<DataFrame> {
    let t = std::time::Instant::now();
    let idx = reps(reg)?;
    let t_reps = t.elapsed();
    let cells = cells(
        reg,
        &idx,
        &CellFilter {
            metric: Some(metric.name().to_string()),
            params: Some(params.to_string()),
            scope: ClampScope::from_kind(prep),
        },
    )?;
    let t_cells = t.elapsed();
    let out = alignment(&idx, &cells, reduce)
        .filter(polars::prelude::col("prep").eq(lit(prep.to_string())))
        .collect()
        .map_err(pe);
    if std::env::var_os("PRH_TIMING").is_some() {
        eprintln!(
            "timing: reps {:?}, cells {:?}, alignment {:?}",
            t_reps,
            t_cells - t_reps,
            t.elapsed() - t_cells
        );
    }
    out
}

/// One model pair's cached layer-pair values for one metric and prep kind, as
/// (x_layer, y_layer, value), sorted by layers: the table a pair's score aggregates.
pub fn layer_cells(
    reg: &Registry,
    metric: Metric,
    params: &str,
    prep: &str,
    x: CheckpointId,
    y: CheckpointId,
) -> Result<Vec<(i64, i64, f64)>> {
    use polars::prelude::col as c;
    let idx = reps(reg)?;
    let filter = CellFilter {
        metric: Some(metric.name().to_string()),
        params: Some(params.to_string()),
        scope: ClampScope::from_kind(prep),
    };
    let cells = cells(reg, &idx, &filter)?;
    let df = cells
        .frame
        .clone()
        .lazy()
        .inner_join(cells.keys.clone().lazy(), c("key"), c("key"))
        .inner_join(side(&idx.sets, "x"), c("x_set"), c("x_set"))
        .inner_join(side(&idx.sets, "y"), c("y_set"), c("y_set"))
        .filter(
            c("x_checkpoint_id")
                .eq(lit(x.0))
                .and(c("y_checkpoint_id").eq(lit(y.0)))
                .and(c("prep").eq(lit(prep.to_string()))),
        )
        .select([c("x_layer"), c("y_layer"), c("value")])
        .sort(["x_layer", "y_layer"], Default::default())
        .collect()
        .map_err(pe)?;
    let col = |n: &str| -> Result<Vec<Option<i64>>> {
        Ok(df
            .column(n)
            .map_err(pe)?
            .cast(&DataType::Int64)
            .map_err(pe)?
            .i64()
            .map_err(pe)?
            .iter()
            .collect())
    };
    let (xl, yl) = (col("x_layer")?, col("y_layer")?);
    let v = df.column("value").map_err(pe)?.f64().map_err(pe)?.clone();
    Ok((0..df.height())
        .map(|i| {
            (
                xl[i].unwrap_or_default(),
                yl[i].unwrap_or_default(),
                v.get(i).unwrap_or(f64::NAN),
            )
        })
        .collect())
}
