-- Schema version 3: cached permutation-null and bootstrap samples; see the SQLite twin.
CREATE TABLE null_samples (
    pair_key TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('permutation', 'bootstrap')),
    metric   TEXT NOT NULL,
    version  BIGINT NOT NULL,
    params   TEXT NOT NULL,
    prep_x   TEXT NOT NULL,
    prep_y   TEXT NOT NULL,
    seed     BIGINT NOT NULL,
    vals     BYTEA NOT NULL,
    PRIMARY KEY (pair_key, kind, metric, version, params, prep_x, prep_y, seed)
);
