-- prh catalog, schema version 1: datasets, models, checkpoints, blobs, representations, scores.
CREATE TABLE datasets (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    n           INTEGER NOT NULL CHECK (n > 0),
    description TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Optional ordered sample ids of a dataset (row i of every representation is sample idx i).
CREATE TABLE dataset_samples (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    sample_id  TEXT NOT NULL,
    PRIMARY KEY (dataset_id, idx)
);

CREATE TABLE models (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    modality   TEXT NOT NULL,
    family     TEXT,
    num_params INTEGER,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY,
    model_id   INTEGER NOT NULL REFERENCES models(id),
    name       TEXT NOT NULL,
    step       INTEGER,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (model_id, name)
);

-- One row per stored matrix; the file is blobs/<hash[0:2]>/<hash>.
CREATE TABLE blobs (
    hash       TEXT PRIMARY KEY,
    dtype      TEXT NOT NULL,
    n          INTEGER NOT NULL,
    d          INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- A representation: one checkpoint x dataset x layer x pool -> one blob.
CREATE TABLE representations (
    id            INTEGER PRIMARY KEY,
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id),
    dataset_id    INTEGER NOT NULL REFERENCES datasets(id),
    layer         INTEGER NOT NULL CHECK (layer >= 0),
    pool          TEXT NOT NULL,
    blob_hash     TEXT NOT NULL REFERENCES blobs(hash),
    source        TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (checkpoint_id, dataset_id, layer, pool)
);
CREATE INDEX representations_blob ON representations(blob_hash);

CREATE TABLE scores (
    checkpoint_id    INTEGER NOT NULL REFERENCES checkpoints(id),
    name             TEXT NOT NULL,
    value            REAL NOT NULL,
    higher_is_better INTEGER,
    PRIMARY KEY (checkpoint_id, name)
);
