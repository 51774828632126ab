-- Schema version 4: cached cells that came in a bundle and have not been recomputed here.
CREATE TABLE imported_cells (
    hash_x      TEXT NOT NULL,
    hash_y      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    params      TEXT NOT NULL,
    prep_x      TEXT NOT NULL,
    prep_y      TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    seconds     DOUBLE PRECISION NOT NULL,
    computed_at TEXT NOT NULL,
    origin      TEXT NOT NULL,
    PRIMARY KEY (hash_x, hash_y, metric, version, params, prep_x, prep_y)
);
