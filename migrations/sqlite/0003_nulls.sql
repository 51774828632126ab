-- Schema version 3: cached permutation-null and bootstrap samples of model-pair scores.
-- pair_key = BLAKE3 of the x layers' hashes, a separator, then the y layers' hashes (ordered),
-- so a sample belongs to exactly the layer sets it was drawn for. `vals` holds the draws as
-- little-endian f64 in draw order (draw p uses the stream seeded by (seed, p)), so a larger
-- count extends the sample instead of restarting it.
CREATE TABLE null_samples (
    pair_key TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('permutation', 'bootstrap')),
    metric   TEXT NOT NULL,
    version  INTEGER NOT NULL,
    params   TEXT NOT NULL,
    prep_x   TEXT NOT NULL,
    prep_y   TEXT NOT NULL,
    seed     INTEGER NOT NULL,
    vals     BLOB NOT NULL,
    PRIMARY KEY (pair_key, kind, metric, version, params, prep_x, prep_y, seed)
) WITHOUT ROWID;
