//! Server-rendered SVG charts. Every mark carries its values in `data-*` attributes and a
//! `<title>` (the browser's hover text); the page script adds richer hover and clicks.

use std::fmt::Write;

/// Escapes text for HTML and SVG (element content and quoted attributes).
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A number as charts print it: 4 significant decimals.
pub(super) fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "–".into()
    }
}

/// About five round tick values covering [lo, hi]: multiples of 1, 2, 2.5 or 5 × 10^e, each
/// computed as (k · m) / 10^−e so that 0.6 is 0.6, not 3 × 0.2.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let e = (span / 5.0).log10().floor() as i32;
    let scale = |x: f64| {
        if e >= 0 {
            x * 10f64.powi(e)
        } else {
            x / 10f64.powi(-e)
        }
    };
    let m = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|&m| span / scale(m) <= 6.0)
        .unwrap_or(10.0);
    let step = scale(m);
    let (k0, k1) = ((lo / step).ceil() as i64, (hi / step + 1e-9).floor() as i64);
    (k0..=k1).map(|k| scale(k as f64 * m)).collect()
}

/// The range of `vals` padded by 5 % (a unit range around a single value).
fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    (lo - pad, hi + pad)
}

/// Plot area and scales of an x-y chart.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    top: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, v: f64) -> f64 {
        self.left + (v - self.x.0) / (self.x.1 - self.x.0) * (self.w - self.left - 20.0)
    }
    fn py(&self, v: f64) -> f64 {
        self.h - 50.0 - (v - self.y.0) / (self.y.1 - self.y.0) * (self.h - 50.0 - self.top)
    }

    /// Axes, grid, ticks and labels.
    fn axes(&self, s: &mut String, xlabel: &str, ylabel: &str) {
        let (x0, x1) = (self.left, self.w - 20.0);
        let (y0, y1) = (self.h - 50.0, self.top);
        for t in ticks(self.x.0, self.x.1) {
            let x = self.px(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}"/><text class="tick" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + 16.0,
                short(t)
            );
        }
        for t in ticks(self.y.0, self.y.1) {
            let y = self.py(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 6.0,
                y + 4.0,
                short(t)
            );
        }
        let _ = write!(
            s,
            r#"<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/><line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/><text class="label" x="{:.1}" y="{}" text-anchor="middle">{}</text><text class="label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            self.h - 12.0,
            esc(xlabel),
            (y0 + y1) / 2.0,
            esc(ylabel)
        );
    }
}

fn short(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// One point of a scatter: its label, coordinates and the page a click opens.
pub(super) struct Point<'a> {
    pub label: &'a str,
    pub x: f64,
    pub y: f64,
    pub href: String,
}

/// A scatter of points with an optional fitted line y = slope · x + intercept.
pub(super) fn scatter(
    points: &[Point],
    fit: Option<(f64, f64)>,
    xlabel: &str,
    ylabel: &str,
) -> String {
    let f = Frame {
        w: 720.0,
        h: 440.0,
        left: 70.0,
        top: 20.0,
        x: range(points.iter().map(|p| p.x)),
        y: range(points.iter().map(|p| p.y)),
    };
    let mut s = format!(
        r#"<svg class="chart scatter" viewBox="0 0 {} {}" role="img" aria-label="{} against {}">"#,
        f.w,
        f.h,
        esc(ylabel),
        esc(xlabel)
    );
    f.axes(&mut s, xlabel, ylabel);
    if let Some((slope, intercept)) = fit.filter(|(a, b)| a.is_finite() && b.is_finite()) {
        let (a, b) = f.x;
        let _ = write!(
            s,
            r#"<line class="fit" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/>"#,
            f.px(a),
            f.py(slope * a + intercept).clamp(f.top, f.h - 50.0),
            f.px(b),
            f.py(slope * b + intercept).clamp(f.top, f.h - 50.0)
        );
    }
    for p in points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()) {
        let _ = write!(
            s,
            r#"<a href="{}"><circle class="point" cx="{:.1}" cy="{:.1}" r="6" data-model="{}" data-x="{}" data-y="{}"><title>{}: {} = {}, {} = {}</title></circle></a>"#,
            esc(&p.href),
            f.px(p.x),
            f.py(p.y),
            esc(p.label),
            p.x,
            p.y,
            esc(p.label),
            esc(xlabel),
            num(p.x),
            esc(ylabel),
            num(p.y)
        );
    }
    s.push_str("</svg>");
    s
}

/// A named line: its points as (x, y, the point's label).
pub(super) type Series = (String, Vec<(f64, f64, String)>);

