//! Sweeps split over workers in PostgreSQL: a unit is claimed with `FOR UPDATE SKIP LOCKED`
//! (concurrent claimants skip each other's rows instead of waiting), leases judged by the
//! server's clock.

use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::catalog::{CheckpointId, NewUnit, SweepRow, Unit, UnitRow, block};
use crate::error::Result;

/// Now, in Unix milliseconds.
const NOW: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";

fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s.replace("{NOW}", NOW))
}

pub(super) async fn create(
    pool: &PgPool,
    spec: &str,
    label: &str,
    units: &[NewUnit],
) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(sql(
        "INSERT INTO sweeps (spec, label, created_ms) VALUES ($1, $2, {NOW}) RETURNING id".into(),
    ))
    .bind(spec)
    .bind(label)
    .fetch_one(&mut *tx)
    .await?;
    let xs: Vec<i64> = units.iter().map(|u| u.x.0).collect();
    let ys: Vec<i64> = units.iter().map(|u| u.y.0).collect();
    let labels: Vec<String> = units.iter().map(|u| u.label.clone()).collect();
    let cells: Vec<i64> = units.iter().map(|u| u.cells).collect();
    let from: Vec<Option<i64>> = units.iter().map(|u| u.x_layers.map(|b| b.0)).collect();
    let to: Vec<Option<i64>> = units.iter().map(|u| u.x_layers.map(|b| b.1)).collect();
    let r0: Vec<Option<i64>> = units.iter().map(|u| u.rows.map(|b| b.0)).collect();
    let r1: Vec<Option<i64>> = units.iter().map(|u| u.rows.map(|b| b.1)).collect();
    sqlx::query(
        "INSERT INTO sweep_units (sweep_id, idx, x_checkpoint, y_checkpoint, label, cells,
             x_from, x_to, row_from, row_to)
         SELECT $1, t.i - 1, t.x, t.y, t.label, t.cells, t.x_from, t.x_to, t.row_from, t.row_to
         FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::bigint[]) WITH ORDINALITY
              AS t(x, y, label, cells, x_from, x_to, row_from, row_to, i)",
    )
    .bind(id)
    .bind(xs)
    .bind(ys)
    .bind(labels)
    .bind(cells)
    .bind(from)
    .bind(to)
    .bind(r0)
    .bind(r1)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

pub(super) async fn claim(
    pool: &PgPool,
    sweep: Option<i64>,
    worker: &str,
    lease_ms: i64,
) -> Result<Option<Unit>> {
    // The first open unit: the first pending one or the first whose lease ran out, each found
    // by a walk of the (state, sweep_id, idx) index that stops at its first unlocked row (an OR
    // of the two would scan every open unit at each claim: quadratic in a sweep's size).
    let scope = if sweep.is_some() {
        "sweep_id = $1"
    } else {
        "$1::bigint IS NULL"
    };
    // A pair unit waits while its sweep has a graph block not done (the partial index
    // sweep_units_graph_blocks holds only those).
    let row = sqlx::query(sql(format!(
        "WITH pending AS (SELECT sweep_id, idx, row_from FROM sweep_units
                          WHERE state = 'pending' AND {scope}
                          ORDER BY sweep_id, idx LIMIT 1 FOR UPDATE SKIP LOCKED),
              expired AS (SELECT sweep_id, idx, row_from FROM sweep_units
                          WHERE state = 'running' AND {scope} AND lease_until < {{NOW}}
                          ORDER BY sweep_id, idx LIMIT 1 FOR UPDATE SKIP LOCKED),
              first AS (SELECT * FROM pending UNION ALL SELECT * FROM expired
                        ORDER BY sweep_id, idx LIMIT 1),
              c AS (SELECT f.sweep_id, f.idx FROM first f
                    WHERE f.row_from IS NOT NULL
                       OR NOT EXISTS (SELECT 1 FROM sweep_units g
                                      WHERE g.sweep_id = f.sweep_id AND g.row_from IS NOT NULL
                                        AND g.state <> 'done'))
         UPDATE sweep_units u SET state = 'running', worker = $2, lease_until = {{NOW}} + $3,
             started_ms = {{NOW}}, attempts = u.attempts + 1
         FROM c
         WHERE u.sweep_id = c.sweep_id AND u.idx = c.idx
         RETURNING u.sweep_id, u.idx, (SELECT spec FROM sweeps s WHERE s.id = u.sweep_id),
                   u.x_checkpoint, u.y_checkpoint, u.label, u.cells, u.x_from, u.x_to,
                   u.row_from, u.row_to"
    )))
    .bind(sweep)
    .bind(worker)
    .bind(lease_ms)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(Unit {
            sweep: r.try_get(0)?,
            idx: r.try_get(1)?,
            spec: r.try_get(2)?,
            x: CheckpointId(r.try_get(3)?),
            y: CheckpointId(r.try_get(4)?),
            label: r.try_get(5)?,
            cells: r.try_get(6)?,
            x_layers: block(r.try_get(7)?, r.try_get(8)?),
            rows: block(r.try_get(9)?, r.try_get(10)?),
        })
    })
    .transpose()
}

