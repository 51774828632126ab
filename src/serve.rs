//! `prh serve`: a read-only web dashboard and JSON API over a registry (any backend).
//!
//! One axum router on a tokio runtime kept inside this module. Every request that reads the
//! registry runs on the blocking pool with a registry taken from a small pool of open ones
//! (a registry is `Send`, not `Sync`). Pages are HTML rendered here with server-side SVG
//! charts; `assets/` holds the one script and style sheet, embedded in the binary.

mod api;
mod auth;
mod guard;
mod memo;
mod pages;
mod params;
mod sqlbox;
mod svg;

pub use sqlbox::SqlBudget;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::{Error, ErrorKind, Result};
use crate::registry::Registry;

/// How the server listens and what it may do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address to listen on (loopback unless a token guards the server).
    pub bind: IpAddr,
    /// 0 picks a free port (printed when the server is up).
    pub port: u16,
    /// Required on every request when set; required to bind a non-loopback address.
    pub token: Option<String>,
    /// Compute missing cells (and nulls for calibrated trends) on request.
    pub compute: bool,
    /// Host names accepted beside the loopback names and the bound address.
    pub allow_hosts: Vec<String>,
    /// How long a compute request waits for the one computation before it gets a 503.
    pub compute_wait: std::time::Duration,
    /// How long a new connection may take to send its first request head.
    pub header_timeout: std::time::Duration,
    /// What one SQL console query may spend.
    pub sql: SqlBudget,
}

/// What every handler shares.
pub(crate) struct App {
    root: PathBuf,
    idle: Mutex<Vec<Registry>>,
    token: Option<String>,
    /// Host names (lower case, no port) a request may name; `None` accepts any.
    hosts: Option<Vec<String>>,
    compute: bool,
    /// How long a compute request waits for the one computation slot.
    compute_wait: std::time::Duration,
    /// One computation at a time: sweeps write the registry ([`Job::one_computation`]).
    computing: Mutex<()>,
    /// Chart results per registry version.
    memo: memo::Memo,
    /// What one SQL console query may spend.
    sql: SqlBudget,
}

impl App {
    /// Runs `f` with an open registry from the pool (opening one when none is idle).
    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut reg = match idle {
            Some(r) => r,
            None => Registry::open(&self.root)?,
        };
        let out = f(&mut reg);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < 16 {
            idle.push(reg);
        }
        out
    }
}

/// An error as the API reports it: a status, the error's kind, the one-line message the CLI
/// would print, its hint and, for missing cells, the `prh align` command that fills them.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    command: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            400..=499 => ErrorKind::InvalidInput,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        ApiError {
            status,
            kind,
            message: message.into(),
            hint: None,
            command: None,
        }
    }
}

/// The HTTP status that answers an error of `kind`: the one place the server decides it.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Failed | ErrorKind::Corrupt | ErrorKind::Interrupted | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let command = match e.innermost() {
            Error::NotCached { command, .. } => Some(command.clone()),
            _ => None,
        };
        ApiError {
            status: status_of(e.kind()),
            kind: e.kind(),
            message: e.to_string(),
            hint: e.hint_text(),
            command,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.message,
            "kind": self.kind.as_str(),
            "hint": self.hint,
            "command": self.command,
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        r
    }
}

/// A request's work on the blocking pool: the server's state, and whether the client still
/// waits for the answer. As the sweep's [`Progress`](crate::sweep::Progress) it stops the
/// computation of a client that left (its finished cells and draws are kept), which would
/// otherwise hold the one computation slot to its end.
pub(crate) struct Job {
    app: Arc<App>,
    left: Arc<AtomicBool>,
}

impl std::ops::Deref for Job {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

impl Job {
    /// Waits (at most `compute_wait`) for the server's one computation slot, while the client
    /// still waits for the answer.
    fn one_computation(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        let start = std::time::Instant::now();
        loop {
            crate::sweep::go_on(self)?;
            match self.computing.try_lock() {
                Ok(g) => return Ok(g),
                Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if start.elapsed() < self.compute_wait => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(Error::Unavailable(format!(
                        "the server is computing another view (waited {} s)",
                        self.compute_wait.as_secs()
                    ))
                    .hint("try again later; the computation in progress is cached when it ends"));
                }
            }
        }
    }
}

