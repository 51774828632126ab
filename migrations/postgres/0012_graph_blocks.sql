-- Schema version 12: graph blocks as units and their parts; see the SQLite twin.
ALTER TABLE sweep_units ADD COLUMN row_from BIGINT;
ALTER TABLE sweep_units ADD COLUMN row_to BIGINT;
CREATE TABLE knn_graph_parts (
    hash     TEXT NOT NULL,
    prep     TEXT NOT NULL,
    k        BIGINT NOT NULL,
    row_from BIGINT NOT NULL,
    row_to   BIGINT NOT NULL,
    part     BYTEA NOT NULL,
    PRIMARY KEY (hash, prep, k, row_from)
);
CREATE INDEX sweep_units_graph_blocks ON sweep_units (sweep_id) WHERE row_from IS NOT NULL;
