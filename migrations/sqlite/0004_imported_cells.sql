-- Schema version 4: cached cells that came in a bundle and have not been recomputed here.
-- They are never served (sweeps and queries read `cells` only); `prh verify --recompute`
-- recomputes them first and moves those that match into `cells`. `origin` names the bundle
-- (BLAKE3 of its catalog snapshot).
CREATE TABLE imported_cells (
    hash_x      TEXT NOT NULL,
    hash_y      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    params      TEXT NOT NULL,
    prep_x      TEXT NOT NULL,
    prep_y      TEXT NOT NULL,
    value       REAL NOT NULL,
    seconds     REAL NOT NULL,
    computed_at TEXT NOT NULL,
    origin      TEXT NOT NULL,
    PRIMARY KEY (hash_x, hash_y, metric, version, params, prep_x, prep_y)
) WITHOUT ROWID;
