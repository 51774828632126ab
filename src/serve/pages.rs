//! The dashboard's HTML pages. Numbers sit in elements with stable ids and `data-*`
//! attributes (what the browser tests read); charts are SVG from [`super::svg`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::api::{self, Overview};
use super::params::{Params, Resolved, encode};
use super::svg::{self, Point, esc, num};
use super::{ApiError, App, Job, blocking};
use crate::views::CellValue;

const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/trend", "Trend"),
    ("/matrix", "Matrix"),
    ("/trajectory", "Trajectory"),
    ("/sql", "SQL"),
];

/// A whole page around `body`.
fn page(title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in NAV {
        let class = if *href == active {
            r#" class="active""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<a href="{href}"{class}>{name}</a>"#);
    }
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,"><title>{} · prh</title><link rel="stylesheet" href="/assets/style.css"></head><body><header><span class="brand">prh</span><nav>{nav}</nav><span id="live" title="The page reloads when the registry changes">live</span></header><main>{body}</main><div id="tip" hidden></div><script src="/assets/app.js"></script></body></html>"#,
        esc(title)
    )
}

/// An error in a page: the message and, for missing cells, the command that fills them.
fn problem(e: &ApiError) -> String {
    let mut s = format!(
        r#"<div class="problem" id="problem"><p>{}</p>"#,
        esc(&e.message)
    );
    if let Some(c) = &e.command {
        let _ = write!(
            s,
            r#"<p>This server computes nothing unless started with <code>--compute</code>. To fill the missing cells, run:</p><pre id="align-command">{}</pre>"#,
            esc(c)
        );
    }
    s.push_str("</div>");
    s
}

fn respond(title: &str, active: &str, body: Result<String, ApiError>) -> Response {
    match body {
        Ok(b) => Html(page(title, active, &b)).into_response(),
        Err(e) => {
            let status = e.status;
            (status, Html(page(title, active, &problem(&e)))).into_response()
        }
    }
}

