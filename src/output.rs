//! Output for people and for other tools: aligned terminal tables, JSON arrays of objects and
//! CSV, all from one list of serialisable rows so the field names never drift between formats.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

/// Output format chosen with `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// A JSON array of objects (one object for single results).
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Renders rows (structs that serialise to flat JSON objects) in `format`.
pub fn render<T: Serialize>(
    rows: &[T],
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let values: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::to_value(r).expect("rows serialise"))
        .collect();
    render_values(&values, format, out)
}

/// Renders JSON objects in `format`; columns are the keys of the first object, in order.
pub fn render_values(rows: &[Value], format: Format, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)
        }
        Format::Csv => {
            let cols = columns(rows);
            writeln!(
                out,
                "{}",
                cols.iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for r in rows {
                let line: Vec<String> = cols.iter().map(|c| csv_field(&cell(r.get(c)))).collect();
                writeln!(out, "{}", line.join(","))?;
            }
            Ok(())
        }
        Format::Table => {
            let cols = columns(rows);
            if rows.is_empty() {
                return writeln!(out, "(none)");
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| cell(r.get(c))).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |items: Vec<&str>| -> String {
                items
                    .iter()
                    .zip(&widths)
                    .map(|(s, w)| pad(s, *w))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(cols.iter().map(|s| s.as_str()).collect()))?;
            for r in &cells {
                writeln!(out, "{}", line(r.iter().map(|s| s.as_str()).collect()))?;
            }
            Ok(())
        }
    }
}

/// `s` padded with spaces to `width` characters (format!'s own width is limited to 65,535).
fn pad(s: &str, width: usize) -> String {
    let len = s.chars().count();
    let mut out = String::with_capacity(s.len() + width.saturating_sub(len));
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
    out
}

/// Every key of every row, in order of first appearance (rows of different metrics carry
/// different fields, e.g. `ties` for kNN metrics only; a missing one prints empty).
fn columns(rows: &[Value]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for o in rows.iter().filter_map(|r| r.as_object()) {
        for k in o.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    cols
}

/// A cell as text: numbers with up to 6 significant decimals, null as empty.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                format_float(f)
            } else {
                n.to_string()
            }
        }
        Some(other) => other.to_string(),
    }
}

/// Formats a float for people: 6 decimals, trailing zeros trimmed; in scientific notation
/// (7 significant digits) when that would show nothing or a very long number (|f| < 1e-4 or
/// ≥ 1e15), so `1e-300` prints as `1e-300`, not as 0 or a 300-digit decimal.
pub fn format_float(f: f64) -> String {
    let a = f.abs();
    if f.is_finite() && a != 0.0 && !(1e-4..1e15).contains(&a) {
        let s = format!("{f:.6e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let s = format!("{f:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn floats_print_short_at_any_magnitude() {
        use super::format_float as f;
        assert_eq!(f(1e-300), "1e-300");
        assert_eq!(f(1e-320), "9.999889e-321"); // subnormal: its nearest double
        assert_eq!(f(-2.5e300), "-2.5e300");
        assert_eq!(f(0.123456789), "0.123457");
        assert_eq!(f(0.0), "0");
        assert_eq!(f(-0.0), "0");
        assert_eq!(f(1234.5), "1234.5");
        assert_eq!(f(0.00012), "0.00012");
        assert_eq!(f(0.00001234), "1.234e-5");
        assert!(f(1e-320).len() < 16 && f(1e300).len() < 16);
    }

    use super::*;

    #[derive(Serialize)]
    struct Row {
        name: String,
        v: f64,
        k: Option<i64>,
    }

    #[test]
    fn a_table_cell_wider_than_65535_characters_prints() {
        // format!'s width is limited to u16: a wider column used to panic the printer.
        let rows = vec![
            Row {
                name: "x".repeat(70_000),
                v: 1.0,
                k: None,
            },
            Row {
                name: "short".into(),
                v: 2.0,
                k: Some(3),
            },
        ];
        let mut out = Vec::new();
        render(&rows, Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("short"));
        assert_eq!(lines[2].find('2'), Some(70_002));
    }

    #[test]
    fn csv_quotes_and_json_keeps_field_names() {
        let rows = vec![
            Row {
                name: "a,b".into(),
                v: 0.5,
                k: Some(3),
            },
            Row {
                name: "c".into(),
                v: 1.0 / 3.0,
                k: None,
            },
        ];
        let mut buf = Vec::new();
        render(&rows, Format::Csv, &mut buf).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s, "name,v,k\n\"a,b\",0.5,3\nc,0.333333,\n");
        let mut buf = Vec::new();
        render(&rows, Format::Json, &mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v[0]["name"], "a,b");
        assert_eq!(v[1]["k"], Value::Null);
        let mut buf = Vec::new();
        render(&rows, Format::Table, &mut buf).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(
            s.starts_with("name  v         k\na,b   0.5       3\n"),
            "{s}"
        );
    }
}
