//! Typed errors of the library. The CLI turns them into one readable line.

use std::path::PathBuf;

/// Every failure the library reports. Each variant names what a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A feature file that cannot be read as a float matrix (bad header, truncated, wrong rank, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An operating-system error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error from the catalog's database (the backend's message).
    #[error("catalog: {0}")]
    Catalog(String),
    /// An error from a remote blob store (the client's message; never credentials).
    #[error("blob store: {0}")]
    Storage(String),
    /// The request contradicts what the registry holds, or is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Model pairs a query needs have no complete cached alignment; `command` fills them.
    #[error(
        "{pairs} model pair(s) have no complete cached alignment for {what}; fill them with `{command}` (or add --compute)"
    )]
    NotCached {
        pairs: usize,
        what: String,
        command: String,
    },
    /// A command needs a registry and none was found.
    #[error(
        "no prh registry found (looked at --registry, PRH_REGISTRY, and .prh/ in this directory and its parents); create one with `prh init`"
    )]
    NoRegistry,
    /// A blob whose bytes do not match its name, or that cannot be parsed.
    #[error("blob {hash} is corrupt: {msg}")]
    CorruptBlob { hash: String, msg: String },
    /// A metric cannot be computed on these inputs (mismatched n, too few samples, ...).
    #[error("metric {metric}: {msg}")]
    Metric { metric: String, msg: String },
    /// A shared resource is busy (the server's one computation at a time); trying again later
    /// can succeed.
    #[error("{0}")]
    Busy(String),
    /// The user interrupted a long operation; finished work has been kept.
    #[error("interrupted")]
    Interrupted,
}

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for a format error on `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a metric error.
    pub fn metric(metric: &str, msg: impl Into<String>) -> Self {
        Error::Metric {
            metric: metric.to_string(),
            msg: msg.into(),
        }
    }
}