/// One line per series over (x, y) points.
pub(super) fn lines(series: &[Series], xlabel: &str, ylabel: &str) -> String {
    let all = || series.iter().flat_map(|(_, p)| p.iter());
    let f = Frame {
        w: 720.0,
        h: 440.0,
        left: 70.0,
        top: 20.0,
        x: range(all().map(|p| p.0)),
        y: range(all().map(|p| p.1)),
    };
    let mut s = format!(
        r#"<svg class="chart lines" viewBox="0 0 {} {}" role="img" aria-label="{}">"#,
        f.w,
        f.h,
        esc(ylabel)
    );
    f.axes(&mut s, xlabel, ylabel);
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", f.px(p.0), f.py(p.1)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="series" data-series="{}" stroke="{color}" points="{}"/>"#,
            esc(name),
            path.join(" ")
        );
        for (x, y, label) in pts {
            let _ = write!(
                s,
                r#"<circle class="point" fill="{color}" cx="{:.1}" cy="{:.1}" r="4" data-series="{}" data-checkpoint="{}" data-x="{x}" data-y="{y}"><title>{} vs {}: {}</title></circle>"#,
                f.px(*x),
                f.py(*y),
                esc(name),
                esc(label),
                esc(label),
                esc(name),
                num(*y)
            );
        }
        let _ = write!(
            s,
            r#"<text class="legend" fill="{color}" x="{}" y="{}">{}</text>"#,
            f.left + 10.0,
            f.top + 14.0 + 16.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A heatmap: `values[i][j]` at row i, column j; `best` outlined. Cells carry their row and
/// column names and value; the page script opens `data-href` on click when given.
pub(super) fn heatmap(
    rows: &[String],
    cols: &[String],
    values: &[Vec<Option<f64>>],
    best: Option<(usize, usize)>,
    href: &dyn Fn(usize, usize) -> Option<String>,
) -> String {
    let cell = if rows.len().max(cols.len()) > 40 {
        8.0
    } else {
        28.0
    };
    let label_w = if rows.len() > 40 { 120.0 } else { 150.0 };
    let (w, h) = (
        label_w + cell * cols.len() as f64 + 10.0,
        110.0 + cell * rows.len() as f64,
    );
    let (lo, hi) = range(values.iter().flatten().flatten().copied());
    let mut s = format!(
        r#"<svg class="chart heatmap" viewBox="0 0 {w} {h}" width="{w}" height="{h}" data-rows="{}" data-cols="{}">"#,
        rows.len(),
        cols.len()
    );
    legend(&mut s, lo, hi);
    let small = cell < 20.0;
    if !small {
        for (j, c) in cols.iter().enumerate() {
            let x = label_w + cell * (j as f64 + 0.5);
            let _ = write!(
                s,
                r#"<text class="tick" transform="translate({x:.1} 104) rotate(-60)">{}</text>"#,
                esc(c)
            );
        }
    }
    for (i, r) in rows.iter().enumerate() {
        let y = 110.0 + cell * i as f64;
        if !small {
            let _ = write!(
                s,
                r#"<text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 6.0,
                y + cell * 0.65,
                esc(r)
            );
        }
        for (j, c) in cols.iter().enumerate() {
            let x = label_w + cell * j as f64;
            let v = values[i][j];
            let fill = v
                .map(|v| color((v - lo) / (hi - lo)))
                .unwrap_or("#eee".into());
            let link = href(i, j)
                .map(|h| format!(r#" data-href="{}""#, esc(&h)))
                .unwrap_or_default();
            let _ = write!(
                s,
                r#"<rect class="cell" x="{x:.1}" y="{y:.1}" width="{cell}" height="{cell}" fill="{fill}" data-row="{}" data-col="{}" data-value="{}"{link}><title>{} × {}: {}</title></rect>"#,
                esc(r),
                esc(c),
                v.map(|v| v.to_string()).unwrap_or_default(),
                esc(r),
                esc(c),
                v.map(num).unwrap_or("not cached".into())
            );
        }
    }
    if let Some((i, j)) = best {
        let _ = write!(
            s,
            r#"<rect class="best" x="{:.1}" y="{:.1}" width="{cell}" height="{cell}" data-row="{i}" data-col="{j}"/>"#,
            label_w + cell * j as f64,
            110.0 + cell * i as f64
        );
    }
    s.push_str("</svg>");
    s
}

/// The colour scale of a heatmap, top left: a bar from the lowest to the highest value shown,
/// with both values.
fn legend(s: &mut String, lo: f64, hi: f64) {
    let (x0, w, steps) = (6.0, 110.0, 22);
    s.push_str(r#"<g class="legend">"#);
    for i in 0..steps {
        let t = i as f64 / (steps - 1) as f64;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="8" width="{:.1}" height="10" fill="{}"/>"#,
            x0 + w * i as f64 / steps as f64,
            w / steps as f64 + 0.3,
            color(t)
        );
    }
    let _ = write!(
        s,
        r#"<text class="tick" x="{x0}" y="32" data-legend="low">{}</text><text class="tick" x="{}" y="32" text-anchor="end" data-legend="high">{}</text></g>"#,
        num(lo),
        x0 + w,
        num(hi)
    );
}

/// A viridis-like colour for t in [0, 1].
fn color(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let p = t * 4.0;
    let i = (p.floor() as usize).min(3);
    let f = p - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let m = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let t = ticks(0.113, 0.171);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert!(t[0] >= 0.113 && *t.last().unwrap() <= 0.171);
    }

    #[test]
    fn text_is_escaped_in_marks() {
        let s = heatmap(
            &["<a>".into()],
            &["b\"".into()],
            &[vec![Some(0.5)]],
            None,
            &|_, _| None,
        );
        assert!(s.contains("&lt;a&gt;") && s.contains("b&quot;") && !s.contains("<a>"));
        assert_eq!(color(0.0), "#440154");
        assert_eq!(color(1.0), "#fde725");
    }
}
