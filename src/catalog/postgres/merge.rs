//! Merging a bundle's snapshot into a PostgreSQL catalog: the snapshot's tables are loaded into
//! temporary tables `b_<name>` of the merging transaction, then the same rules as the SQLite
//! merge run as set statements (conflicts first, nothing written when there is one; blobs
//! published before any row names them; cached cells served only when verified or trusted).
//! The deadline becomes the statement timeout; reaching it rolls everything back.

use std::time::Instant;

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::{Rt, WRITE_LOCK, xact_lock};
use crate::catalog::tables::{Kind, TableRows, Value};
use crate::catalog::{MergeCounts, MergeOptions};
use crate::error::{Error, Result};
use crate::store::BlobHash;

/// Rows per statement when loading a snapshot table.
const CHUNK: usize = 10_000;

pub(super) fn merge(
    rt: &Rt,
    pool: &PgPool,
    tables: &[TableRows],
    mut opts: MergeOptions,
) -> Result<MergeCounts> {
    let deadline = opts.deadline;
    let mut tx = rt.block_on(async {
        let mut tx = pool.begin().await?;
        xact_lock(&mut tx, WRITE_LOCK).await?;
        Ok::<_, Error>(tx)
    })?;
    let result = (|| {
        rt.block_on(async {
            timeout(&mut tx, deadline).await?;
            for t in tables {
                load(&mut tx, t).await?;
            }
            refuse_conflicts(&mut tx).await
        })?;
        let counts = rt.block_on(merge_rows(&mut tx, deadline))?;
        let mut counts = publish(rt, &mut tx, &mut opts, counts)?;
        rt.block_on(async {
            timeout(&mut tx, deadline).await?;
            merge_blob_rows_and_more(&mut tx, &mut counts).await?;
            merge_cache(&mut tx, &opts, &mut counts).await?;
            Ok::<_, Error>(counts)
        })
    })();
    match result {
        Ok(counts) => {
            rt.block_on(tx.commit()).map_err(interrupted)?;
            Ok(counts)
        }
        Err(e) => {
            let _ = rt.block_on(tx.rollback());
            Err(e)
        }
    }
}

/// A cancelled statement (the deadline) as [`Error::Interrupted`].
fn interrupted(e: sqlx::Error) -> Error {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(c) if c == "57014" => Error::Interrupted,
        _ => e.into(),
    }
}

/// Sets the statement timeout of the transaction to what is left before `deadline`.
async fn timeout(tx: &mut PgConnection, deadline: Instant) -> Result<()> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    if left == 0 {
        return Err(Error::Interrupted);
    }
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {}",
        left.min(i32::MAX as u128)
    )))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Loads a snapshot table into the temporary table `b_<name>` (dropped at commit).
