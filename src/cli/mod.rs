//! Command-line interface: one module per command, each with its args struct and a `run`.
//! Errors become one line `error: …` (and a `hint: …` line) on stderr, with an exit code
//! per error kind ([`exit_code`]); usage errors exit with 2.

mod align;
mod args;
mod compare;
mod dataset;
mod demo;
mod export;
mod gc;
mod import;
mod ingest;
mod init;
mod log;
mod ls;
mod matrix;
mod pairs;
mod progress;
mod score;
mod serve;
mod show;
mod sql;
mod status;
mod trajectory;
mod trend;
mod verify;
mod worker;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use prh::error::{ErrorKind, io_kind};
use prh::registry::{self, Registry};

/// prh — a registry for representational alignment research.
///
/// Stores feature matrices of many models (per checkpoint, per layer) on a shared input set,
/// content-addressed by BLAKE3, in a catalog (SQLite by default, PostgreSQL to share) plus
/// immutable blobs (a local directory, or S3); computes the
/// platonic-rep alignment metrics with the official numbers.
///
/// The registry is found from --registry, else $PRH_REGISTRY, else the nearest .prh/
/// directory in this directory or its parents (`prh init` creates one).
///
/// Exit codes (the message says what and where; a `hint:` line, what to run next):
///   0 success · 1 a backend or the system failed (disk, permissions, database) ·
///   2 bad usage or invalid input · 3 not found · 4 conflicts with the registry ·
///   5 unsupported · 6 corrupt data (`prh verify` names it) · 70 internal error (a bug) ·
///   75 temporarily unavailable (a locked catalog, a lost connection: try again) ·
///   130 interrupted (finished work kept).
#[derive(Parser)]
#[command(name = "prh", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Registry directory (holds catalog.db, blobs/, tmp/).
    #[arg(long, global = true, env = "PRH_REGISTRY", value_name = "PATH")]
    registry: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a registry (default: the --registry / PRH_REGISTRY location, else ./.prh).
    Init(init::InitArgs),
    /// Manage datasets: ordered sets of n samples that features are computed on.
    #[command(subcommand)]
    Dataset(dataset::DatasetCmd),
    /// Ingest a feature file (.npy, .npz, .safetensors, platonic-rep .pt): every layer becomes
    /// one representation of the given model checkpoint.
    Ingest(ingest::IngestArgs),
    /// Set performance scores on a checkpoint.
    #[command(subcommand)]
    Score(score::ScoreCmd),
    /// List models, checkpoints, representations, scores or datasets.
    Ls(ls::LsArgs),
    /// Show one representation by (a prefix of) its hash.
    Show(show::ShowArgs),
    /// Align selected model pairs: every missing layer-pair cell is computed and cached, then
    /// each pair's best layer pair is reported.
    Align(align::AlignArgs),
    /// Ingest a new checkpoint and align it against named models in one command.
    Log(log::LogArgs),
    /// Compare two feature files directly (no registry needed).
    Compare(compare::CompareArgs),
    /// Alignment vs. performance over models: correlations, fit, interval, verdict, plot.
    Trend(trend::TrendArgs),
    /// The model × model alignment table (and heatmap).
    Matrix(matrix::MatrixArgs),
    /// One model's alignment across its training checkpoints.
    Trajectory(trajectory::TrajectoryArgs),
    /// Free SQL over the catalog tables, run by polars.
    Query(sql::QueryArgs),
    /// Serve a read-only web dashboard and JSON API over the registry.
    Serve(serve::ServeArgs),
    /// Write the registry (or some models) to one bundle file a colleague can import.
    Export(export::ExportArgs),
    /// Merge bundles (exports, or the parts shards wrote) into this registry, each verified
    /// before anything of it is committed.
    Import(import::ImportArgs),
    /// Re-hash every blob and recompute a sample of cached cells; exit 1 on any problem.
    Verify(verify::VerifyArgs),
    /// Remove unreferenced blobs, stale cache rows and staging leftovers.
    Gc(gc::GcArgs),
    /// Join sweeps split over workers (`prh align --workers N`): claim model pairs with a lease
    /// and fill their cells, on any machine that reaches the catalog and the blobs.
    Worker(worker::WorkerArgs),
    /// Sweeps split over workers: units pending, running (by which worker, since when) and
    /// done; cells per second and time left.
    Status(status::StatusArgs),
    /// Build a demo registry (a synthetic zoo, or real models with --real) and show what it holds.
    Demo(demo::DemoArgs),
}

