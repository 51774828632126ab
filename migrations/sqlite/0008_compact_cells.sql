-- Schema version 8: compact cache keys (DESIGN.md §5). A cell's key is still (hash_x, hash_y,
-- metric, version, params, prep_x, prep_y), but each row now names it by two small
-- dictionaries: `cell_metrics` (metric, version, params) and `cell_sides` (blob hash, prep key).
-- Their ids are derived from their content (the first 8 bytes of a BLAKE3 derived key, see
-- src/catalog/cells.rs), so every registry gives the same key the same id: a bundle's rows
-- merge without renumbering, and a bundle whose ids do not match their content is refused.
-- A row went from 318 bytes on disk to 55 (benches/cache.rs, a catalog of a million cells).
-- `micros` is the time the cell took, in microseconds; `computed_at` is Unix seconds.
-- Symmetric metrics still store one orientation: hash_x <= hash_y.
CREATE TABLE cell_metrics (
    id      INTEGER PRIMARY KEY,
    metric  TEXT NOT NULL,
    version INTEGER NOT NULL,
    params  TEXT NOT NULL,
    UNIQUE (metric, version, params)
);
CREATE TABLE cell_sides (
    id   INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    prep TEXT NOT NULL,
    UNIQUE (hash, prep)
);
INSERT OR IGNORE INTO cell_metrics (id, metric, version, params)
    SELECT prh_metric_id(metric, version, params), metric, version, params FROM (
        SELECT metric, version, params FROM cells
        UNION SELECT metric, version, params FROM imported_cells);
INSERT OR IGNORE INTO cell_sides (id, hash, prep)
    SELECT prh_side_id(hash, prep), hash, prep FROM (
        SELECT hash_x AS hash, prep_x AS prep FROM cells
        UNION SELECT hash_y, prep_y FROM cells
        UNION SELECT hash_x, prep_x FROM imported_cells
        UNION SELECT hash_y, prep_y FROM imported_cells);

CREATE TABLE cells_compact (
    m           INTEGER NOT NULL,
    x           INTEGER NOT NULL,
    y           INTEGER NOT NULL,
    value       REAL NOT NULL,
    micros      INTEGER NOT NULL,
    computed_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    PRIMARY KEY (m, x, y)
) WITHOUT ROWID;
INSERT OR IGNORE INTO cells_compact (m, x, y, value, micros, computed_at)
    SELECT prh_metric_id(metric, version, params), prh_side_id(hash_x, prep_x),
           prh_side_id(hash_y, prep_y), value, CAST(round(seconds * 1e6) AS INTEGER),
           coalesce(CAST(strftime('%s', computed_at) AS INTEGER), 0)
    FROM cells;
DROP TABLE cells;
ALTER TABLE cells_compact RENAME TO cells;

CREATE TABLE imported_compact (
    m           INTEGER NOT NULL,
    x           INTEGER NOT NULL,
    y           INTEGER NOT NULL,
    value       REAL NOT NULL,
    micros      INTEGER NOT NULL,
    computed_at INTEGER NOT NULL,
    origin      TEXT NOT NULL,
    PRIMARY KEY (m, x, y)
) WITHOUT ROWID;
INSERT OR IGNORE INTO imported_compact (m, x, y, value, micros, computed_at, origin)
    SELECT prh_metric_id(metric, version, params), prh_side_id(hash_x, prep_x),
           prh_side_id(hash_y, prep_y), value, CAST(round(seconds * 1e6) AS INTEGER),
           coalesce(CAST(strftime('%s', computed_at) AS INTEGER), 0), origin
    FROM imported_cells;
DROP TABLE imported_cells;
ALTER TABLE imported_compact RENAME TO imported_cells;
