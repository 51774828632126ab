//! A catalog's tables as plain rows, the same for every backend: how a bundle's snapshot (an
//! SQLite file, docs/design.md §10) is written from, and merged into, a catalog that is not SQLite.
//!
//! [`TABLES`] lists every table of the current schema with the columns prh writes, parents
//! before children; each backend reads its own tables into [`TableRows`] and writes them back.

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// What a column holds (any column may be NULL where the schema allows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Bytes,
}

/// A table and its columns.
#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

impl TableSpec {
    /// The column names, comma-separated.
    pub fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }
}

use Kind::{Bytes, Int, Real, Text};

/// Every table a bundle carries (schema version 9; the sweep bookkeeping of version 9 stays
/// with its registry), parents first.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "datasets",
        columns: &[
            ("id", Int),
            ("name", Text),
            ("n", Int),
            ("description", Text),
            ("created_at", Text),
        ],
    },
    TableSpec {
        name: "dataset_samples",
        columns: &[("dataset_id", Int), ("idx", Int), ("sample_id", Text)],
    },
    TableSpec {
        name: "models",
        columns: &[
            ("id", Int),
            ("name", Text),
            ("modality", Text),
            ("family", Text),
            ("num_params", Int),
            ("created_at", Text),
        ],
    },
    TableSpec {
        name: "checkpoints",
        columns: &[
            ("id", Int),
            ("model_id", Int),
            ("name", Text),
            ("step", Int),
            ("created_at", Text),
        ],
    },
    TableSpec {
        name: "blobs",
        columns: &[
            ("hash", Text),
            ("dtype", Text),
            ("n", Int),
            ("d", Int),
            ("bytes", Int),
            ("created_at", Text),
        ],
    },
    TableSpec {
        name: "representations",
        columns: &[
            ("id", Int),
            ("checkpoint_id", Int),
            ("dataset_id", Int),
            ("layer", Int),
            ("pool", Text),
            ("blob_hash", Text),
            ("source", Text),
            ("created_at", Text),
            ("layout", Text),
        ],
    },
    TableSpec {
        name: "scores",
        columns: &[
            ("checkpoint_id", Int),
            ("name", Text),
            ("value", Real),
            ("higher_is_better", Int),
        ],
    },
    TableSpec {
        name: "checkpoint_meta",
        columns: &[("checkpoint_id", Int), ("key", Text), ("value", Text)],
    },
    TableSpec {
        name: "clamp_thresholds",
        columns: &[("layers_key", Text), ("q", Real), ("threshold", Real)],
    },
    TableSpec {
        name: "null_samples",
        columns: &[
            ("pair_key", Text),
            ("kind", Text),
            ("metric", Text),
            ("version", Int),
            ("params", Text),
            ("prep_x", Text),
            ("prep_y", Text),
            ("seed", Int),
            ("vals", Bytes),
        ],
    },
    TableSpec {
        name: "knn_ties",
        columns: &[("hash", Text), ("prep", Text), ("k", Int), ("rows", Bytes)],
    },
    TableSpec {
        name: "cell_metrics",
        columns: &[
            ("id", Int),
            ("metric", Text),
            ("version", Int),
            ("params", Text),
        ],
    },
    TableSpec {
        name: "cell_sides",
        columns: &[("id", Int), ("hash", Text), ("prep", Text)],
    },
    TableSpec {
        name: "cells",
        columns: &[
            ("m", Int),
            ("x", Int),
            ("y", Int),
            ("value", Real),
            ("micros", Int),
            ("computed_at", Int),
        ],
    },
    TableSpec {
        name: "imported_cells",
        columns: &[
            ("m", Int),
            ("x", Int),
            ("y", Int),
            ("value", Real),
            ("micros", Int),
            ("computed_at", Int),
            ("origin", Text),
        ],
    },
];

/// The rows of one table, each in the order of its spec's columns.
#[derive(Debug)]
pub struct TableRows {
    pub spec: &'static TableSpec,
    pub rows: Vec<Vec<Value>>,
}

/// The spec of a table by name.
pub fn spec(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}
