-- Schema version 10: exact kNN graphs of representations on the large-n path, per (blob, prep
-- key, k); derived data (see the SQLite migration of the same number).
CREATE TABLE knn_graphs (
    hash  TEXT NOT NULL,
    prep  TEXT NOT NULL,
    k     BIGINT NOT NULL,
    graph BYTEA NOT NULL,
    PRIMARY KEY (hash, prep, k)
);
