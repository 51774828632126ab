//! Sweeps split over workers in SQLite: units claimed in IMMEDIATE transactions (one writer at
//! a time, so one claimant per unit), leases judged by SQLite's clock.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::catalog::{CheckpointId, NewUnit, SweepRow, Unit, UnitRow, block};
use crate::error::Result;

/// Now, in Unix milliseconds.
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

pub(super) fn create(
    conn: &mut Connection,
    spec: &str,
    label: &str,
    units: &[NewUnit],
) -> Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        &format!("INSERT INTO sweeps (spec, label, created_ms) VALUES (?1, ?2, {NOW})"),
        params![spec, label],
    )?;
    let id = tx.last_insert_rowid();
    {
        let mut st = tx.prepare(
            "INSERT INTO sweep_units (sweep_id, idx, x_checkpoint, y_checkpoint, label, cells,
                 x_from, x_to, row_from, row_to)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (i, u) in units.iter().enumerate() {
            let (from, to) = (u.x_layers.map(|b| b.0), u.x_layers.map(|b| b.1));
            let (r0, r1) = (u.rows.map(|b| b.0), u.rows.map(|b| b.1));
            st.execute(params![
                id, i as i64, u.x, u.y, u.label, u.cells, from, to, r0, r1
            ])?;
        }
    }
    tx.commit()?;
    Ok(id)
}

pub(super) fn claim(
    conn: &mut Connection,
    sweep: Option<i64>,
    worker: &str,
    lease_ms: i64,
) -> Result<Option<Unit>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The first open unit: the first pending one or the first whose lease ran out, each found
    // by a walk of the (state, sweep_id, idx) index that stops at its first row (an OR of the
    // two would scan every open unit at each claim: quadratic in a sweep's size).
    let scope = if sweep.is_some() {
        "sweep_id = ?1"
    } else {
        "?1 IS NULL"
    };
    let unit = tx
        .query_row(
            &format!(
                "SELECT u.sweep_id, u.idx, s.spec, u.x_checkpoint, u.y_checkpoint, u.label, u.cells,
                        u.x_from, u.x_to, u.row_from, u.row_to
                 FROM sweep_units u JOIN sweeps s ON s.id = u.sweep_id
                 WHERE (u.sweep_id, u.idx) = (
                     SELECT sweep_id, idx FROM (
                         SELECT * FROM (SELECT sweep_id, idx FROM sweep_units
                                        WHERE state = 'pending' AND {scope}
                                        ORDER BY sweep_id, idx LIMIT 1)
                         UNION ALL
                         SELECT * FROM (SELECT sweep_id, idx FROM sweep_units
                                        WHERE state = 'running' AND {scope}
                                          AND lease_until < {NOW}
                                        ORDER BY sweep_id, idx LIMIT 1))
                     ORDER BY sweep_id, idx LIMIT 1)"
            ),
            [sweep],
            |r| {
                Ok(Unit {
                    sweep: r.get(0)?,
                    idx: r.get(1)?,
                    spec: r.get(2)?,
                    x: r.get::<_, CheckpointId>(3)?,
                    y: r.get::<_, CheckpointId>(4)?,
                    label: r.get(5)?,
                    cells: r.get(6)?,
                    x_layers: block(r.get(7)?, r.get(8)?),
                    rows: block(r.get(9)?, r.get(10)?),
                })
            },
        )
        .optional()?;
    // A pair unit waits while its sweep has a graph block not done (the partial index
    // sweep_units_graph_blocks holds only those).
    let unit = match unit {
        Some(u) if u.rows.is_none() => {
            let blocked: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM sweep_units WHERE sweep_id = ?1 AND row_from IS NOT NULL
                         AND state <> 'done' LIMIT 1",
                    [u.sweep],
                    |r| r.get(0),
                )
                .optional()?;
            blocked.is_none().then_some(u)
        }
        other => other,
    };
    if let Some(u) = &unit {
        tx.execute(
            &format!(
                "UPDATE sweep_units SET state = 'running', worker = ?3, lease_until = {NOW} + ?4,
                     started_ms = {NOW}, attempts = attempts + 1
                 WHERE sweep_id = ?1 AND idx = ?2"
            ),
            params![u.sweep, u.idx, worker, lease_ms],
        )?;
    }
    tx.commit()?;
    Ok(unit)
}

/// Sets `set` on unit (sweep, idx) if `worker` holds it (running); whether it did. `?4` in
/// `set` is `extra`.
fn update_held(
    conn: &Connection,
    set: &str,
    (sweep, idx, worker): (i64, i64, &str),
    extra: Option<i64>,
) -> Result<bool> {
    let stmt = format!(
        "UPDATE sweep_units SET {set}
         WHERE sweep_id = ?1 AND idx = ?2 AND worker = ?3 AND state = 'running'"
    );
    let n = match extra {
        Some(v) => conn.execute(&stmt, params![sweep, idx, worker, v])?,
        None => conn.execute(&stmt, params![sweep, idx, worker])?,
    };
    Ok(n > 0)
}

pub(super) fn renew(
    conn: &Connection,
    sweep: i64,
    idx: i64,
    worker: &str,
    lease_ms: i64,
) -> Result<bool> {
    let set = format!("lease_until = {NOW} + ?4");
    update_held(conn, &set, (sweep, idx, worker), Some(lease_ms))
}

pub(super) fn finish(conn: &Connection, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
    let set = format!("state = 'done', finished_ms = {NOW}, lease_until = NULL");
    update_held(conn, &set, (sweep, idx, worker), None)
}

/// Back to pending for any worker to claim at once (its holder was told to stop).
pub(super) fn release(conn: &Connection, sweep: i64, idx: i64, worker: &str) -> Result<bool> {
    let set = "state = 'pending', lease_until = NULL";
    update_held(conn, set, (sweep, idx, worker), None)
}

pub(super) fn rows(conn: &Connection) -> Result<(Vec<SweepRow>, Vec<UnitRow>)> {
    let mut st = conn.prepare("SELECT id, label, created_ms FROM sweeps ORDER BY id")?;
    let sweeps = st
        .query_map([], |r| {
            Ok(SweepRow {
                id: r.get(0)?,
                label: r.get(1)?,
                created_ms: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare(
        "SELECT sweep_id, idx, label, cells, state, worker, lease_until, started_ms, finished_ms,
                attempts, row_from, row_to
         FROM sweep_units ORDER BY sweep_id, idx",
    )?;
    let units = st
        .query_map([], |r| {
            Ok(UnitRow {
                sweep: r.get(0)?,
                idx: r.get(1)?,
                label: r.get(2)?,
                cells: r.get(3)?,
                state: r.get(4)?,
                worker: r.get(5)?,
                lease_until: r.get(6)?,
                started_ms: r.get(7)?,
                finished_ms: r.get(8)?,
                attempts: r.get(9)?,
                rows: block(r.get(10)?, r.get(11)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((sweeps, units))
}

pub(super) fn now(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(&format!("SELECT {NOW}"), [], |r| r.get(0))?)
}
