-- Schema version 9: sweeps split over many workers (`prh align --workers N`, `prh worker`).
-- A sweep's model pairs with missing cells are its units; a worker claims one with a lease
-- (`lease_until`, Unix milliseconds of the catalog's clock) in an IMMEDIATE transaction,
-- renews it while it computes, and marks it done; a unit whose lease ran out is claimed again.
-- `spec` is what a worker needs to fill a unit's cells (JSON: metrics, preparation, dataset,
-- pooling). Local bookkeeping: never exported in a bundle.
CREATE TABLE sweeps (
    id         INTEGER PRIMARY KEY,
    spec       TEXT NOT NULL,
    label      TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE sweep_units (
    sweep_id     INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    x_checkpoint INTEGER NOT NULL,
    y_checkpoint INTEGER NOT NULL,
    label        TEXT NOT NULL,
    cells        INTEGER NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    worker       TEXT,
    lease_until  INTEGER,
    started_ms   INTEGER,
    finished_ms  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sweep_id, idx)
);
CREATE INDEX sweep_units_open ON sweep_units(state, sweep_id, idx);
