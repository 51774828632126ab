//! Plots drawn in Rust with plotters: SVG or PNG by the file's extension. The PNG backend
//! renders text with an embedded DejaVu Sans (assets/), so it works on machines without
//! system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::analysis::{Matrix, TrajectoryPoint, Trend};
use crate::error::{Error, Result};

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let _ = plotters::style::register_font("sans-serif", style, bytes);
        }
    });
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Failed(format!("plot: {e}"))
}

/// Draws with the backend the extension names (`.svg` or `.png`).
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl Fn(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            draw(&root)?;
            root.present().map_err(err)
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            draw_png(&root)?;
            root.present().map_err(err)
        }
        _ => Err(Error::Unsupported(format!(
            "{}: plots are written as .svg or .png",
            path.display()
        ))),
    }
}

macro_rules! both {
    ($path:expr, $size:expr, $f:ident, $($arg:expr),*) => {
        render($path, $size, |r| $f(r, $($arg),*), |r| $f(r, $($arg),*))
    };
}

/// The series legend of a chart, in its corner.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)
}

/// The padded range of some values.
fn span(v: &[f64]) -> (f64, f64) {
    pad(
        v.iter().cloned().fold(f64::INFINITY, f64::min),
        v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    )
}

fn pad(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-9);
    (lo - 0.08 * span, hi + 0.08 * span)
}

/// Scatter of alignment against performance with the fitted line; r and ρ in the title.
/// A lower-is-better score is drawn with its axis reversed, so better is always to the right.
pub fn trend(path: &Path, t: &Trend, perf: &str, metric: &str) -> Result<()> {
    both!(path, (900, 650), draw_trend, t, perf, metric)
}

fn draw_trend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: &Trend,
    perf: &str,
    metric: &str,
) -> Result<()> {
    let sign = if t.higher_is_better { 1.0 } else { -1.0 };
    let xs: Vec<f64> = t.models.iter().map(|p| sign * p.performance).collect();
    let ys: Vec<f64> = t.models.iter().map(|p| p.alignment).collect();
    let (x0, x1) = span(&xs);
    let (y0, y1) = span(&ys);
    let title = format!(
        "{metric} vs {perf}: r = {}, ρ = {} ({} models)",
        t.pearson_r.map(|v| format!("{v:.3}")).unwrap_or("–".into()),
        t.spearman_rho
            .map(|v| format!("{v:.3}"))
            .unwrap_or("–".into()),
        t.n_models
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let xdesc = if t.higher_is_better {
        format!("{perf} (higher is better →)")
    } else {
        format!("{perf} (lower is better →)")
    };
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(format!("alignment ({metric})"))
        .x_label_formatter(&|v| format!("{:.3}", sign * v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    if let (Some(m), Some(b)) = (t.slope, t.intercept) {
        // alignment = m · perf + b, drawn in the (possibly reversed) axis coordinate.
        let line = [x0, x1].map(|x| (x, m * (sign * x) + b));
        chart
            .draw_series(LineSeries::new(line, RED.stroke_width(2)))
            .map_err(err)?
            .label("least squares")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .draw_series(
            xs.iter()
                .zip(&ys)
                .map(|(&x, &y)| Circle::new((x, y), 6, BLUE.filled())),
        )
        .map_err(err)?;
    for (p, (&x, &y)) in t.models.iter().zip(xs.iter().zip(&ys)) {
        let label = match &p.y_model {
            Some(ym) => format!("{} / {ym}", p.model),
            None => p.model.clone(),
        };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((x, y)) + Text::new(label, (9, -16), ("sans-serif", 13)),
            ))
            .map_err(err)?;
    }
    draw_legend(&mut chart)
}

/// A colour from dark blue (lo) to yellow (hi).
fn colour(v: f64, lo: f64, hi: f64) -> RGBColor {
    let t = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    };
    let stops = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let s = t * (stops.len() - 1) as f64;
    let i = (s.floor() as usize).min(stops.len() - 2);
    let f = s - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f) as u8;
    RGBColor(
        mix(stops[i].0, stops[i + 1].0),
        mix(stops[i].1, stops[i + 1].1),
        mix(stops[i].2, stops[i + 1].2),
    )
}

