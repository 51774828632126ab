//! Upkeep of an SQLite catalog: garbage collection and merging a bundle's snapshot.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use crate::catalog::{GcPlan, MergeCounts, MergeOptions};
use crate::error::{Error, Result};
use crate::store::BlobHash;

/// `[[metric, version], ...]` of the metric versions this prh computes, for `json_each`.
fn current_json(current: &[(&str, u32)]) -> String {
    serde_json::to_string(current).expect("json")
}

/// Cells of a metric version this prh no longer computes, or of a blob no representation names
/// any more (`{}` is `SELECT count(*) FROM` or `DELETE FROM`).
const STALE_CELLS: &str = "cells AS c WHERE
        c.m IN (SELECT k.id FROM cell_metrics k WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) j
                WHERE json_extract(j.value, '$[0]') = k.metric AND json_extract(j.value, '$[1]') = k.version))
        OR c.x IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))
        OR c.y IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))";

/// Draws of a metric version this prh no longer computes.
const STALE_DRAWS: &str = "null_samples AS n WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) j
        WHERE json_extract(j.value, '$[0]') = n.metric AND json_extract(j.value, '$[1]') = n.version)";

pub(super) fn gc_plan(conn: &Connection, current: &[(&str, u32)]) -> Result<GcPlan> {
    let json = current_json(current);
    let mut st = conn.prepare(
        "SELECT hash, bytes FROM blobs WHERE hash NOT IN (SELECT blob_hash FROM representations)",
    )?;
    let mut unreferenced = Vec::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        // A row with no valid hash is left for `verify` to report.
        if let Ok(h) = r.get::<_, String>(0)?.parse() {
            unreferenced.push((h, r.get::<_, i64>(1)? as u64));
        }
    }
    let count = |what: &str| -> Result<usize> {
        Ok(
            conn.query_row(&format!("SELECT count(*) FROM {what}"), [&json], |r| {
                r.get::<_, i64>(0)
            })? as usize,
        )
    };
    Ok(GcPlan {
        unreferenced,
        stale_cells: count(STALE_CELLS)?,
        stale_draws: count(STALE_DRAWS)?,
    })
}

pub(super) fn gc_apply(
    tx: &rusqlite::Transaction,
    current: &[(&str, u32)],
    unreferenced: &[BlobHash],
) -> Result<()> {
    let json = current_json(current);
    tx.execute(&format!("DELETE FROM {STALE_CELLS}"), [&json])?;
    tx.execute(&format!("DELETE FROM {STALE_DRAWS}"), [&json])?;
    for h in unreferenced {
        tx.execute("DELETE FROM blobs WHERE hash = ?1", params![h.to_hex()])?;
    }
    tx.execute(
        "DELETE FROM knn_ties WHERE hash NOT IN (SELECT blob_hash FROM representations)",
        [],
    )?;
    tx.execute(
        "DELETE FROM knn_graphs WHERE hash NOT IN (SELECT blob_hash FROM representations)",
        [],
    )?;
    tx.execute(
        "DELETE FROM knn_graph_parts WHERE hash NOT IN (SELECT blob_hash FROM representations)",
        [],
    )?;
    // Quarantined cells already served from `cells`, or of blobs that are gone; then the key
    // dictionaries' entries of those blobs.
    tx.execute_batch(
        "DELETE FROM imported_cells AS i WHERE
             EXISTS (SELECT 1 FROM cells c WHERE c.m = i.m AND c.x = i.x AND c.y = i.y)
             OR i.x IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))
             OR i.y IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations));
         DELETE FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations);",
    )?;
    Ok(())
}

