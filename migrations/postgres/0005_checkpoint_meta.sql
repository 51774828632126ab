-- Schema version 5: provenance of a checkpoint's features (`--meta KEY=VALUE`).
CREATE TABLE checkpoint_meta (
    checkpoint_id BIGINT NOT NULL REFERENCES checkpoints(id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, key)
);
