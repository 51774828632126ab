-- Schema version 10: exact k-nearest-neighbour graphs of representations on the large-n path
-- (docs/design.md §13), per (blob, prep key, k): the ordered lists, their canonical similarities
-- and the tied rows, encoded by prh::metrics::graph::encode (with a BLAKE3 checksum). Derived
-- data: recomputable, dropped by gc with its blob, left out of bundles, never imported.
CREATE TABLE knn_graphs (
    hash  TEXT NOT NULL,
    prep  TEXT NOT NULL,
    k     INTEGER NOT NULL,
    graph BLOB NOT NULL,
    PRIMARY KEY (hash, prep, k)
) WITHOUT ROWID;
