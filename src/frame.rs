//! DataFrames to and from JSON rows.
//!
//! Every printer (table, CSV, JSON) works on JSON objects, one per row; queries answer with
//! polars DataFrames. These two functions are the bridge, written here rather than through
//! polars' JSON reader and writer: those features pull polars' streaming engine and its cloud
//! client into the build, a large part of polars that prh does not need.

use crate::error::Result;
use polars::prelude::*;
use serde_json::{Map, Number, Value};

/// One JSON object per row, keys in column order. NaN and ±inf become `null` (JSON has no
/// spelling for them); lists become arrays; dates, times and other types their display form.
pub fn to_rows(df: &DataFrame) -> Vec<Value> {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rows: Vec<Map<String, Value>> = (0..df.height()).map(|_| Map::new()).collect();
    for (name, col) in names.iter().zip(df.columns()) {
        for (row, av) in rows.iter_mut().zip(col.as_materialized_series().iter()) {
            row.insert(name.clone(), value(&av));
        }
    }
    rows.into_iter().map(Value::Object).collect()
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn value(av: &AnyValue) -> Value {
    match av {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::UInt8(v) => Value::from(*v),
        AnyValue::UInt16(v) => Value::from(*v),
        AnyValue::UInt32(v) => Value::from(*v),
        AnyValue::UInt64(v) => Value::from(*v),
        AnyValue::Int8(v) => Value::from(*v),
        AnyValue::Int16(v) => Value::from(*v),
        AnyValue::Int32(v) => Value::from(*v),
        AnyValue::Int64(v) => Value::from(*v),
        // f32's shortest decimal form, not its widened binary value (0.1, not 0.100000001…).
        AnyValue::Float32(v) => v.to_string().parse().map_or(Value::Null, float),
        AnyValue::Float64(v) => float(*v),
        AnyValue::List(s) => Value::Array(s.iter().map(|av| value(&av)).collect()),
        other => Value::String(other.to_string()),
    }
}

/// One key's value in each row; `None` where it is null or missing.
fn values<'a>(rows: &'a [Value], key: &'a str) -> impl Iterator<Item = Option<&'a Value>> + 'a {
    rows.iter()
        .map(move |r| r.get(key).filter(|v| !v.is_null()))
}

/// The column `key`: `get` of each row's non-null value, null where it is null or missing.
fn column<'a, T>(key: &'a str, rows: &'a [Value], get: impl Fn(&'a Value) -> Option<T>) -> Column
where
    Series: NamedFrom<Vec<Option<T>>, [Option<T>]>,
{
    let vals: Vec<Option<T>> = values(rows, key).map(|v| v.and_then(&get)).collect();
    Series::new(PlSmallStr::from(key), vals).into_column()
}

/// The column type that holds every non-null value of one key.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unknown,
    Bool,
    Int,
    Float,
    Text,
    Json,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Unknown,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) => Kind::Text,
            _ => Kind::Json,
        }
    }

    fn join(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Unknown, b) => b,
            (a, Kind::Unknown) => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Json,
        }
    }
}

/// A DataFrame from JSON objects: one column per key (in first-seen order), typed by its
/// values — booleans, 64-bit integers, floats, strings; a key whose values mix types (or
/// hold arrays and objects) becomes a string column of their JSON text. Missing keys are null.
pub fn from_rows(rows: &[Value]) -> Result<DataFrame> {
    let mut keys: Vec<(String, Kind)> = Vec::new();
    for row in rows {
        let Value::Object(m) = row else {
            return Err(crate::error::Error::Invalid(format!(
                "expected one JSON object per row, got {row}"
            )));
        };
        for (k, v) in m {
            match keys.iter_mut().find(|(name, _)| name == k) {
                Some((_, kind)) => *kind = kind.join(Kind::of(v)),
                None => keys.push((k.clone(), Kind::of(v))),
            }
        }
    }
    let columns = keys
        .iter()
        .map(|(k, kind)| match kind {
            Kind::Bool => column(k, rows, Value::as_bool),
            Kind::Int => column(k, rows, Value::as_i64),
            Kind::Float => column(k, rows, Value::as_f64),
            Kind::Text => column(k, rows, Value::as_str),
            Kind::Json | Kind::Unknown => column(k, rows, |v| Some(v.to_string())),
        })
        .collect();
    DataFrame::new_infer_height(columns).map_err(crate::query::pe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_round_trip_with_types_nulls_and_missing_keys() {
        let rows = vec![
            json!({"model": "a", "n": 3, "score": 0.5, "ok": true, "layers": [1, 2]}),
            json!({"model": "b", "n": null, "score": 2, "extra": "x"}),
        ];
        let df = from_rows(&rows).unwrap();
        assert_eq!(df.shape(), (2, 6));
        assert_eq!(df.column("n").unwrap().dtype(), &DataType::Int64);
        assert_eq!(df.column("score").unwrap().dtype(), &DataType::Float64);
        assert_eq!(df.column("ok").unwrap().dtype(), &DataType::Boolean);
        let back = to_rows(&df);
        assert_eq!(back[0]["model"], json!("a"));
        assert_eq!(back[0]["score"], json!(0.5));
        assert_eq!(back[1]["score"], json!(2.0));
        assert_eq!(back[1]["n"], Value::Null);
        assert_eq!(back[0]["extra"], Value::Null);
        assert_eq!(back[1]["ok"], Value::Null);
        assert_eq!(back[0]["layers"], json!("[1,2]"));
    }

    #[test]
    fn non_finite_floats_become_null_and_f32_keeps_its_decimal_form() {
        let df = DataFrame::new_infer_height(vec![
            Column::new("x".into(), vec![f64::NAN, 1.5, f64::INFINITY]),
            Column::new("y".into(), vec![0.1f32, 2.0, -3.25]),
        ])
        .unwrap();
        let rows = to_rows(&df);
        assert_eq!(rows[0], json!({"x": null, "y": 0.1}));
        assert_eq!(rows[1], json!({"x": 1.5, "y": 2.0}));
        assert_eq!(rows[2], json!({"x": null, "y": -3.25}));
    }

    #[test]
    fn a_row_that_is_not_an_object_is_refused() {
        assert!(from_rows(&[json!([1, 2])]).is_err());
    }
}
