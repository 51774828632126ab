-- Schema version 2: the content-addressed metric cache (DESIGN.md §5); see the SQLite twin.
CREATE TABLE cells (
    hash_x      TEXT NOT NULL,
    hash_y      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    params      TEXT NOT NULL,
    prep_x      TEXT NOT NULL,
    prep_y      TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    seconds     DOUBLE PRECISION NOT NULL,
    computed_at TEXT NOT NULL DEFAULT (to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
    PRIMARY KEY (hash_x, hash_y, metric, version, params, prep_x, prep_y)
);

CREATE TABLE clamp_thresholds (
    layers_key TEXT NOT NULL,
    q          DOUBLE PRECISION NOT NULL,
    threshold  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (layers_key, q)
);