/// Merges the snapshot at `staged` (attached as `b`) in one transaction, which a watchdog
/// interrupts at the deadline (then [`Error::Interrupted`], everything rolled back).
pub(super) fn merge(
    conn: &mut Connection,
    staged: &Path,
    mut opts: MergeOptions,
) -> Result<MergeCounts> {
    conn.execute(
        "ATTACH DATABASE ?1 AS b",
        [staged.to_string_lossy().as_ref()],
    )?;
    let interrupt = conn.get_interrupt_handle();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let deadline = opts.deadline;
    let watchdog = std::thread::spawn(move || {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
            interrupt.interrupt();
        }
    });
    let result = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Failure::Sql)
        .and_then(|tx| {
            let counts = merge_attached(&tx, &mut opts)?;
            // A merge that ended past the deadline is rolled back too (the watchdog may not
            // have fired yet), as PostgreSQL's statement timeout does.
            if std::time::Instant::now() >= deadline {
                return Err(Failure::Other(Error::Interrupted));
            }
            tx.commit().map_err(Failure::Sql)?;
            Ok(counts)
        });
    drop(done);
    let _ = watchdog.join();
    let _ = conn.execute("DETACH DATABASE b", []);
    result.map_err(|f| match f {
        Failure::Sql(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            Error::Interrupted
        }
        Failure::Sql(e) => e.into(),
        Failure::Other(e) => e,
    })
}

/// A merge's failure, with SQLite's own error kept until it is known whether the watchdog
/// interrupted it.
enum Failure {
    Sql(rusqlite::Error),
    Other(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Other(e)
    }
}

/// The merge inside its transaction: conflicts first (nothing is written when there is one),
/// then the rows (blobs published before any row names them), then the cache.
fn merge_attached(
    tx: &rusqlite::Transaction,
    opts: &mut MergeOptions,
) -> std::result::Result<MergeCounts, Failure> {
    refuse_conflicts(tx)?;
    let mut rep = merge_rows(tx, opts)?;
    merge_cache(tx, opts, &mut rep)?;
    Ok(rep)
}

