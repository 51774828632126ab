//! The JSON API under `/api/…`: the same field names as the CLI's `--format json`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::params::{Params, Resolved};
use super::{ApiError, App, Job, blocking};
use crate::analysis::Trend;
use crate::catalog::{Checkpoint, Dataset, Model, Rep, RepFilter, Score};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::sweep::Selector;
use crate::views::{CellValue, LayerTable, NullSpec, TrendQuery};

/// What the overview page shows.
#[derive(Debug, Serialize)]
pub(super) struct Overview {
    pub datasets: Vec<Dataset>,
    pub models: Vec<Model>,
    pub checkpoints: usize,
    pub reps: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub cached_cells: u64,
    pub imported_cells: u64,
    /// The registry directory.
    pub registry: String,
}

pub(super) fn overview_of(reg: &Registry) -> Result<Overview> {
    let blobs = reg.catalog.blobs()?;
    let (cached_cells, imported_cells) = reg.catalog.cell_counts()?;
    Ok(Overview {
        datasets: reg.catalog.datasets()?,
        models: reg.catalog.models()?,
        checkpoints: reg.catalog.checkpoints(None)?.len(),
        reps: reg.catalog.reps(&RepFilter::default())?.len(),
        blobs: blobs.len(),
        blob_bytes: blobs.iter().map(|b| b.row.bytes).sum(),
        cached_cells,
        imported_cells,
        registry: reg.root.display().to_string(),
    })
}

/// One model with everything its page shows.
#[derive(Debug, Serialize)]
pub(super) struct ModelPage {
    pub model: Model,
    pub checkpoints: Vec<Checkpoint>,
    pub reps: Vec<Rep>,
    pub scores: Vec<Score>,
}

pub(super) fn model_of(reg: &Registry, name: &str) -> Result<ModelPage> {
    let name = &crate::names::nfc(name);
    let model = reg
        .catalog
        .model(name)?
        .ok_or_else(|| Error::NotFound(format!("no model named {name:?}")))?;
    Ok(ModelPage {
        checkpoints: reg.catalog.checkpoints(Some(name))?,
        reps: reg.catalog.reps(&RepFilter {
            model: Some(name.to_string()),
            ..Default::default()
        })?,
        scores: reg.catalog.scores(Some(name))?,
        model,
    })
}