async fn load(tx: &mut PgConnection, t: &TableRows) -> Result<()> {
    let spec = t.spec;
    let cols = spec.column_list();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TEMP TABLE b_{name} ON COMMIT DROP AS SELECT {cols} FROM {name} WITH NO DATA",
        name = spec.name
    )))
    .execute(&mut *tx)
    .await
    .map_err(interrupted)?;
    let arrays: Vec<String> = spec
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, k))| {
            let ty = match k {
                Kind::Int => "bigint",
                Kind::Real => "float8",
                Kind::Text => "text",
                Kind::Bytes => "bytea",
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect();
    let sql = format!(
        "INSERT INTO b_{} ({cols}) SELECT * FROM UNNEST({})",
        spec.name,
        arrays.join(", ")
    );
    for chunk in t.rows.chunks(CHUNK) {
        let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
        for (i, (col, kind)) in spec.columns.iter().enumerate() {
            let bad = || {
                Error::Corrupt(format!(
                    "the bundle's {}.{col} holds a value of the wrong type",
                    spec.name
                ))
            };
            match kind {
                Kind::Int => {
                    let v: Vec<Option<i64>> = chunk
                        .iter()
                        .map(|r| match &r[i] {
                            Value::Null => Ok(None),
                            Value::Int(x) => Ok(Some(*x)),
                            _ => Err(bad()),
                        })
                        .collect::<Result<_>>()?;
                    q = q.bind(v);
                }
                Kind::Real => {
                    let v: Vec<Option<f64>> = chunk
                        .iter()
                        .map(|r| match &r[i] {
                            Value::Null => Ok(None),
                            Value::Real(x) => Ok(Some(*x)),
                            Value::Int(x) => Ok(Some(*x as f64)),
                            _ => Err(bad()),
                        })
                        .collect::<Result<_>>()?;
                    q = q.bind(v);
                }
                Kind::Text => {
                    let v: Vec<Option<String>> = chunk
                        .iter()
                        .map(|r| match &r[i] {
                            Value::Null => Ok(None),
                            Value::Text(x) => Ok(Some(x.clone())),
                            _ => Err(bad()),
                        })
                        .collect::<Result<_>>()?;
                    q = q.bind(v);
                }
                Kind::Bytes => {
                    let v: Vec<Option<Vec<u8>>> = chunk
                        .iter()
                        .map(|r| match &r[i] {
                            Value::Null => Ok(None),
                            Value::Bytes(x) => Ok(Some(x.clone())),
                            _ => Err(bad()),
                        })
                        .collect::<Result<_>>()?;
                    q = q.bind(v);
                }
            }
        }
        q.execute(&mut *tx).await.map_err(interrupted)?;
    }
    Ok(())
}

/// Runs a statement; the rows it changed.
async fn exec(tx: &mut PgConnection, sql: &'static str) -> Result<usize> {
    Ok(sqlx::query(sql)
        .execute(&mut *tx)
        .await
        .map_err(interrupted)?
        .rows_affected() as usize)
}

/// Refuses a bundle that disagrees with this catalog on any name.
async fn refuse_conflicts(tx: &mut PgConnection) -> Result<()> {
    let mut conflicts: Vec<String> = Vec::new();
    for sql in [
        "SELECT 'dataset ' || d.name || ': n = ' || d.n || ' here, ' || bd.n || ' in the bundle'
             FROM b_datasets bd JOIN datasets d ON d.name = bd.name WHERE d.n != bd.n",
        "SELECT 'model ' || m.name || ': modality ' || m.modality || ' here, ' || bm.modality || ' in the bundle'
             FROM b_models bm JOIN models m ON m.name = bm.name WHERE m.modality != bm.modality",
        "SELECT 'model ' || bm.name || ' checkpoint ' || bc.name || ' layer ' || br.layer || ' pool ' || br.pool
                || ' on ' || bd.name || ': a different representation here (' || substr(r.blob_hash, 1, 12) || ') than in the bundle (' || substr(br.blob_hash, 1, 12) || ')'
             FROM b_representations br
             JOIN b_checkpoints bc ON bc.id = br.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
             JOIN b_datasets bd ON bd.id = br.dataset_id
             JOIN models m ON m.name = bm.name JOIN checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN datasets d ON d.name = bd.name
             JOIN representations r ON r.checkpoint_id = c.id AND r.dataset_id = d.id AND r.layer = br.layer AND r.pool = br.pool
             WHERE r.blob_hash != br.blob_hash",
        "SELECT 'meta ' || bk.key || ' of ' || bm.name || ' @ ' || bc.name || ': ' || mk.value || ' here, ' || bk.value || ' in the bundle'
             FROM b_checkpoint_meta bk JOIN b_checkpoints bc ON bc.id = bk.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
             JOIN models m ON m.name = bm.name JOIN checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN checkpoint_meta mk ON mk.checkpoint_id = c.id AND mk.key = bk.key
             WHERE mk.value != bk.value",
        "SELECT 'score ' || bs.name || ' of ' || bm.name || ' @ ' || bc.name || ': ' || s.value || ' here, ' || bs.value || ' in the bundle'
             FROM b_scores bs JOIN b_checkpoints bc ON bc.id = bs.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
             JOIN models m ON m.name = bm.name JOIN checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN scores s ON s.checkpoint_id = c.id AND s.name = bs.name
             WHERE s.value != bs.value",
    ] {
        let found: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(interrupted)?;
        conflicts.extend(found);
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
    Err(Error::Conflict(format!(
        "{} conflict(s) with this registry, nothing imported: {}{}",
        conflicts.len(),
        shown.join("; "),
        if conflicts.len() > 10 { "; ..." } else { "" }
    )))
}

/// Datasets, models and checkpoints the bundle adds.
async fn merge_rows(tx: &mut PgConnection, deadline: Instant) -> Result<MergeCounts> {
    timeout(tx, deadline).await?;
    let mut rep = MergeCounts {
        datasets_new: exec(
            tx,
            "INSERT INTO datasets (name, n, description, created_at)
             SELECT name, n, description, created_at FROM b_datasets
             WHERE name NOT IN (SELECT name FROM datasets)",
        )
        .await?,
        ..Default::default()
    };
    exec(
        tx,
        "INSERT INTO dataset_samples (dataset_id, idx, sample_id)
         SELECT d.id, s.idx, s.sample_id FROM b_dataset_samples s
         JOIN b_datasets bd ON bd.id = s.dataset_id JOIN datasets d ON d.name = bd.name
         WHERE NOT EXISTS (SELECT 1 FROM dataset_samples x WHERE x.dataset_id = d.id)",
    )
    .await?;
    rep.models_new = exec(
        tx,
        "INSERT INTO models (name, modality, family, num_params, created_at)
         SELECT name, modality, family, num_params, created_at FROM b_models
         WHERE name NOT IN (SELECT name FROM models)",
    )
    .await?;
    rep.checkpoints_new = exec(
        tx,
        "INSERT INTO checkpoints (model_id, name, step, created_at)
         SELECT m.id, bc.name, bc.step, bc.created_at FROM b_checkpoints bc
         JOIN b_models bm ON bm.id = bc.model_id JOIN models m ON m.name = bm.name
         WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.model_id = m.id AND c.name = bc.name)",
    )
    .await?;
    Ok(rep)
}

/// Places the blobs this catalog lacks in the blob store (before any row names them).
fn publish(
    rt: &Rt,
    tx: &mut PgConnection,
    opts: &mut MergeOptions,
    mut rep: MergeCounts,
) -> Result<MergeCounts> {
    let new: Vec<String> = rt.block_on(async {
        sqlx::query_scalar("SELECT hash FROM b_blobs WHERE hash NOT IN (SELECT hash FROM blobs)")
            .fetch_all(&mut *tx)
            .await
            .map_err(interrupted)
    })?;
    let new = new
        .iter()
        .map(|h| h.parse())
        .collect::<Result<Vec<BlobHash>>>()?;
    rep.blobs_new = (opts.publish)(&new)?;
    Ok(rep)
}

/// Blob rows, representations, provenance and scores the bundle adds.
async fn merge_blob_rows_and_more(tx: &mut PgConnection, rep: &mut MergeCounts) -> Result<()> {
    exec(
        tx,
        "INSERT INTO blobs (hash, dtype, n, d, bytes, created_at)
         SELECT hash, dtype, n, d, bytes, created_at FROM b_blobs ON CONFLICT DO NOTHING",
    )
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM b_blobs")
        .fetch_one(&mut *tx)
        .await
        .map_err(interrupted)?;
    rep.blobs_present = total as usize - rep.blobs_new;
    rep.representations_new = exec(
        tx,
        "INSERT INTO representations (checkpoint_id, dataset_id, layer, pool, blob_hash, source, created_at, layout)
         SELECT c.id, d.id, br.layer, br.pool, br.blob_hash, br.source, br.created_at, br.layout
         FROM b_representations br
         JOIN b_checkpoints bc ON bc.id = br.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
         JOIN models m ON m.name = bm.name JOIN checkpoints c ON c.model_id = m.id AND c.name = bc.name
         JOIN b_datasets bd ON bd.id = br.dataset_id JOIN datasets d ON d.name = bd.name
         WHERE NOT EXISTS (SELECT 1 FROM representations r WHERE r.checkpoint_id = c.id
                           AND r.dataset_id = d.id AND r.layer = br.layer AND r.pool = br.pool)",
    )
    .await?;
    // A representation here whose layout was never recorded learns the bundle's.
    exec(
        tx,
        "UPDATE representations AS r SET layout = (
             SELECT br.layout FROM b_representations br
             JOIN b_checkpoints bc ON bc.id = br.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
             JOIN b_datasets bd ON bd.id = br.dataset_id
             JOIN checkpoints c ON c.name = bc.name JOIN models m ON m.id = c.model_id AND m.name = bm.name
             JOIN datasets d ON d.name = bd.name
             WHERE c.id = r.checkpoint_id AND d.id = r.dataset_id AND br.layer = r.layer
               AND br.pool = r.pool AND br.blob_hash = r.blob_hash LIMIT 1)
         WHERE r.layout IS NULL",
    )
    .await?;
    rep.meta_new = exec(
        tx,
        "INSERT INTO checkpoint_meta (checkpoint_id, key, value)
         SELECT c.id, bk.key, bk.value FROM b_checkpoint_meta bk
         JOIN b_checkpoints bc ON bc.id = bk.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
         JOIN models m ON m.name = bm.name JOIN checkpoints c ON c.model_id = m.id AND c.name = bc.name
         WHERE NOT EXISTS (SELECT 1 FROM checkpoint_meta x WHERE x.checkpoint_id = c.id AND x.key = bk.key)",
    )
    .await?;
    rep.scores_new = exec(
        tx,
        "INSERT INTO scores (checkpoint_id, name, value, higher_is_better)
         SELECT c.id, bs.name, bs.value, bs.higher_is_better FROM b_scores bs
         JOIN b_checkpoints bc ON bc.id = bs.checkpoint_id JOIN b_models bm ON bm.id = bc.model_id
         JOIN models m ON m.name = bm.name JOIN checkpoints c ON c.model_id = m.id AND c.name = bc.name
         WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.checkpoint_id = c.id AND s.name = bs.name)",
    )
    .await?;
    Ok(())
}