/// Sets `set` on unit (sweep, idx) if `worker` holds it (running); whether it did. `$4` in
/// `set` is `extra`.
async fn update_held(
    pool: &PgPool,
    set: &str,
    (sweep, idx, worker): (i64, i64, &str),
    extra: Option<i64>,
) -> Result<bool> {
    let q = sqlx::query(sql(format!(
        "UPDATE sweep_units SET {set}
         WHERE sweep_id = $1 AND idx = $2 AND worker = $3 AND state = 'running'"
    )))
    .bind(sweep)
    .bind(idx)
    .bind(worker);
    let q = match extra {
        Some(v) => q.bind(v),
        None => q,
    };
    Ok(q.execute(pool).await?.rows_affected() > 0)
}

pub(super) async fn renew(
    pool: &PgPool,
    sweep: i64,
    idx: i64,
    worker: &str,
    lease_ms: i64,
) -> Result<bool> {
    let set = "lease_until = {NOW} + $4";
    update_held(pool, set, (sweep, idx, worker), Some(lease_ms)).await
}

pub(super) async fn finish(pool: &PgPool, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
    let set = "state = 'done', finished_ms = {NOW}, lease_until = NULL";
    update_held(pool, set, (sweep, idx, worker), None).await
}

/// Back to pending for any worker to claim at once (its holder was told to stop).
pub(super) async fn release(pool: &PgPool, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
    let set = "state = 'pending', lease_until = NULL";
    update_held(pool, set, (sweep, idx, worker), None).await
}

pub(super) async fn rows(pool: &PgPool) -> Result<(Vec<SweepRow>, Vec<UnitRow>)> {
    let sweeps: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT id, label, created_ms FROM sweeps ORDER BY id")
            .fetch_all(pool)
            .await?;
    let units = sqlx::query(
        "SELECT sweep_id, idx, label, cells, state, worker, lease_until, started_ms, finished_ms,
                attempts, row_from, row_to
         FROM sweep_units ORDER BY sweep_id, idx",
    )
    .fetch_all(pool)
    .await?;
    Ok((
        sweeps
            .into_iter()
            .map(|(id, label, created_ms)| SweepRow {
                id,
                label,
                created_ms,
            })
            .collect(),
        units
            .iter()
            .map(|r| {
                Ok(UnitRow {
                    sweep: r.try_get(0)?,
                    idx: r.try_get(1)?,
                    label: r.try_get(2)?,
                    cells: r.try_get(3)?,
                    state: r.try_get(4)?,
                    worker: r.try_get(5)?,
                    lease_until: r.try_get(6)?,
                    started_ms: r.try_get(7)?,
                    finished_ms: r.try_get(8)?,
                    attempts: r.try_get(9)?,
                    rows: block(r.try_get(10)?, r.try_get(11)?),
                })
            })
            .collect::<Result<_>>()?,
    ))
}

pub(super) async fn now(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(sql("SELECT {NOW}".into()))
        .fetch_one(pool)
        .await?)
}