/// A fingerprint of what the pages show: it changes when rows or cached cells are added.
pub(super) fn version_of(reg: &Registry) -> Result<String> {
    let o = overview_of(reg)?;
    let scores = reg.catalog.scores(None)?;
    let metrics = reg.catalog.cell_metrics()?;
    let mut h = blake3::Hasher::new();
    let text = format!(
        "{}|{}|{}|{}|{}|{}|{:?}|{:?}",
        o.models.len(),
        o.checkpoints,
        o.reps,
        o.blobs,
        o.cached_cells,
        o.imported_cells,
        scores
            .iter()
            .map(|s| (&s.model, &s.checkpoint, &s.name, s.value))
            .collect::<Vec<_>>(),
        metrics.iter().map(|m| m.id).collect::<Vec<_>>(),
    );
    h.update(text.as_bytes());
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// Computes what a view needs when the server may compute; one computation at a time.
fn fill_if_allowed(
    app: &Job,
    reg: &mut Registry,
    r: &Resolved,
    sel: (Selector, Selector),
    all: bool,
) -> Result<()> {
    if !app.compute {
        return Ok(());
    }
    let _one = app.one_computation()?;
    r.view.fill(reg, sel, all, None, app)?;
    Ok(())
}

/// A trend on raw scores and, when asked, on calibrated ones.
#[derive(Debug, Clone)]
pub(super) struct Trends {
    pub raw: Trend,
    pub calibrated: Option<Trend>,
}

impl Trends {
    /// As `prh trend --format json` prints it (`{"raw", "calibrated"}` when calibrated).
    fn to_json(&self) -> Value {
        match &self.calibrated {
            Some(c) => json!({"raw": self.raw, "calibrated": c}),
            None => serde_json::to_value(&self.raw).expect("serialises"),
        }
    }
}

pub(super) fn trend_of(app: &Job, reg: &mut Registry, r: &Resolved) -> Result<Trends> {
    app.memo
        .get(reg, format!("trend {r:?}"), |reg| trend_now(app, reg, r))
}

fn trend_now(app: &Job, reg: &mut Registry, r: &Resolved) -> Result<Trends> {
    let perf = r.perf.as_deref().ok_or_else(|| {
        Error::NotFound("no performance score: the x models have none".into())
            .hint("set one with `prh score set`")
    })?;
    let q = TrendQuery {
        x: &r.x,
        y: &r.y,
        perf,
        lower_is_better: r.lower_is_better,
        per_y: false,
        bootstrap: 1000,
        seed: r.seed,
    };
    if r.calibrated {
        if !app.compute {
            return Err(Error::Conflict(format!(
                "calibrated scores need a permutation null, which this server computes only when started with --compute (then once, and cached); on the command line: `prh trend {} --x {} --y {} --perf {perf} --calibrated --null {}`",
                r.view.flags(),
                r.x,
                r.y,
                r.null
            )));
        }
        let _one = app.one_computation()?;
        let null = NullSpec {
            permutations: r.null,
            seed: r.seed,
            alpha: crate::stats::DEFAULT_ALPHA,
        };
        let (raw, cal) = r.view.calibrated_trend(reg, &q, null, app)?;
        return Ok(Trends {
            raw,
            calibrated: Some(cal),
        });
    }
    fill_if_allowed(app, reg, r, (r.x.parse()?, r.y.parse()?), false)?;
    Ok(Trends {
        raw: r.view.trend(reg, &q)?,
        calibrated: None,
    })
}

pub(super) fn matrix_of(
    app: &Job,
    reg: &mut Registry,
    r: &Resolved,
) -> Result<crate::analysis::Matrix> {
    if r.values != CellValue::Score {
        if !app.compute {
            return Err(Error::Conflict(format!(
                "a matrix of {} needs a permutation null, which this server computes only when started with --compute (then once, and cached); on the command line: `prh matrix {} --x {} --y {} --values {} --null {}`",
                r.values.key(),
                r.view.flags(),
                r.x,
                r.y,
                r.values.key(),
                r.null
            )));
        }
        return app.memo.get(reg, format!("matrix {r:?}"), |reg| {
            let _one = app.one_computation()?;
            let null = NullSpec {
                permutations: r.null,
                seed: r.seed,
                alpha: crate::stats::DEFAULT_ALPHA,
            };
            let order = (r.perf.as_deref(), r.lower_is_better);
            r.view
                .value_matrix(reg, (&r.x, &r.y), order, null, r.values, app)
        });
    }
    app.memo.get(reg, format!("matrix {r:?}"), |reg| {
        fill_if_allowed(app, reg, r, (r.x.parse()?, r.y.parse()?), false)?;
        r.view
            .matrix(reg, (&r.x, &r.y), r.perf.as_deref(), r.lower_is_better)
    })
}

pub(super) fn trajectory_of(
    app: &Job,
    reg: &mut Registry,
    r: &Resolved,
) -> Result<Vec<crate::analysis::TrajectoryPoint>> {
    let model = r
        .model
        .clone()
        .ok_or_else(|| Error::NotFound("the registry has no models".into()))?;
    app.memo.get(reg, format!("trajectory {r:?}"), |reg| {
        let sel = (Selector::Names(vec![model.clone()]), r.against.parse()?);
        fill_if_allowed(app, reg, r, sel, true)?;
        r.view.trajectory(reg, &model, &r.against)
    })
}

pub(super) fn layers_of(app: &Job, reg: &mut Registry, r: &Resolved) -> Result<LayerTable> {
    let (x, y) = (r.x.clone(), r.y.clone());
    app.memo.get(reg, format!("layers {r:?}"), |reg| {
        let sel = (
            Selector::Names(vec![x.clone()]),
            Selector::Names(vec![y.clone()]),
        );
        fill_if_allowed(app, reg, r, sel, false)?;
        r.view.layers(reg, &x, &y)
    })
}

type Answer = Result<Json<Value>, ApiError>;

fn to_json<T: Serialize>(v: T) -> Answer {
    Ok(Json(serde_json::to_value(v).expect("serialises")))
}

pub(super) async fn version(State(app): State<Arc<App>>) -> Answer {
    let v = blocking(&app, |_, reg| Ok(version_of(reg)?)).await?;
    Ok(Json(json!({ "version": v })))
}

pub(super) async fn overview(State(app): State<Arc<App>>) -> Answer {
    to_json(blocking(&app, |_, reg| Ok(overview_of(reg)?)).await?)
}

pub(super) async fn models(State(app): State<Arc<App>>) -> Answer {
    to_json(blocking(&app, |_, reg| Ok(reg.catalog.models()?)).await?)
}

pub(super) async fn model(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer {
    let page = blocking(&app, move |_, reg| Ok(model_of(reg, &name)?)).await?;
    to_json(page)
}

pub(super) async fn trend(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Answer {
    Ok(Json(
        blocking(&app, move |app, reg| {
            Ok(trend_of(app, reg, &p.resolve(reg)?)?.to_json())
        })
        .await?,
    ))
}

pub(super) async fn matrix(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Answer {
    let rows = blocking(&app, move |app, reg| {
        let r = p.resolve(reg)?;
        Ok(r.view.matrix_rows(&matrix_of(app, reg, &r)?))
    })
    .await?;
    to_json(rows)
}

pub(super) async fn layers(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Answer {
    to_json(
        blocking(&app, move |app, reg| {
            Ok(layers_of(app, reg, &p.resolve(reg)?)?)
        })
        .await?,
    )
}

pub(super) async fn trajectory(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Answer {
    let rows = blocking(&app, move |app, reg| {
        let r = p.resolve(reg)?;
        let points = trajectory_of(app, reg, &r)?;
        let reduce = r.view.reduce.key();
        Ok(points
            .into_iter()
            .map(|pt| {
                let mut v = serde_json::to_value(pt).expect("serialises");
                v["reduce"] = reduce.clone().into();
                v
            })
            .collect::<Vec<_>>())
    })
    .await?;
    to_json(rows)
}

/// A SQL console request: the query and the page of rows wanted.
#[derive(Debug, Deserialize)]
pub(super) struct SqlParams {
    pub q: String,
    #[serde(default)]
    pub offset: usize,
    pub limit: Option<usize>,
}

/// Rows per page at most: a huge result is never sent at once.
pub(super) const MAX_PAGE: usize = 1000;

/// A console query, in a child process under the server's SQL budget.
fn run_sql(job: &Job, q: &str) -> Result<polars::prelude::DataFrame> {
    super::sqlbox::run(&job.root, q, job.sql, job)
}

pub(super) async fn sql(State(app): State<Arc<App>>, Query(p): Query<SqlParams>) -> Answer {
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let page = blocking(&app, move |job, _| {
        let df = run_sql(job, &p.q)?;
        let total = df.height();
        let offset = p.offset.min(total);
        let part = df.slice(offset as i64, limit);
        let columns: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
        let rows: Vec<Value> = crate::frame::to_rows(&part)
            .into_iter()
            .map(|r| match r {
                Value::Object(o) => Value::Array(columns.iter().map(|c| o.get(c).cloned().unwrap_or(Value::Null)).collect()),
                other => other,
            })
            .collect();
        Ok(json!({"columns": columns, "rows": rows, "total": total, "offset": offset, "limit": limit}))
    })
    .await?;
    Ok(Json(page))
}

pub(super) async fn sql_csv(
    State(app): State<Arc<App>>,
    Query(p): Query<SqlParams>,
) -> Result<Response, ApiError> {
    let body = blocking(&app, move |job, _| {
        let df = run_sql(job, &p.q)?;
        let mut out = Vec::new();
        crate::output::render_values(
            &crate::frame::to_rows(&df),
            crate::output::Format::Csv,
            &mut out,
        )
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(out)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"query.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}
