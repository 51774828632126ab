//! prh: a registry for representational alignment research.
//!
//! Features of many models (per checkpoint, per layer) on one shared input set, stored
//! content-addressed in a catalog plus a blob store; the official platonic-rep alignment
//! metrics and more, computed once and cached by content; polars queries over the results.
//! The design is in `docs/design.md` (sections cited as §N); its §12 gives the layers of the
//! code, dependencies pointing one way: front ends (`cli` in the binary, [`serve`], the Python
//! package) → [`views`], [`analysis`], [`query`] → [`sweep`], [`workers`], [`bundle`],
//! [`registry`] → [`catalog`], [`store`], [`metrics`], [`formats`], [`layers`], [`stats`] →
//! [`matrix`], [`error`].

#![warn(missing_docs)]

#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod analysis;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod bundle;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod catalog;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod demo;
pub mod error;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod formats;
pub mod frame;
pub mod layers;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod location;
pub mod lock;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod matrix;
pub mod metrics;
pub mod names;
pub mod output;
pub mod plot;
pub mod query;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod real_zoo;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod registry;
pub mod rng;
pub mod samples;
pub mod serve;
pub mod shard;
pub mod sqlguard;
pub mod stats;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod store;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod sweep;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod views;
#[allow(missing_docs)] // fields and variants still undocumented (docs/design.md §12)
pub mod workers;

pub use error::{Error, Result};
