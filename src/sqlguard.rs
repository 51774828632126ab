//! The guard of prh's SQL (`prh query`, the dashboard's console, `Registry.sql` in Python):
//! one read-only query over the registry's tables, nothing else.
//!
//! The SQL runs in polars over frames built from the catalog, so no statement can change the
//! registry; still, anything but a single SELECT (DELETE, INSERT, CREATE, DROP, ATTACH, PRAGMA,
//! SET …) is an error before polars sees it — it would otherwise print nothing and look as if
//! it ran — and so are polars' table functions (`read_csv('/etc/passwd')` would read files).

use std::ops::ControlFlow;

use sqlparser::ast::{Statement, visit_relations};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::error::{Error, Result};

/// Accepts `sql` when it is exactly one query that reads only tables (no table functions).
pub fn check(sql: &str) -> Result<()> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| Error::Invalid(format!("SQL does not parse: {e}")))?;
    let [statement] = statements.as_slice() else {
        return Err(Error::Invalid(format!(
            "give exactly one SELECT statement (got {})",
            statements.len()
        )));
    };
    if !matches!(statement, Statement::Query(_)) {
        let first = sql.split_whitespace().next().unwrap_or("").to_uppercase();
        return Err(Error::Invalid(format!(
            "prh's SQL is read-only: only SELECT queries run, not {first} (the registry changes through prh's commands)"
        )));
    }
    let refused = visit_relations(&statements, |name| {
        let n = name.to_string().to_lowercase();
        if n.starts_with("read_") || n.starts_with("scan_") || n.contains('/') {
            ControlFlow::Break(n)
        } else {
            ControlFlow::Continue(())
        }
    });
    if let ControlFlow::Break(n) = refused {
        return Err(Error::Invalid(format!(
            "prh's SQL reads the registry's tables only, not {n}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn selects_pass_and_everything_that_could_write_or_read_files_is_refused() {
        for ok in [
            "SELECT * FROM models",
            "select x_model, avg(score) from alignment group by x_model",
            "WITH t AS (SELECT * FROM reps) SELECT count(*) FROM t",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "DELETE FROM models",
            "DROP TABLE models",
            "CREATE TABLE t AS SELECT * FROM models",
            "INSERT INTO models VALUES (1)",
            "ATTACH DATABASE 'x.db' AS x",
            "PRAGMA writable_schema = 1",
            "SELECT 1; DELETE FROM models",
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM read_parquet('x.parquet')",
            "SELECT * FROM (SELECT * FROM read_json('x'))",
            "",
        ] {
            let e = check(bad).expect_err(bad).to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }
}
