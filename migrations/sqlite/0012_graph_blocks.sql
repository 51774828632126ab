-- Schema version 12: one representation's kNN graph split over workers. A unit with row_from
-- and row_to set searches those rows (row_from..row_to, end excluded) of its x checkpoint's
-- layer x_from (= x_to; y_checkpoint = x_checkpoint) against all rows; its result is a part,
-- kept here until the parts cover the layer and are merged into knn_graphs (which removes
-- them). Parts are derived data like graphs: dropped by gc with their blob, never exported.
ALTER TABLE sweep_units ADD COLUMN row_from INTEGER;
ALTER TABLE sweep_units ADD COLUMN row_to INTEGER;
CREATE TABLE knn_graph_parts (
    hash     TEXT NOT NULL,
    prep     TEXT NOT NULL,
    k        INTEGER NOT NULL,
    row_from INTEGER NOT NULL,
    row_to   INTEGER NOT NULL,
    part     BLOB NOT NULL,
    PRIMARY KEY (hash, prep, k, row_from)
) WITHOUT ROWID;
-- A sweep's graph blocks, found without reading its pair units (a claim checks them).
CREATE INDEX sweep_units_graph_blocks ON sweep_units (sweep_id) WHERE row_from IS NOT NULL;
