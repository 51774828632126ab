-- Schema version 5: provenance of a checkpoint's features (precision, batch size, prompt,
-- pooling detail, code revision, ...), KEY=VALUE pairs given at ingest with `--meta`.
CREATE TABLE checkpoint_meta (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, key)
) WITHOUT ROWID;