/// Heatmap of a model × model matrix with model names and a colour bar.
pub fn matrix(path: &Path, m: &Matrix, metric: &str) -> Result<()> {
    let w = 260 + 70 * m.cols.len() as u32;
    let h = 200 + 50 * m.rows.len() as u32;
    both!(path, (w.max(600), h.max(400)), draw_matrix, m, metric)
}

fn draw_matrix<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    m: &Matrix,
    metric: &str,
) -> Result<()> {
    let vals: Vec<f64> = m.values.iter().flatten().flatten().copied().collect();
    let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (main, bar) = root.split_horizontally(root.dim_in_pixel().0 - 110);
    let (nr, nc) = (m.rows.len(), m.cols.len());
    let mut chart = ChartBuilder::on(&main)
        .caption(
            format!("{metric}: model × model alignment"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(140)
        .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
        .map_err(err)?;
    let cols = m.cols.clone();
    let rows = m.rows.clone();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc * 2 + 1)
        .y_labels(nr * 2 + 1)
        .x_label_formatter(&|v| label_at(*v, &cols))
        .y_label_formatter(&|v| label_at(nr as f64 - *v, &rows))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, row) in m.values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let y = (nr - 1 - i) as f64;
            let (fill, text) = match v {
                Some(v) => (colour(*v, lo, hi).filled(), format!("{v:.3}")),
                None => (RGBColor(220, 220, 220).filled(), "–".into()),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                    fill,
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (j as f64 + 0.18, y + 0.6),
                    ("sans-serif", 12).into_font().color(&WHITE),
                )))
                .map_err(err)?;
        }
    }
    // Colour bar.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(60)
        .margin_bottom(60)
        .margin_right(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1.0, lo..hi.max(lo + 1e-9))
        .map_err(err)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let steps = 60;
    for s in 0..steps {
        let a = lo + (hi - lo) * s as f64 / steps as f64;
        let b = lo + (hi - lo) * (s + 1) as f64 / steps as f64;
        cb.draw_series(std::iter::once(Rectangle::new(
            [(0.0, a), (1.0, b)],
            colour((a + b) / 2.0, lo, hi).filled(),
        )))
        .map_err(err)?;
    }
    Ok(())
}

/// The name at a half-integer position of a categorical axis ("" elsewhere).
fn label_at(v: f64, names: &[String]) -> String {
    let i = v - 0.5;
    if (i - i.round()).abs() < 1e-6 && i >= 0.0 && (i.round() as usize) < names.len() {
        names[i.round() as usize].clone()
    } else {
        String::new()
    }
}

/// One line per reference model: alignment against training step.
pub fn trajectory(
    path: &Path,
    points: &[TrajectoryPoint],
    model: &str,
    metric: &str,
) -> Result<()> {
    both!(path, (900, 600), draw_trajectory, points, model, metric)
}

fn draw_trajectory<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[TrajectoryPoint],
    model: &str,
    metric: &str,
) -> Result<()> {
    let steps: Vec<f64> = points.iter().map(|p| p.step.unwrap_or(0) as f64).collect();
    let (x0, x1) = span(&steps);
    let ys: Vec<f64> = points.iter().map(|p| p.score).collect();
    let (y0, y1) = span(&ys);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{model}: {metric} across training"),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc(format!("alignment ({metric})"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let mut refs: Vec<&str> = points.iter().map(|p| p.against.as_str()).collect();
    refs.sort();
    refs.dedup();
    for (i, r) in refs.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.against == *r)
            .map(|p| (p.step.unwrap_or(0) as f64, p.score))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(r.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(
                series
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, c.filled())),
            )
            .map_err(err)?;
    }
    draw_legend(&mut chart)
}