/// A table from a header and rows of already-escaped cells.
fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(r#"<table id="{id}"><thead><tr>"#);
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn model_link(name: &str) -> String {
    format!(r#"<a href="/model/{}">{}</a>"#, encode(name), esc(name))
}

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn overview_body(o: &Overview) -> String {
    let stat = |id: &str, label: &str, v: String| {
        format!(
            r#"<div class="stat"><span class="v" id="{id}">{v}</span><span class="l">{label}</span></div>"#
        )
    };
    let mut s = format!(
        r#"<h1>Overview</h1><p class="where">{}</p><div class="stats">"#,
        esc(&o.registry)
    );
    s.push_str(&stat(
        "n-datasets",
        "datasets",
        o.datasets.len().to_string(),
    ));
    s.push_str(&stat("n-models", "models", o.models.len().to_string()));
    s.push_str(&stat(
        "n-checkpoints",
        "checkpoints",
        o.checkpoints.to_string(),
    ));
    s.push_str(&stat("n-reps", "representations", o.reps.to_string()));
    s.push_str(&stat(
        "n-blobs",
        &format!("blobs, {}", bytes(o.blob_bytes)),
        o.blobs.to_string(),
    ));
    s.push_str(&stat("n-cells", "cached cells", o.cached_cells.to_string()));
    if o.imported_cells > 0 {
        s.push_str(&stat(
            "n-imported",
            "imported cells to recompute",
            o.imported_cells.to_string(),
        ));
    }
    s.push_str("</div><h2>Datasets</h2>");
    let rows: Vec<Vec<String>> = o
        .datasets
        .iter()
        .map(|d| {
            vec![
                esc(&d.name),
                d.n.to_string(),
                esc(d.description.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    s.push_str(&table("datasets", &["dataset", "n", "description"], &rows));
    let mut groups: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for m in &o.models {
        groups
            .entry((m.modality.as_str(), m.family.as_deref().unwrap_or("–")))
            .or_default()
            .push(&m.name);
    }
    s.push_str("<h2>Models by modality and family</h2>");
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|((m, f), names)| {
            let links: Vec<String> = names.iter().map(|n| model_link(n)).collect();
            vec![esc(m), esc(f), names.len().to_string(), links.join(", ")]
        })
        .collect();
    s.push_str(&table(
        "models",
        &["modality", "family", "models", "names"],
        &rows,
    ));
    s
}

pub(super) async fn overview(State(app): State<Arc<App>>) -> Response {
    let body = blocking(&app, |_, reg| Ok(overview_body(&api::overview_of(reg)?))).await;
    respond("Overview", "/", body)
}

pub(super) async fn model(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let body = blocking(&app, move |_, reg| {
        let m = api::model_of(reg, &name)?;
        let mut s = format!(
            r#"<h1 id="model-name" data-model="{0}">{0}</h1><p>modality <b id="modality">{1}</b> · family <b>{2}</b>{3}</p>"#,
            esc(&m.model.name),
            esc(&m.model.modality),
            esc(m.model.family.as_deref().unwrap_or("–")),
            m.model.num_params.map(|p| format!(" · {p} parameters")).unwrap_or_default()
        );
        s.push_str("<h2>Checkpoints</h2>");
        let rows: Vec<Vec<String>> = m
            .checkpoints
            .iter()
            .map(|c| {
                let meta: Vec<String> = c.meta.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
                vec![
                    esc(&c.checkpoint),
                    c.step.map(|s| s.to_string()).unwrap_or("–".into()),
                    esc(&c.created_at),
                    meta.join(" · "),
                ]
            })
            .collect();
        s.push_str(&table("checkpoints", &["checkpoint", "step", "ingested", "provenance (--meta)"], &rows));
        s.push_str("<h2>Scores</h2>");
        let rows: Vec<Vec<String>> = m
            .scores
            .iter()
            .map(|sc| {
                vec![
                    esc(&sc.checkpoint),
                    esc(&sc.name),
                    format!(r#"<span class="score" data-name="{}" data-value="{}">{}</span>"#, esc(&sc.name), sc.value, num(sc.value)),
                    match sc.higher_is_better {
                        Some(true) => "higher".into(),
                        Some(false) => "lower".into(),
                        None => "–".into(),
                    },
                ]
            })
            .collect();
        s.push_str(&table("scores", &["checkpoint", "score", "value", "better"], &rows));
        s.push_str("<h2>Layers</h2>");
        let rows: Vec<Vec<String>> = m
            .reps
            .iter()
            .map(|r| {
                vec![
                    esc(&r.checkpoint),
                    r.layer.to_string(),
                    format!(r#"<span class="d">{}</span>"#, r.d),
                    r.n.to_string(),
                    esc(&r.dtype),
                    esc(&r.dataset),
                    esc(&r.pool),
                    esc(r.layout.as_deref().unwrap_or("–")),
                    format!("<code>{}</code>", &r.hash.to_string()[..12]),
                ]
            })
            .collect();
        s.push_str(&table(
            "layers",
            &["checkpoint", "layer", "d", "n", "dtype", "dataset", "pool", "layout", "blob"],
            &rows,
        ));
        Ok(s)
    })
    .await;
    respond("Model", "", body)
}

/// The selector form of the chart pages.
fn form(action: &str, r: &Resolved, extra: &str) -> String {
    let list: String = r
        .choices
        .selectors
        .iter()
        .map(|s| format!(r#"<option value="{}">"#, esc(s)))
        .collect();
    format!(
        r#"<form class="controls" method="get" action="{action}">{}<label>k <input name="k" type="number" min="1" value="{}"></label><label>reduce <input name="reduce" value="{}" size="6"></label>{}{extra}<button type="submit">Show</button><datalist id="selectors">{list}</datalist></form>"#,
        select(
            "metric",
            "metric",
            &r.choices.metrics,
            Some(r.view.spec.metric.name())
        ),
        r.view.spec.k,
        esc(&r.view.reduce.key()),
        select(
            "clamp_rule",
            "clamp",
            &["exact".to_string(), "sample-mean".to_string()],
            Some(r.view.prep.rule.name())
        ),
    )
}

fn text_input(name: &str, label: &str, value: &str) -> String {
    format!(
        r#"<label>{label} <input name="{name}" value="{}" list="selectors"></label>"#,
        esc(value)
    )
}

/// A labelled `<select>` of `items` with `chosen` selected.
fn select(name: &str, label: &str, items: &[String], chosen: Option<&str>) -> String {
    let opts: String = items
        .iter()
        .map(|i| {
            let sel = if Some(i.as_str()) == chosen {
                " selected"
            } else {
                ""
            };
            format!(r#"<option{sel}>{}</option>"#, esc(i))
        })
        .collect();
    format!(r#"<label>{label} <select name="{name}">{opts}</select></label>"#)
}

fn perf_select(r: &Resolved) -> String {
    select("perf", "performance", &r.choices.scores, r.perf.as_deref())
}

/// A chart page: resolves its parameters, renders the form, then the body or the problem.
async fn chart(
    app: Arc<App>,
    p: Params,
    title: &'static str,
    path: &'static str,
    render: fn(&Job, &mut crate::registry::Registry, &Resolved) -> crate::error::Result<String>,
    controls: fn(&Resolved) -> String,
) -> Response {
    let body = blocking(&app, move |app, reg| {
        let r = p.resolve(reg)?;
        let mut s = format!("<h1>{title}</h1>{}", form(path, &r, &controls(&r)));
        match render(app, reg, &r) {
            Ok(b) => {
                s.push_str(&b);
                Ok((StatusCode::OK, s))
            }
            Err(e) => {
                // The form stays usable; the status says what went wrong.
                let e = ApiError::from(e);
                s.push_str(&problem(&e));
                Ok((e.status, s))
            }
        }
    })
    .await;
    match body {
        Ok((status, b)) => (status, Html(page(title, path, &b))).into_response(),
        Err(e) => respond(title, path, Err(e)),
    }
}

fn trend_controls(r: &Resolved) -> String {
    format!(
        r#"{}{}{}<label><input type="checkbox" name="lower_is_better"{}> lower is better</label><label><input type="checkbox" name="calibrated"{}> calibrated</label>"#,
        text_input("x", "x", &r.x),
        text_input("y", "y", &r.y),
        perf_select(r),
        if r.lower_is_better == Some(true) {
            " checked"
        } else {
            ""
        },
        if r.calibrated { " checked" } else { "" },
    )
}

fn trend_body(
    app: &Job,
    reg: &mut crate::registry::Registry,
    r: &Resolved,
) -> crate::error::Result<String> {
    let t = api::trend_of(app, reg, r)?;
    let perf = r.perf.clone().unwrap_or_default();
    let mut s = String::new();
    let parts =
        std::iter::once(("raw", &t.raw)).chain(t.calibrated.iter().map(|c| ("calibrated", c)));
    for (kind, trend) in parts {
        let points: Vec<Point> = trend
            .models
            .iter()
            .map(|m| Point {
                label: &m.model,
                x: m.performance,
                y: m.alignment,
                href: format!("/model/{}", encode(&m.model)),
            })
            .collect();
        let fit = trend.slope.zip(trend.intercept);
        let f = |v: Option<f64>| v.map(num).unwrap_or("–".into());
        let _ = write!(
            s,
            r#"<section class="trend" id="trend-{kind}" data-kind="{kind}"><h2>{kind}</h2><p class="stats-line">Pearson r = <b class="pearson-r" data-value="{}">{}</b> (p = <span class="pearson-p">{}</span>), 95% CI <span class="ci">{}</span>; Spearman ρ = <b class="spearman-rho" data-value="{}">{}</b> (p = {}); {} models. <i>{}</i></p>{}</section>"#,
            trend.pearson_r.map(|v| v.to_string()).unwrap_or_default(),
            f(trend.pearson_r),
            f(trend.pearson_p),
            trend
                .r_ci95
                .map(|c| format!("[{}, {}]", num(c[0]), num(c[1])))
                .unwrap_or("–".into()),
            trend
                .spearman_rho
                .map(|v| v.to_string())
                .unwrap_or_default(),
            f(trend.spearman_rho),
            f(trend.spearman_p),
            trend.n_models,
            esc(&trend.verdict),
            svg::scatter(&points, fit, &perf, &format!("{kind} {}", r.view.label())),
        );
    }
    Ok(s)
}

pub(super) async fn trend(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Response {
    chart(app, p, "Trend", "/trend", trend_body, trend_controls).await
}

fn matrix_controls(r: &Resolved) -> String {
    let values: Vec<String> = CellValue::ALL.iter().map(|v| v.key().to_string()).collect();
    format!(
        "{}{}{}{}",
        text_input("x", "rows", &r.x),
        text_input("y", "columns", &r.y),
        perf_select(r),
        select("values", "cells", &values, Some(r.values.key()))
    )
}

fn matrix_body(
    app: &Job,
    reg: &mut crate::registry::Registry,
    r: &Resolved,
) -> crate::error::Result<String> {
    let m = api::matrix_of(app, reg, r)?;
    let base = format!(
        "metric={}&k={}&reduce={}",
        r.view.spec.metric.name(),
        r.view.spec.k,
        encode(&r.view.reduce.key())
    );
    let href = |i: usize, j: usize| {
        Some(format!(
            "/pair?{base}&x={}&y={}",
            encode(&m.rows[i]),
            encode(&m.cols[j])
        ))
    };
    Ok(format!(
        r#"<p>{} rows × {} columns of {}; rows ordered by {}, columns by {} (worst to best). Click a cell for its layer × layer table.</p>{}"#,
        m.rows.len(),
        m.cols.len(),
        match m.holds {
            Some(h) => format!(
                "{h} from {} permutations per pair (seed {})",
                r.null, r.seed
            ),
            None => "scores".into(),
        },
        esc(m.row_order.as_deref().unwrap_or("name")),
        esc(m.col_order.as_deref().unwrap_or("name")),
        svg::heatmap(&m.rows, &m.cols, &m.values, None, &href)
    ))
}

pub(super) async fn matrix(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Response {
    chart(app, p, "Matrix", "/matrix", matrix_body, matrix_controls).await
}

fn pair_controls(r: &Resolved) -> String {
    format!(
        "{}{}",
        text_input("x", "x model", &r.x),
        text_input("y", "y model", &r.y)
    )
}

fn pair_body(
    app: &Job,
    reg: &mut crate::registry::Registry,
    r: &Resolved,
) -> crate::error::Result<String> {
    let t = api::layers_of(app, reg, r)?;
    let rows: Vec<String> = (0..t.x_layers)
        .map(|i| format!("{} L{i}", t.x_model))
        .collect();
    let cols: Vec<String> = (0..t.y_layers)
        .map(|j| format!("{} L{j}", t.y_model))
        .collect();
    let best = t
        .best
        .map(|(i, j, v)| {
            format!(
                r#"<p id="best" data-x-layer="{i}" data-y-layer="{j}" data-value="{v}">Best layer pair: {} layer {i} with {} layer {j}: <b>{}</b></p>"#,
                model_link(&t.x_model),
                model_link(&t.y_model),
                num(v)
            )
        })
        .unwrap_or_default();
    Ok(format!(
        r#"<p>{} @ {} × {} @ {}</p>{best}{}"#,
        model_link(&t.x_model),
        esc(&t.x_checkpoint),
        model_link(&t.y_model),
        esc(&t.y_checkpoint),
        svg::heatmap(
            &rows,
            &cols,
            &t.values,
            t.best.map(|b| (b.0, b.1)),
            &|_, _| None
        )
    ))
}

pub(super) async fn pair(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Response {
    chart(app, p, "Layer pairs", "/pair", pair_body, pair_controls).await
}

fn trajectory_controls(r: &Resolved) -> String {
    format!(
        "{}{}",
        select("model", "model", &r.choices.models, r.model.as_deref()),
        text_input("against", "against", &r.against)
    )
}

fn trajectory_body(
    app: &Job,
    reg: &mut crate::registry::Registry,
    r: &Resolved,
) -> crate::error::Result<String> {
    let points = api::trajectory_of(app, reg, r)?;
    let mut series: BTreeMap<String, Vec<(f64, f64, String)>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        let x = p.step.map(|s| s as f64).unwrap_or(i as f64);
        series
            .entry(p.against.clone())
            .or_default()
            .push((x, p.score, p.checkpoint.clone()));
    }
    let series: Vec<svg::Series> = series.into_iter().collect();
    let model = r.model.clone().unwrap_or_default();
    Ok(format!(
        r#"<p>{} across {} checkpoint(s), one line per reference model.</p>{}"#,
        model_link(&model),
        points
            .iter()
            .map(|p| &p.checkpoint)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        svg::lines(&series, "step", &r.view.label())
    ))
}

pub(super) async fn trajectory(State(app): State<Arc<App>>, Query(p): Query<Params>) -> Response {
    chart(
        app,
        p,
        "Trajectory",
        "/trajectory",
        trajectory_body,
        trajectory_controls,
    )
    .await
}

pub(super) async fn sql() -> Response {
    let body = r##"<h1>SQL</h1><p>Read-only SQL over the tables <code>models</code>, <code>checkpoints</code>, <code>datasets</code>, <code>reps</code>, <code>scores</code>, <code>cells</code>, <code>alignment</code> (as <code>prh query</code>), run by polars.</p><form id="sql-form"><textarea id="sql-text" name="q" rows="5" spellcheck="false">SELECT x_model, y_model, score FROM alignment ORDER BY score DESC</textarea><div><button type="submit">Run</button> <a id="sql-csv" href="#">Download CSV</a></div></form><div id="sql-error" class="problem" hidden></div><div id="sql-result"></div>"##;
    respond("SQL", "/sql", Ok(body.to_string()))
}
