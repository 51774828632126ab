//! The guard of prh's SQL (`prh query`, the dashboard's console, `Registry.sql` in Python):
//! one read-only query over the registry's tables, nothing else.
//!
//! The SQL runs in polars over frames built from the catalog, so no statement can change the
//! registry; still, anything but a single SELECT (DELETE, INSERT, CREATE, DROP, ATTACH, PRAGMA,
//! SET …) is an error before polars sees it — it would otherwise print nothing and look as if
//! it ran — and so are polars' table functions (`read_csv('/etc/passwd')` would read files).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, JoinConstraint, JoinOperator, LimitClause, Query, SetExpr, Statement, TableFactor,
    TableWithJoins, Value, visit_relations,
};
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

/// Most rows one intermediate result of a query may hold ([`estimate_rows`]).
pub const MAX_ROWS: u128 = 20_000_000;

/// Refuses `sql` when its largest intermediate result would exceed [`MAX_ROWS`] rows, given
/// the row counts of the tables it reads (`sizes`, by lower-case name).
pub fn check_size(sql: &str, sizes: &HashMap<String, u64>) -> Result<()> {
    let rows = estimate_rows(sql, sizes)?;
    if rows > MAX_ROWS {
        return Err(Error::Invalid(format!(
            "this query would build about {rows} rows (more than prh's budget of {MAX_ROWS}): join tables with ON conditions instead of CROSS JOIN or a comma, or narrow them first"
        )));
    }
    Ok(())
}

/// How many rows the largest intermediate result of `sql` can hold, from the row counts of
/// the tables it reads: joins without a condition (CROSS JOIN, a comma, ON TRUE) multiply,
/// joins with one count as their larger side, a literal LIMIT caps, a set operation adds.
/// An estimate that catches the runaway product (five tables cross-joined), not a bound for
/// every query.
pub fn estimate_rows(sql: &str, sizes: &HashMap<String, u64>) -> Result<u128> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| Error::Invalid(format!("SQL does not parse: {e}")))?;
    let mut est = Estimate {
        sizes,
        ctes: HashMap::new(),
        peak: 0,
    };
    for s in &statements {
        if let Statement::Query(q) = s {
            let rows = est.query(q);
            est.seen(rows);
        }
    }
    Ok(est.peak)
}

struct Estimate<'a> {
    sizes: &'a HashMap<String, u64>,
    ctes: HashMap<String, u128>,
    peak: u128,
}

impl Estimate<'_> {
    fn seen(&mut self, rows: u128) {
        self.peak = self.peak.max(rows);
    }

    fn query(&mut self, q: &Query) -> u128 {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let rows = self.query(&cte.query);
                self.ctes.insert(cte.alias.name.value.to_lowercase(), rows);
            }
        }
        let rows = self.set_expr(&q.body);
        self.seen(rows);
        match &q.limit_clause {
            Some(LimitClause::LimitOffset {
                limit: Some(Expr::Value(v)),
                ..
            }) => match &v.value {
                Value::Number(n, _) => n.parse().map_or(rows, |n: u128| rows.min(n)),
                _ => rows,
            },
            _ => rows,
        }
    }

    fn set_expr(&mut self, e: &SetExpr) -> u128 {
        match e {
            SetExpr::Select(s) => {
                let mut rows: u128 = 1;
                for t in &s.from {
                    rows = rows.saturating_mul(self.joined(t));
                    self.seen(rows);
                }
                rows
            }
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left).saturating_add(self.set_expr(right))
            }
            _ => 1,
        }
    }

    fn joined(&mut self, t: &TableWithJoins) -> u128 {
        let mut rows = self.factor(&t.relation);
        for j in &t.joins {
            let right = self.factor(&j.relation);
            rows = if unconstrained(&j.join_operator) {
                rows.saturating_mul(right)
            } else {
                rows.max(right)
            };
            self.seen(rows);
        }
        rows
    }

    fn factor(&mut self, f: &TableFactor) -> u128 {
        match f {
            TableFactor::Table { name, .. } => {
                let n = name.to_string().to_lowercase();
                self.ctes
                    .get(&n)
                    .copied()
                    .or_else(|| self.sizes.get(&n).map(|&r| r as u128))
                    .unwrap_or(1)
            }
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.joined(table_with_joins),
            _ => 1,
        }
    }
}

/// A join that pairs every row with every row: CROSS JOIN, CROSS/OUTER APPLY, or a join
/// without a condition (or with ON TRUE).
fn unconstrained(op: &JoinOperator) -> bool {
    let open = |c: &JoinConstraint| match c {
        JoinConstraint::None => true,
        JoinConstraint::On(Expr::Value(v)) => v.value == Value::Boolean(true),
        _ => false,
    };
    match op {
        JoinOperator::CrossJoin(_) | JoinOperator::CrossApply | JoinOperator::OuterApply => true,
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c) => open(c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_ROWS, check, estimate_rows};
    use std::collections::HashMap;

    #[test]
    fn cross_joins_multiply_keyed_joins_do_not_and_limits_cap() {
        let sizes: HashMap<String, u64> = [("reps", 1000), ("models", 20), ("cells", 1_000_000)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let est = |q: &str| estimate_rows(q, &sizes).unwrap();
        assert_eq!(est("SELECT * FROM models"), 20);
        assert_eq!(est("SELECT * FROM reps a CROSS JOIN reps b"), 1_000_000);
        assert_eq!(est("SELECT * FROM reps a, models b"), 20_000);
        assert_eq!(
            est("SELECT * FROM cells c JOIN reps r ON c.x = r.y"),
            1_000_000
        );
        assert_eq!(
            est("SELECT * FROM (SELECT * FROM reps LIMIT 65) e, models"),
            1300
        );
        let hostile = "SELECT count(*) FROM reps a CROSS JOIN reps b CROSS JOIN reps c \
                       CROSS JOIN reps d CROSS JOIN (SELECT * FROM reps LIMIT 65) e";
        assert!(est(hostile) > MAX_ROWS);
        assert_eq!(
            est("WITH t AS (SELECT * FROM reps) SELECT * FROM t x CROSS JOIN t y"),
            1_000_000
        );
        assert_eq!(
            est("SELECT * FROM models UNION ALL SELECT * FROM models"),
            40
        );
    }

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