/// Context passed to every command.
pub struct Ctx {
    registry: Option<PathBuf>,
}

impl Ctx {
    /// Opens the registry the user pointed at, or the nearest `.prh/`.
    pub fn open(&self) -> Result<Registry> {
        Ok(Registry::open(&self.root()?)?)
    }

    /// The directory of the registry the user pointed at, or of the nearest `.prh/`.
    pub fn root(&self) -> Result<PathBuf> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(registry::discover(self.registry.as_deref(), &cwd)?)
    }
}

/// Parses arguments, runs the command, reports errors.
pub fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`prh ls reps | head`), as command-line tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let ctx = Ctx {
        registry: cli.registry,
    };
    let result = match cli.command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Dataset(c) => dataset::run(&ctx, c),
        Command::Ingest(a) => ingest::run(&ctx, a),
        Command::Score(c) => score::run(&ctx, c),
        Command::Ls(a) => ls::run(&ctx, a),
        Command::Show(a) => show::run(&ctx, a),
        Command::Align(a) => align::run(&ctx, a),
        Command::Log(a) => log::run(&ctx, a),
        Command::Compare(a) => compare::run(a),
        Command::Trend(a) => trend::run(&ctx, a),
        Command::Matrix(a) => matrix::run(&ctx, a),
        Command::Trajectory(a) => trajectory::run(&ctx, a),
        Command::Query(a) => sql::run(&ctx, a),
        Command::Serve(a) => serve::run(&ctx, a),
        Command::Export(a) => export::run(&ctx, a),
        Command::Import(a) => import::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Gc(a) => gc::run(&ctx, a),
        Command::Worker(a) => worker::run(&ctx, a),
        Command::Status(a) => status::run(&ctx, a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("{e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            let prh_error = e.chain().find_map(|c| c.downcast_ref::<prh::Error>());
            if let Some(h) = prh_error.and_then(prh::Error::hint_text) {
                msg.push_str("\nhint: ");
                msg.push_str(&h);
            }
            let _ = writeln!(std::io::stderr(), "error: {msg}");
            std::process::ExitCode::from(exit_code(kind_of(&e)))
        }
    }
}

/// The kind of a command's failure: the first prh error in its chain, else an OS error's.
fn kind_of(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain().find_map(|c| {
        c.downcast_ref::<prh::Error>()
            .map(prh::Error::kind)
            .or_else(|| {
                c.downcast_ref::<std::io::Error>()
                    .map(|io| io_kind(io.kind()))
            })
    })
}

/// The exit code of a failure of `kind` ([`ErrorKind::exit_code`], documented in `prh --help`
/// and the README). `None` is a failure prh did not classify.
pub fn exit_code(kind: Option<ErrorKind>) -> u8 {
    kind.map_or(1, ErrorKind::exit_code)
}

/// An invalid-input error (exit code 2) for a problem the CLI finds in its arguments.
pub fn invalid(msg: impl Into<String>) -> anyhow::Error {
    prh::Error::Invalid(msg.into()).into()
}

/// Parses `name=value` score arguments.
pub fn parse_scores(items: &[String]) -> Result<Vec<(String, f64)>> {
    items
        .iter()
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| invalid(format!("score {s:?} is not NAME=VALUE")))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| invalid(format!("score {s:?}: {v:?} is not a number")))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

/// A path for messages.
pub fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_error_kind_has_its_own_documented_exit_code() {
        // Words of the help as one line (clap wraps it at the terminal's width).
        let help = Cli::command().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let code = exit_code(Some(kind));
            assert!(seen.insert(code), "{kind} shares exit code {code}");
            assert!(code != 0, "{kind}");
            assert!(
                help.contains(&format!("{code} ")),
                "{code} ({kind}) not in --help"
            );
        }
        assert_eq!(exit_code(None), 1);
    }
}
