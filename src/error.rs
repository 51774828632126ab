//! Typed errors of the library. Every error has a [`ErrorKind`], which is all a front end
//! needs to answer it: the CLI maps a kind to an exit code (`cli::exit_code`), `prh serve` to an
//! HTTP status (`serve::status_of`), the Python package to an exception class; `prh worker`
//! retries only [`ErrorKind::Unavailable`]. The message is one line a user can act on; a hint,
//! when there is one, says what to run next.

use std::path::PathBuf;

/// What kind of failure an [`Error`] is: what the user can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is malformed or out of range (the message names the offending value).
    InvalidInput,
    /// A named thing (model, checkpoint, dataset, representation, registry, file) does not exist.
    NotFound,
    /// The request contradicts what the registry holds (a name taken, a dataset of another n,
    /// cached results a query needs are missing).
    Conflict,
    /// The request is well formed but prh does not do it (a URL scheme, an export format).
    Unsupported,
    /// A backend is busy or unreachable for now (a locked catalog, a lost connection, a busy
    /// server); trying again later can succeed.
    Unavailable,
    /// A backend or the operating system failed in a way retrying will not fix (a full disk,
    /// a permission, a schema the database refuses).
    Failed,
    /// Stored data does not match its hash or cannot be parsed; `prh verify` names it.
    Corrupt,
    /// The user or a deadline interrupted a long operation; finished work was kept.
    Interrupted,
    /// A bug in prh; please report it with the message.
    Internal,
}

impl ErrorKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidInput,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Unsupported,
        ErrorKind::Unavailable,
        ErrorKind::Failed,
        ErrorKind::Corrupt,
        ErrorKind::Interrupted,
        ErrorKind::Internal,
    ];

    /// The exit code of a prh command failing with this kind: the one place it is decided
    /// (the CLI exits with it; a server reading a child prh's failure maps it back).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::InvalidInput => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Unsupported => 5,
            ErrorKind::Corrupt => 6,
            ErrorKind::Internal => 70,
            ErrorKind::Unavailable => 75,
            ErrorKind::Interrupted => 130,
        }
    }

    /// The kind whose exit code is `code`.
    pub fn from_exit_code(code: i32) -> Option<ErrorKind> {
        Self::ALL
            .into_iter()
            .find(|k| i32::from(k.exit_code()) == code)
    }

    /// The kind's name in JSON answers (`"not_found"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Failed => "failed",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure the library reports. Each variant names what a user can act on; [`Error::kind`]