impl crate::sweep::Progress for Job {
    fn cancelled(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }
}

/// Marks the job's client gone when the handler's future is dropped before the answer: hyper
/// drops it when the connection closes.
struct Waiting(Arc<AtomicBool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `f` on the blocking pool with a registry; a panic becomes a 500, not a dead server.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&Job, &mut Registry) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let left = Arc::new(AtomicBool::new(false));
    let waiting = Waiting(left.clone());
    let job = Job {
        app: app.clone(),
        left,
    };
    let out = tokio::task::spawn_blocking(move || {
        let mut out = None;
        let r = job.app.with(|reg| {
            out = Some(f(&job, reg));
            Ok(())
        });
        match (r, out) {
            (_, Some(o)) => o,
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no result",
            )),
        }
    })
    .await;
    // Answered: the flag is set, but nothing reads it any more.
    drop(waiting);
    out.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request failed: {e}"),
        )
    })?
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/model/{name}", get(pages::model))
        .route("/trend", get(pages::trend))
        .route("/matrix", get(pages::matrix))
        .route("/pair", get(pages::pair))
        .route("/trajectory", get(pages::trajectory))
        .route("/sql", get(pages::sql))
        .route("/assets/{name}", get(asset))
        .route("/api/version", get(api::version))
        .route("/api/overview", get(api::overview))
        .route("/api/models", get(api::models))
        .route("/api/model/{name}", get(api::model))
        .route("/api/trend", get(api::trend))
        .route("/api/matrix", get(api::matrix))
        .route("/api/layers", get(api::layers))
        .route("/api/trajectory", get(api::trajectory))
        .route("/api/sql", get(api::sql))
        .route("/api/sql.csv", get(api::sql_csv))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::check,
        ))
        .with_state(app)
}

/// The embedded assets, by exact name: nothing else is served (no path is ever joined).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("serve/assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("serve/assets/style.css"),
    ),
];

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.0 == name) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no asset {name:?}")).into_response(),
    }
}

/// Serves the registry at `root` until Ctrl-C; `ready` gets the bound address first.
pub fn serve(root: PathBuf, opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if let Some(t) = opts.token.as_deref() {
        auth::check_token(t).map_err(Error::Invalid)?;
    }
    if !opts.bind.is_loopback() && opts.token.is_none() {
        return Err(Error::Invalid(format!(
            "binding {} exposes the registry beyond this machine: give --token (or PRH_TOKEN) so every request must carry it",
            opts.bind
        )));
    }
    // Open once up front: a missing or damaged registry fails here, not on the first request.
    let reg = Registry::open(&root)?;
    let app = Arc::new(App {
        root,
        idle: Mutex::new(vec![reg]),
        hosts: auth::accepted_hosts(opts.bind, opts.token.is_some(), &opts.allow_hosts),
        token: opts.token,
        compute: opts.compute,
        compute_wait: opts.compute_wait,
        sql: opts.sql,
        computing: Mutex::new(()),
        memo: memo::Memo::default(),
    });
    // Timers too: the listener backs off with a sleep when accept fails (out of file
    // descriptors), which panics on a runtime without them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the server runtime: {e}")))?;
    rt.block_on(async move {
        let addr = SocketAddr::new(opts.bind, opts.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            let why = format!("cannot listen on {addr}: {e}");
            match e.kind() {
                std::io::ErrorKind::AddrInUse => Error::Conflict(why)
                    .hint("another process serves on that port: give --port another one"),
                _ => Error::Failed(why),
            }
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Failed(format!("cannot read the bound address: {e}")))?;
        ready(local);
        axum::serve(
            guard::Guarded::new(listener, opts.header_timeout),
            router(app),
        )
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::Failed(format!("server stopped: {e}")))
    })
}
