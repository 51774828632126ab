-- Schema version 7: rows tied at the k-th neighbour, per (blob, prep key, k); a bitset.
CREATE TABLE knn_ties (
    hash TEXT NOT NULL,
    prep TEXT NOT NULL,
    k    BIGINT NOT NULL,
    rows BYTEA NOT NULL,
    PRIMARY KEY (hash, prep, k)
);