/// The bundle's cache keys and cells: served when verified (or trusted), else quarantined.
/// Clamp thresholds and kNN ties are never taken from a bundle (recomputed from the blobs).
async fn merge_cache(
    tx: &mut PgConnection,
    opts: &MergeOptions<'_>,
    rep: &mut MergeCounts,
) -> Result<()> {
    let clash: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM b_cell_sides bs JOIN cell_sides s ON s.id = bs.id
                 WHERE s.hash != bs.hash OR s.prep != bs.prep)
              + (SELECT count(*) FROM b_cell_metrics bm JOIN cell_metrics m ON m.id = bm.id
                 WHERE m.metric != bm.metric OR m.version != bm.version OR m.params != bm.params)",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(interrupted)?;
    if clash > 0 {
        return Err(Error::Internal(format!(
            "{clash} of its cache key ids are taken here by other keys (a 64-bit hash collision); nothing imported — please report it"
        )));
    }
    exec(
        tx,
        "INSERT INTO cell_metrics SELECT id, metric, version, params FROM b_cell_metrics
         ON CONFLICT DO NOTHING",
    )
    .await?;
    exec(
        tx,
        "INSERT INTO cell_sides SELECT id, hash, prep FROM b_cell_sides ON CONFLICT DO NOTHING",
    )
    .await?;
    if opts.trust_cells {
        rep.cells_new = exec(
            tx,
            "INSERT INTO cells (m, x, y, value, micros, computed_at)
             SELECT m, x, y, value, micros, computed_at FROM b_cells ON CONFLICT DO NOTHING",
        )
        .await?;
        rep.null_samples_new = exec(
            tx,
            "INSERT INTO null_samples (pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals)
             SELECT pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals FROM b_null_samples
             ON CONFLICT DO NOTHING",
        )
        .await?;
        return Ok(());
    }
    let mut ids: [Vec<i64>; 3] = Default::default();
    for c in opts.verified {
        for (col, v) in ids.iter_mut().zip(c) {
            col.push(*v);
        }
    }
    let [m, x, y] = ids;
    rep.cells_new = sqlx::query(
        "INSERT INTO cells (m, x, y, value, micros, computed_at)
         SELECT bc.m, bc.x, bc.y, bc.value, bc.micros, bc.computed_at FROM b_cells bc
         JOIN (SELECT DISTINCT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])) AS v(m, x, y)
           ON bc.m = v.m AND bc.x = v.x AND bc.y = v.y
         ON CONFLICT DO NOTHING",
    )
    .bind(m)
    .bind(x)
    .bind(y)
    .execute(&mut *tx)
    .await
    .map_err(interrupted)?
    .rows_affected() as usize;
    rep.cells_quarantined = sqlx::query(
        "INSERT INTO imported_cells (m, x, y, value, micros, computed_at, origin)
         SELECT m, x, y, value, micros, computed_at, $1 FROM b_cells bc
         WHERE NOT EXISTS (SELECT 1 FROM cells c WHERE c.m = bc.m AND c.x = bc.x AND c.y = bc.y)
         ON CONFLICT DO NOTHING",
    )
    .bind(opts.origin)
    .execute(&mut *tx)
    .await
    .map_err(interrupted)?
    .rows_affected() as usize;
    Ok(())
}