/// Refuses a bundle that disagrees with this catalog on any name (dataset size, model
/// modality, a representation's blob, provenance, a score).
fn refuse_conflicts(tx: &rusqlite::Transaction) -> std::result::Result<(), Failure> {
    let mut conflicts: Vec<String> = Vec::new();
    let mut collect = |sql: &str| -> rusqlite::Result<()> {
        let mut st = tx.prepare(sql)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        for r in rows {
            conflicts.push(r?);
        }
        Ok(())
    };
    collect(
        "SELECT 'dataset ' || d.name || ': n = ' || d.n || ' here, ' || bd.n || ' in the bundle'
             FROM b.datasets bd JOIN main.datasets d ON d.name = bd.name WHERE d.n != bd.n",
    )?;
    collect("SELECT 'model ' || m.name || ': modality ' || m.modality || ' here, ' || bm.modality || ' in the bundle'
             FROM b.models bm JOIN main.models m ON m.name = bm.name WHERE m.modality != bm.modality")?;
    collect("SELECT 'model ' || bm.name || ' checkpoint ' || bc.name || ' layer ' || br.layer || ' pool ' || br.pool
                    || ' on ' || bd.name || ': a different representation here (' || substr(r.blob_hash, 1, 12) || ') than in the bundle (' || substr(br.blob_hash, 1, 12) || ')'
             FROM b.representations br
             JOIN b.checkpoints bc ON bc.id = br.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN b.datasets bd ON bd.id = br.dataset_id
             JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN main.datasets d ON d.name = bd.name
             JOIN main.representations r ON r.checkpoint_id = c.id AND r.dataset_id = d.id AND r.layer = br.layer AND r.pool = br.pool
             WHERE r.blob_hash != br.blob_hash")?;
    collect("SELECT 'meta ' || bk.key || ' of ' || bm.name || ' @ ' || bc.name || ': ' || mk.value || ' here, ' || bk.value || ' in the bundle'
             FROM b.checkpoint_meta bk JOIN b.checkpoints bc ON bc.id = bk.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN main.checkpoint_meta mk ON mk.checkpoint_id = c.id AND mk.key = bk.key
             WHERE mk.value != bk.value")?;
    collect("SELECT 'score ' || bs.name || ' of ' || bm.name || ' @ ' || bc.name || ': ' || s.value || ' here, ' || bs.value || ' in the bundle'
             FROM b.scores bs JOIN b.checkpoints bc ON bc.id = bs.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN main.scores s ON s.checkpoint_id = c.id AND s.name = bs.name
             WHERE s.value != bs.value")?;
    if !conflicts.is_empty() {
        let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
        return Err(Failure::Other(Error::Conflict(format!(
            "{} conflict(s) with this registry, nothing imported: {}{}",
            conflicts.len(),
            shown.join("; "),
            if conflicts.len() > 10 { "; ..." } else { "" }
        ))));
    }
    Ok(())
}

/// Datasets, models, checkpoints, blobs, representations, provenance and scores the bundle
/// adds.
fn merge_rows(
    tx: &rusqlite::Transaction,
    opts: &mut MergeOptions,
) -> std::result::Result<MergeCounts, Failure> {
    let mut rep = MergeCounts {
        datasets_new: tx.execute(
            "INSERT INTO main.datasets (name, n, description, created_at)
             SELECT name, n, description, created_at FROM b.datasets
             WHERE name NOT IN (SELECT name FROM main.datasets)",
            [],
        )?,
        ..Default::default()
    };
    tx.execute(
        "INSERT INTO main.dataset_samples (dataset_id, idx, sample_id)
         SELECT d.id, s.idx, s.sample_id FROM b.dataset_samples s
         JOIN b.datasets bd ON bd.id = s.dataset_id JOIN main.datasets d ON d.name = bd.name
         WHERE NOT EXISTS (SELECT 1 FROM main.dataset_samples x WHERE x.dataset_id = d.id)",
        [],
    )?;
    rep.models_new = tx.execute(
        "INSERT INTO main.models (name, modality, family, num_params, created_at)
         SELECT name, modality, family, num_params, created_at FROM b.models
         WHERE name NOT IN (SELECT name FROM main.models)",
        [],
    )?;
    rep.checkpoints_new = tx.execute(
        "INSERT INTO main.checkpoints (model_id, name, step, created_at)
         SELECT m.id, bc.name, bc.step, bc.created_at FROM b.checkpoints bc
         JOIN b.models bm ON bm.id = bc.model_id JOIN main.models m ON m.name = bm.name
         WHERE NOT EXISTS (SELECT 1 FROM main.checkpoints c WHERE c.model_id = m.id AND c.name = bc.name)",
        [],
    )?;
    // Blob files first (renamed into place), rows after: no row ever names a missing blob.
    let mut st =
        tx.prepare("SELECT hash FROM b.blobs WHERE hash NOT IN (SELECT hash FROM main.blobs)")?;
    let new_hashes: Vec<String> = st
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let new_hashes = new_hashes
        .iter()
        .map(|h| h.parse())
        .collect::<Result<Vec<BlobHash>>>()?;
    rep.blobs_new = (opts.publish)(&new_hashes)?;
    tx.execute(
        "INSERT OR IGNORE INTO main.blobs (hash, dtype, n, d, bytes, created_at)
         SELECT hash, dtype, n, d, bytes, created_at FROM b.blobs",
        [],
    )?;
    rep.blobs_present = tx.query_row("SELECT count(*) FROM b.blobs", [], |r| r.get::<_, i64>(0))?
        as usize
        - rep.blobs_new;
    rep.representations_new = tx.execute(
        "INSERT INTO main.representations (checkpoint_id, dataset_id, layer, pool, blob_hash, source, created_at, layout)
         SELECT c.id, d.id, br.layer, br.pool, br.blob_hash, br.source, br.created_at, br.layout
         FROM b.representations br
         JOIN b.checkpoints bc ON bc.id = br.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
         JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
         JOIN b.datasets bd ON bd.id = br.dataset_id JOIN main.datasets d ON d.name = bd.name
         WHERE NOT EXISTS (SELECT 1 FROM main.representations r WHERE r.checkpoint_id = c.id
                           AND r.dataset_id = d.id AND r.layer = br.layer AND r.pool = br.pool)",
        [],
    )?;
    // A representation here whose layout was never recorded learns the bundle's.
    tx.execute(
        "UPDATE main.representations AS r SET layout = (
             SELECT br.layout FROM b.representations br
             JOIN b.checkpoints bc ON bc.id = br.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN b.datasets bd ON bd.id = br.dataset_id
             JOIN main.checkpoints c ON c.name = bc.name JOIN main.models m ON m.id = c.model_id AND m.name = bm.name
             JOIN main.datasets d ON d.name = bd.name
             WHERE c.id = r.checkpoint_id AND d.id = r.dataset_id AND br.layer = r.layer
               AND br.pool = r.pool AND br.blob_hash = r.blob_hash)
         WHERE r.layout IS NULL",
        [],
    )?;
    rep.meta_new = tx.execute(
        "INSERT INTO main.checkpoint_meta (checkpoint_id, key, value)
         SELECT c.id, bk.key, bk.value FROM b.checkpoint_meta bk
         JOIN b.checkpoints bc ON bc.id = bk.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
         JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
         WHERE NOT EXISTS (SELECT 1 FROM main.checkpoint_meta x WHERE x.checkpoint_id = c.id AND x.key = bk.key)",
        [],
    )?;
    rep.scores_new = tx.execute(
        "INSERT INTO main.scores (checkpoint_id, name, value, higher_is_better)
         SELECT c.id, bs.name, bs.value, bs.higher_is_better FROM b.scores bs
         JOIN b.checkpoints bc ON bc.id = bs.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
         JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
         WHERE NOT EXISTS (SELECT 1 FROM main.scores s WHERE s.checkpoint_id = c.id AND s.name = bs.name)",
        [],
    )?;
    Ok(rep)
}

/// The bundle's cache keys and cells: served when verified (or trusted), else quarantined.
fn merge_cache(
    tx: &rusqlite::Transaction,
    opts: &MergeOptions,
    rep: &mut MergeCounts,
) -> std::result::Result<(), Failure> {
    // Clamp thresholds are never taken from a bundle: a wrong one would make genuine blobs
    // give wrong numbers. They are recomputed from the blobs on first use.
    // Key ids derive from content (checked when staged), so the bundle's keys are ours: a
    // differing row under one id would be a 64-bit collision, refused rather than merged.
    let clash: i64 = tx.query_row(
        "SELECT (SELECT count(*) FROM b.cell_sides bs JOIN main.cell_sides s ON s.id = bs.id
                 WHERE s.hash != bs.hash OR s.prep != bs.prep)
              + (SELECT count(*) FROM b.cell_metrics bm JOIN main.cell_metrics m ON m.id = bm.id
                 WHERE m.metric != bm.metric OR m.version != bm.version OR m.params != bm.params)",
        [],
        |r| r.get(0),
    )?;
    if clash > 0 {
        return Err(Failure::Other(Error::Internal(format!(
            "{clash} of its cache key ids are taken here by other keys (a 64-bit hash collision); nothing imported — please report it"
        ))));
    }
    tx.execute(
        "INSERT OR IGNORE INTO main.cell_metrics SELECT id, metric, version, params FROM b.cell_metrics",
        [],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO main.cell_sides SELECT id, hash, prep FROM b.cell_sides",
        [],
    )?;
    let cols = "m, x, y, value, micros, computed_at";
    let absent =
        "NOT EXISTS (SELECT 1 FROM main.cells c WHERE c.m = bc.m AND c.x = bc.x AND c.y = bc.y)";
    if opts.trust_cells {
        rep.cells_new = tx.execute(
            &format!("INSERT OR IGNORE INTO main.cells ({cols}) SELECT {cols} FROM b.cells bc"),
            [],
        )?;
        rep.null_samples_new = tx.execute(
            "INSERT OR IGNORE INTO main.null_samples (pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals)
             SELECT pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals FROM b.null_samples",
            [],
        )?;
    } else {
        for c in opts.verified {
            rep.cells_new += tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO main.cells ({cols}) SELECT {cols} FROM b.cells
                     WHERE m = ?1 AND x = ?2 AND y = ?3"
                ),
                *c,
            )?;
        }
        rep.cells_quarantined = tx.execute(
            &format!(
                "INSERT OR IGNORE INTO main.imported_cells ({cols}, origin)
                 SELECT {cols}, ?1 FROM b.cells bc WHERE {absent}"
            ),
            [opts.origin],
        )?;
    }
    Ok(())
}
