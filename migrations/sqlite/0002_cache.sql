-- Schema version 2: the content-addressed metric cache (DESIGN.md §5).
-- One row per (hash_x, hash_y, metric, version, canonical params, prep). Symmetric metrics
-- store one orientation (hash_x <= hash_y).
CREATE TABLE cells (
    hash_x      TEXT NOT NULL,
    hash_y      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    params      TEXT NOT NULL,
    prep_x      TEXT NOT NULL,
    prep_y      TEXT NOT NULL,
    value       REAL NOT NULL,
    seconds     REAL NOT NULL,
    computed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (hash_x, hash_y, metric, version, params, prep_x, prep_y)
) WITHOUT ROWID;

-- The official clamp threshold of a checkpoint depends on all its layers together. Keyed by
-- content (BLAKE3 of the ordered layer hashes) and q, so it is computed once and a warm sweep
-- can form every cache key without reading a blob.
CREATE TABLE clamp_thresholds (
    layers_key TEXT NOT NULL,
    q          REAL NOT NULL,
    threshold  REAL NOT NULL,
    PRIMARY KEY (layers_key, q)
) WITHOUT ROWID;