/// says which kind it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A feature file that cannot be read as a float matrix (bad header, truncated, wrong rank, ...).
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// An operating-system error on a named path; its kind follows the OS error's.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A permanent error from the catalog's database (the backend's message).
    #[error("catalog: {0}")]
    Catalog(String),
    /// A permanent error from a remote blob store (the client's message; never credentials).
    #[error("blob store: {0}")]
    Storage(String),
    /// A backend is busy or unreachable for now; trying again later can succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The environment failed in a way retrying will not fix (a runtime that cannot start,
    /// an address in use).
    #[error("{0}")]
    Failed(String),
    /// Malformed or out-of-range input; the message names the offending value.
    #[error("{0}")]
    Invalid(String),
    /// A named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what the registry holds.
    #[error("{0}")]
    Conflict(String),
    /// Something prh does not do.
    #[error("{0}")]
    Unsupported(String),
    /// Model pairs a query needs have no complete cached alignment; `command` fills them.
    #[error("{pairs} model pair(s) have no complete cached alignment for {what}")]
    NotCached {
        /// Model pairs with missing cells.
        pairs: usize,
        /// The metric and options the query asked for.
        what: String,
        /// The `prh align …` command that fills them.
        command: String,
    },
    /// A command needs a registry and none was found.
    #[error(
        "no prh registry found (looked at --registry, PRH_REGISTRY, and .prh/ in this directory and its parents)"
    )]
    NoRegistry,
    /// A blob whose bytes do not match its name, or that cannot be parsed.
    #[error("blob {hash} is corrupt: {msg}")]
    CorruptBlob {
        /// The blob's name.
        hash: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Stored data other than one blob is damaged (a bundle, a registry that fails `verify`).
    #[error("{0}")]
    Corrupt(String),
    /// A metric cannot be computed on these inputs (mismatched n, too few samples, ...).
    #[error("metric {metric}: {msg}")]
    Metric {
        /// The metric's name.
        metric: String,
        /// Why it cannot be computed.
        msg: String,
    },
    /// The user interrupted a long operation; finished work has been kept.
    #[error("interrupted")]
    Interrupted,
    /// A deadline stopped an operation (what it was and what was kept).
    #[error("{0}")]
    TimedOut(String),
    /// A broken invariant inside prh.
    #[error("internal error (a bug in prh, please report it): {0}")]
    Internal(String),
    /// Another error with what to do about it.
    #[error("{error}")]
    Hinted {
        /// The error.
        error: Box<Error>,
        /// What to run next.
        hint: String,
    },
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

    /// This error with `hint` (what to run next) attached.
    pub fn hint(self, hint: impl Into<String>) -> Self {
        Error::Hinted {
            error: Box::new(self),
            hint: hint.into(),
        }
    }

    /// An error of `kind` saying `msg` (a failure another prh process reported).
    pub fn of_kind(kind: ErrorKind, msg: String) -> Self {
        match kind {
            ErrorKind::InvalidInput => Error::Invalid(msg),
            ErrorKind::NotFound => Error::NotFound(msg),
            ErrorKind::Conflict => Error::Conflict(msg),
            ErrorKind::Unsupported => Error::Unsupported(msg),
            ErrorKind::Unavailable => Error::Unavailable(msg),
            ErrorKind::Failed => Error::Failed(msg),
            ErrorKind::Corrupt => Error::Corrupt(msg),
            ErrorKind::Interrupted => Error::TimedOut(msg),
            ErrorKind::Internal => Error::Internal(msg),
        }
    }

    /// This error with `prefix: ` before its message (what it happened to), of the same kind.
    pub fn prefixed(self, prefix: &str) -> Self {
        let p = |m: String| format!("{prefix}: {m}");
        match self {
            Error::Catalog(m) => Error::Catalog(p(m)),
            Error::Storage(m) => Error::Storage(p(m)),
            Error::Unavailable(m) => Error::Unavailable(p(m)),
            Error::Failed(m) => Error::Failed(p(m)),
            Error::Invalid(m) => Error::Invalid(p(m)),
            Error::NotFound(m) => Error::NotFound(p(m)),
            Error::Conflict(m) => Error::Conflict(p(m)),
            Error::Unsupported(m) => Error::Unsupported(p(m)),
            Error::Corrupt(m) => Error::Corrupt(p(m)),
            Error::Internal(m) => Error::Internal(p(m)),
            Error::TimedOut(m) => Error::TimedOut(p(m)),
            Error::Metric { metric, msg } => Error::Metric {
                metric,
                msg: p(msg),
            },
            Error::Hinted { error, hint } => Error::Hinted {
                error: Box::new(error.prefixed(prefix)),
                hint,
            },
            Error::Format { path, msg } => Error::Format { path, msg: p(msg) },
            e @ (Error::Io { .. }
            | Error::NotCached { .. }
            | Error::NoRegistry
            | Error::CorruptBlob { .. }
            | Error::Interrupted) => e,
        }
    }

    /// The error beneath any hints attached to it.
    pub fn innermost(&self) -> &Error {
        match self {
            Error::Hinted { error, .. } => error.innermost(),
            e => e,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::Format { .. } | Error::Invalid(_) | Error::Metric { .. } => K::InvalidInput,
            Error::Io { source, .. } => io_kind(source.kind()),
            Error::Catalog(_) | Error::Storage(_) | Error::Failed(_) => K::Failed,
            Error::Unavailable(_) => K::Unavailable,
            Error::NotFound(_) | Error::NoRegistry => K::NotFound,
            Error::Conflict(_) | Error::NotCached { .. } => K::Conflict,
            Error::Unsupported(_) => K::Unsupported,
            Error::CorruptBlob { .. } | Error::Corrupt(_) => K::Corrupt,
            Error::Interrupted | Error::TimedOut(_) => K::Interrupted,
            Error::Internal(_) => K::Internal,
            Error::Hinted { error, .. } => error.kind(),
        }
    }

    /// What to run next, when prh knows.
    pub fn hint_text(&self) -> Option<String> {
        match self {
            Error::Hinted { hint, .. } => Some(hint.clone()),
            Error::NotCached { command, .. } => {
                Some(format!("fill them with `{command}` (or add --compute)"))
            }
            Error::NoRegistry => Some("create one with `prh init`".into()),
            _ => None,
        }
    }

    /// The message followed by its hint: what the CLI prints and Python raises.
    pub fn report(&self) -> String {
        match self.hint_text() {
            Some(h) => format!("{self}\nhint: {h}"),
            None => self.to_string(),
        }
    }
}

/// The kind of an operating-system error.
pub fn io_kind(k: std::io::ErrorKind) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match k {
        Io::NotFound => ErrorKind::NotFound,
        Io::AlreadyExists => ErrorKind::Conflict,
        Io::InvalidInput | Io::InvalidData | Io::UnexpectedEof => ErrorKind::InvalidInput,
        Io::Interrupted => ErrorKind::Interrupted,
        Io::WouldBlock
        | Io::TimedOut
        | Io::ConnectionRefused
        | Io::ConnectionReset
        | Io::ConnectionAborted
        | Io::NotConnected
        | Io::BrokenPipe => ErrorKind::Unavailable,
        Io::Unsupported => ErrorKind::Unsupported,
        _ => ErrorKind::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_keeps_the_kind_and_is_reported_on_its_own_line() {
        let e = Error::NotFound("no model named x".into()).hint("`prh ls models` lists them");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no model named x");
        assert_eq!(
            e.report(),
            "no model named x\nhint: `prh ls models` lists them"
        );
    }

    #[test]
    fn io_errors_take_the_os_errors_kind() {
        let e = |k| Error::io("/x", std::io::Error::from(k)).kind();
        assert_eq!(e(std::io::ErrorKind::NotFound), ErrorKind::NotFound);
        assert_eq!(e(std::io::ErrorKind::PermissionDenied), ErrorKind::Failed);
        assert_eq!(e(std::io::ErrorKind::TimedOut), ErrorKind::Unavailable);
    }
}
