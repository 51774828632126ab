//! prh's integration tests, one binary (each file below is a module): the suite links polars,
//! sqlx, axum and object_store once instead of once per file. Every test drives the real `prh`
//! binary, library or Python package against real components (PostgreSQL, an S3 server,
//! Chromium, a Python virtualenv) that the harness in `common/` starts and stops.
//!
//! Run one file's tests with `cargo test --test integration <file>::`, e.g.
//! `cargo test --test integration seam:: -- --nocapture`.

mod common;

mod align;
mod browser;
mod compare;
mod conformance;
mod containers;
mod errors;
mod hostile;
mod independent;
mod ingest;
mod kubernetes;
mod large_n;
mod locations;
mod parity;
mod peers;
mod postgres;
mod python;
mod queries;
mod real_zoo;
mod reduce;
mod reliability;
mod s3;
mod seam;
mod serve;
mod shards;
mod slurm;
mod ties;
mod varwidth;
mod workers;
