//! prh: a registry for representational alignment research.
//!
//! The library is organised by concern, dependencies pointing one way:
//! `cli` → `engine` → `catalog` / `store` / `metrics` / `formats`.
//! See `README.md` for the on-disk format and the meaning of every metric.

pub mod analysis;
pub mod bundle;
pub mod catalog;
pub mod demo;
pub mod error;
pub mod formats;
pub mod frame;
pub mod layers;
pub mod location;
pub mod lock;
pub mod matrix;
pub mod metrics;
pub mod output;
pub mod plot;
pub mod query;
pub mod real_zoo;
pub mod registry;
pub mod rng;
pub mod serve;
pub mod sqlguard;
pub mod stats;
pub mod store;
pub mod sweep;
pub mod views;
pub mod workers;

pub use error::{Error, Result};
