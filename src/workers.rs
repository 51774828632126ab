//! Sweeps split over many workers. `prh align --workers N` enters the sweep's model pairs that
//! lack cells as units in the catalog; `prh worker` processes — on this machine or any that
//! reaches the catalog and the blobs — claim units with a lease, fill their cells through the
//! usual sweep (which finds what is cached and stores what it computes in one transaction per
//! pair), and mark them done. A worker renews its lease while it computes; a worker that dies
//! stops renewing, its lease runs out, and the next claim takes the unit again. Cells are keyed
//! by content, so a unit redone after a death computes only what was never committed.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalog::{CheckpointId, NewUnit, Unit, UnitRow};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::MetricSpec;
use crate::metrics::prep::Prep;
use crate::registry::Registry;
use crate::sweep::{self, DerivedCache, Progress, Selector, SweepRequest};

mod stop;
pub use stop::stop_on_signals;

/// How long a claim holds without renewal, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// What a worker needs to fill a unit's cells (stored with the sweep as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitSpec {
    pub dataset: Option<String>,
    pub pool: Option<String>,
    pub specs: Vec<MetricSpec>,
    pub prep: Prep,
    pub mem_budget: usize,
    /// The sweep's x and y models, so a worker resolves their checkpoints once per sweep
    /// (empty in sweeps entered by an older prh: then once per unit).
    #[serde(default)]
    pub x_models: Vec<String>,
    #[serde(default)]
    pub y_models: Vec<String>,
}

/// How a sweep is cut into units.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// A pair missing more cells than this is entered as blocks of its x layers (0: never).
    pub unit_cells: usize,
    /// A large-n layer with more rows than this has its kNN graph searched in blocks of about
    /// this many rows, each a unit, before the pairs (0: never).
    pub graph_rows: usize,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            unit_cells: 4096,
            graph_rows: 65_536,
        }
    }
}

/// Enters the model pairs of `req` that lack cells as a sweep of units; `None` when every
/// cell is cached already. A pair missing more than `split.unit_cells` cells is entered as
/// several units, blocks of its x layers, so that many workers share it; a large layer's kNN
/// graph, as blocks of rows ([`sweep::graph_blocks`]), entered first (claimed before any
/// pair of the sweep).
pub fn plan(
    reg: &mut Registry,
    req: &SweepRequest,
    label: &str,
    split: Split,
) -> Result<Option<i64>> {
    let missing = sweep::missing_pairs(reg, req)?;
    if missing.is_empty() {
        return Ok(None);
    }
    let spec = UnitSpec {
        dataset: req.dataset.clone(),
        pool: req.pool.clone(),
        specs: req.specs.clone(),
        prep: req.prep,
        mem_budget: req.mem_budget,
        x_models: sweep::select_models(reg, &req.x)?,
        y_models: sweep::select_models(reg, &req.y)?,
    };
    let mut units: Vec<NewUnit> = sweep::graph_blocks(reg, req, &missing, split.graph_rows)?
        .into_iter()
        .map(|b| NewUnit {
            x: b.checkpoint,
            y: b.checkpoint,
            label: b.label,
            cells: 0,
            x_layers: Some((b.layer_id, b.layer_id)),
            rows: Some(b.rows),
        })
        .collect();
    for m in &missing {
        for (x_layers, cells) in blocks(m, split.unit_cells) {
            units.push(NewUnit {
                x: m.x,
                y: m.y,
                label: match x_layers {
                    Some((a, b)) => format!("{}, x layers {a}–{b}", m.label),
                    None => m.label.clone(),
                },
                cells: cells as i64,
                x_layers,
                rows: None,
            });
        }
    }
    let json = serde_json::to_string(&spec).expect("a unit spec serialises");
    Ok(Some(reg.catalog.create_sweep(&json, label, &units)?))
}

/// A pair's units and their missing cells: the whole pair when it misses at most `unit_cells`
/// (or `unit_cells` is 0), else contiguous blocks of its x layers (stored indices, inclusive)
/// each missing at most `unit_cells` cells (at least one layer each), layers missing nothing
/// left out at a block's ends.
fn blocks(p: &sweep::SweepPair, unit_cells: usize) -> Vec<(Option<(i64, i64)>, usize)> {
    if unit_cells == 0 || p.cells <= unit_cells {
        return vec![(None, p.cells)];
    }
    let mut out = Vec::new();
    let mut open: Option<(i64, i64, usize)> = None;
    for (&id, &miss) in p.x_layer_ids.iter().zip(&p.missing_by_x) {
        if miss == 0 {
            continue;
        }
        open = match open {
            Some((a, b, c)) if c + miss > unit_cells => {
                out.push((Some((a, b)), c));
                Some((id, id, miss))
            }
            Some((a, _, c)) => Some((a, id, c + miss)),
            None => Some((id, id, miss)),
        };
    }
    out.extend(open.map(|(a, b, c)| (Some((a, b)), c)));
    out
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// This worker's name in the catalog (`host:pid` by default).
    pub name: String,
    /// Only units of this sweep.
    pub sweep: Option<i64>,
    /// Exit when no unit is left instead of waiting for more.
    pub once: bool,
    /// How long a claim holds without renewal (renewed every third of it).
    pub lease: Duration,
    /// How long to wait between looks for work when there is none (without --once).
    pub poll: Duration,
    /// Once told to stop ([`stop_on_signals`]), how long the unit in hand may take to finish
    /// before it is given back for another worker.
    pub grace: Duration,
}

/// What a worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkReport {
    pub units: usize,
    pub cells: u64,
}

/// The default worker name: this host and process, and the scheduler's array index when there
/// is one (`node7:4242:slurm-1234_3` for task 3 of Slurm array job 1234, `pod:1:k8s-index-3`
/// for an Indexed Job's completion index 3), so `prh status` shows which task holds what.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let task = array_task(|k| std::env::var(k).ok());
    format!("{host}:{}{task}", std::process::id())
}

/// The scheduler's array index as a name suffix, from the environment `var` reads.
fn array_task(var: impl Fn(&str) -> Option<String>) -> String {
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    match (
        var("SLURM_ARRAY_JOB_ID"),
        var("SLURM_ARRAY_TASK_ID"),
        var("JOB_COMPLETION_INDEX"),
    ) {
        (Some(job), Some(task), _) => format!(":slurm-{job}_{task}"),
        (_, _, Some(index)) => format!(":k8s-index-{index}"),
        _ => String::new(),
    }
}

/// The sweep's progress, and whether to stop computing: once a stop was asked for and the
/// grace has run out (or the caller's own progress says so).
struct Draining<'a> {
    inner: &'a dyn Progress,
    grace: Duration,
}

impl Progress for Draining<'_> {
    fn start(&self, total: u64) {
        self.inner.start(total);
    }
    fn advance(&self, cells: u64) {
        self.inner.advance(cells);
    }
    fn message(&self, msg: &str) {
        self.inner.message(msg);
    }
    fn cancelled(&self) -> bool {
        stop::grace_over(self.grace) || self.inner.cancelled()
    }
}

/// Claims and computes units until none is left (`once`) or forever.
pub fn work(reg: &mut Registry, opts: &WorkOptions, progress: &dyn Progress) -> Result<WorkReport> {
    let lease_ms = opts.lease.as_millis() as i64;
    let mut report = WorkReport::default();
    let renewer = Renewer::start(&reg.root, opts);
    let draining = Draining {
        inner: progress,
        grace: opts.grace,
    };
    // What the worker keeps for the sweep being worked on.
    let mut derived: Option<SweepState> = None;
    loop {
        if stop::requested() {
            eprintln!("worker {}: stopping as asked (a signal)", opts.name);
            renewer.stop();
            return Ok(report);
        }
        let claimed = retrying(|| reg.catalog.claim_unit(opts.sweep, &opts.name, lease_ms))?;
        let Some(unit) = claimed else {
            // With --once, a unit another worker holds is still work left: if that worker
            // dies, its lease runs out and this one takes the unit.
            if opts.once && !retrying(|| others_running(reg, opts.sweep))? {
                renewer.stop();
                return Ok(report);
            }
            let wait = if opts.once {
                opts.poll.min(Duration::from_millis(500))
            } else {
                opts.poll
            };
            // In short steps, so that a stop is seen at once.
            let until = std::time::Instant::now() + wait;
            while std::time::Instant::now() < until && !stop::requested() {
                std::thread::sleep(Duration::from_millis(50).min(wait));
            }
            continue;
        };
        progress.message(&unit.label);
        renewer.hold(Some((unit.sweep, unit.idx)));
        let done = retrying(|| compute(reg, &unit, &mut derived, &draining));
        renewer.hold(None);
        if stop::requested() && matches!(&done, Err(e) if e.kind() == ErrorKind::Interrupted) {
            // The grace ran out: the unit goes back to the catalog now, not when the lease ends.
            let given_back =
                retrying(|| reg.catalog.release_unit(unit.sweep, unit.idx, &opts.name))?;
            eprintln!(
                "worker {}: stopping as asked (a signal): unit {} of sweep {} {} after {:.0} s of grace",
                opts.name,
                unit.idx,
                unit.sweep,
                if given_back {
                    "given back for another worker"
                } else {
                    "was already another worker's"
                },
                opts.grace.as_secs_f64()
            );
            renewer.stop();
            return Ok(report);
        }
        done?;
        if retrying(|| reg.catalog.finish_unit(unit.sweep, unit.idx, &opts.name))? {
            report.units += 1;
            report.cells += unit.cells as u64;
        } else {
            // Stopped or cut off past the lease: another worker took the unit over. The cells
            // stored here are the same cells (the cache's key), so nothing is lost or doubled.
            eprintln!(
                "worker {}: lost unit {} of sweep {} (its lease ran out and another worker took it over); its cells are stored, the unit is theirs",
                opts.name, unit.idx, unit.sweep
            );
        }
    }
}

/// Waits between attempts when the catalog fails (a restarted or unreachable server): 0.5 s,
/// doubling, about two minutes in all.
const BACKOFF: [u64; 8] = [500, 1000, 2000, 4000, 8000, 16000, 30000, 60000];

/// Runs `f`, again after each wait of [`BACKOFF`] while it fails with a transient error
/// ([`ErrorKind::Unavailable`]: a lost connection, a locked catalog; the pool reconnects on its
/// own). Permanent errors (a violated constraint, a refused schema) and the last transient
/// one are returned at once.
fn retrying<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut waits = BACKOFF.iter();
    loop {
        match f() {
            Err(e) if e.kind() == ErrorKind::Unavailable => match waits.next() {
                Some(&ms) => {
                    eprintln!("worker: {e}; trying again in {:.1} s", ms as f64 / 1000.0);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Whether any unit (of `sweep`, or of any sweep) is held by a worker.
fn others_running(reg: &Registry, sweep: Option<i64>) -> Result<bool> {
    let (_, units) = reg.catalog.sweep_rows()?;
    Ok(units
        .iter()
        .any(|u| u.state == "running" && sweep.is_none_or(|s| u.sweep == s)))
}

/// What a worker keeps across the units of one sweep: derived data and preparations of the
/// checkpoints met, and the sweep's checkpoints, resolved once.
struct SweepState {
    sweep: i64,
    cache: DerivedCache,
    resolved: Option<(Vec<sweep::CheckpointLayers>, Vec<sweep::CheckpointLayers>)>,
}

/// Fills one unit's cells: the usual sweep, restricted to its pair, without statistics,
/// deriving through the worker's cache for this sweep.
fn compute(
    reg: &mut Registry,
    unit: &Unit,
    derived: &mut Option<SweepState>,
    progress: &dyn Progress,
) -> Result<()> {
    let spec: UnitSpec = serde_json::from_str(&unit.spec).map_err(|e| {
        Error::Unsupported(format!(
            "sweep {} holds a unit spec this prh cannot read ({e}); was it written by a newer prh?",
            unit.sweep
        ))
    })?;
    let request = |x: Vec<String>, y: Vec<String>| SweepRequest {
        x: Selector::Names(x),
        y: Selector::Names(y),
        dataset: spec.dataset.clone(),
        pool: spec.pool.clone(),
        all_checkpoints: true,
        x_checkpoint: None,
        specs: spec.specs.clone(),
        prep: spec.prep,
        mem_budget: spec.mem_budget,
        null: 0,
        bootstrap: 0,
        seed: 0,
        alpha: crate::stats::DEFAULT_ALPHA,
        reduce: Default::default(),
    };
    if derived.as_ref().is_none_or(|d| d.sweep != unit.sweep) {
        *derived = Some(SweepState {
            sweep: unit.sweep,
            cache: DerivedCache::new(spec.mem_budget),
            resolved: None,
        });
    }
    let state = derived.as_mut().expect("set above");
    let pair = (unit.x, unit.y);
    if spec.x_models.is_empty() || spec.y_models.is_empty() {
        // A sweep entered by an older prh: resolve the unit's two models.
        let req = request(
            vec![model_of(reg, unit, unit.x)?],
            vec![model_of(reg, unit, unit.y)?],
        );
        return sweep::fill_pair(reg, &req, pair, unit.x_layers, &mut state.cache, progress);
    }
    let req = request(spec.x_models.clone(), spec.y_models.clone());
    let known = |r: &(Vec<sweep::CheckpointLayers>, Vec<sweep::CheckpointLayers>)| {
        r.0.iter().any(|c| c.checkpoint_id == unit.x)
            && r.1.iter().any(|c| c.checkpoint_id == unit.y)
    };
    // Resolved once per sweep, and again when a unit names a checkpoint that was not there.
    if !state.resolved.as_ref().is_some_and(known) {
        state.resolved = Some(sweep::resolve_request(reg, &req)?);
    }
    let (xs, ys) = state.resolved.as_ref().expect("set above");
    if let Some(rows) = unit.rows {
        let Some((layer, _)) = unit.x_layers else {
            return Err(Error::Invalid(format!(
                "sweep {} unit {}: a graph block that names no layer",
                unit.sweep, unit.idx
            )));
        };
        let checkpoints: Vec<&sweep::CheckpointLayers> = xs.iter().chain(ys).collect();
        let at = (unit.x, layer);
        return sweep::fill_graph_block(
            reg,
            &req,
            &checkpoints,
            at,
            rows,
            &mut state.cache,
            progress,
        );
    }
    sweep::fill_resolved(
        reg,
        &req,
        (xs, ys),
        pair,
        unit.x_layers,
        &mut state.cache,
        progress,
    )
}

/// The model of checkpoint `id` of `unit`'s pair.
fn model_of(reg: &Registry, unit: &Unit, id: CheckpointId) -> Result<String> {
    reg.catalog
        .checkpoints(None)?
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.model)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "sweep {} unit {}: checkpoint {id} is no longer in the registry",
                unit.sweep, unit.idx
            ))
        })
}

/// A thread renewing the lease of the unit the worker holds, every third of the lease, on a
/// catalog connection of its own (opened once), until stopped.
struct Renewer {
    held: std::sync::Arc<std::sync::Mutex<Option<(i64, i64)>>>,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Renewer {
    fn start(root: &Path, opts: &WorkOptions) -> Renewer {
        let held = std::sync::Arc::new(std::sync::Mutex::new(None::<(i64, i64)>));
        let (stop, stopped) = mpsc::channel::<()>();
        let (root, name, lease) = (root.to_path_buf(), opts.name.clone(), opts.lease);
        let unit = held.clone();
        let thread = std::thread::spawn(move || {
            let mut reg = None;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(lease / 3) {
                let Some((sweep, idx)) = *unit.lock().unwrap_or_else(|e| e.into_inner()) else {
                    continue;
                };
                if reg.is_none() {
                    reg = Registry::open(&root).ok();
                }
                // A failed renewal is tried again at the next tick; the lease covers two misses.
                if let Some(r) = &reg {
                    let _ = r
                        .catalog
                        .renew_lease(sweep, idx, &name, lease.as_millis() as i64);
                }
            }
        });
        Renewer { held, stop, thread }
    }

    /// Renews `unit` from now on (`None`: nothing).
    fn hold(&self, unit: Option<(i64, i64)>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = unit;
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// One sweep as `prh status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SweepStatus {
    pub sweep: i64,
    pub label: String,
    pub units: usize,
    pub pending: usize,
    pub running: usize,
    pub done: usize,
    pub cells: i64,
    pub cells_done: i64,
    /// Cells per second since the first claim (done units only); `None` before any is done.
    pub cells_per_second: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    /// Rows of the sweep's kNN graph blocks (0 when it has none), and of those done.
    pub graph_rows: i64,
    pub graph_rows_done: i64,
    /// Graph rows per second since the first block was claimed (done blocks only); `None`
    /// before one is done.
    pub graph_rows_per_second: Option<f64>,
    /// Seconds left for the graph blocks at that rate (the pairs come after them, and have no
    /// rate until one is done).
    pub graph_eta_seconds: Option<f64>,
    /// The running units: who holds them and since when.
    pub running_units: Vec<RunningUnit>,
    /// Who finished the done units, by worker name (sorted).
    pub workers: Vec<WorkerShare>,
}

/// The units and cells one worker finished in a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerShare {
    pub worker: String,
    pub units_done: usize,
    pub cells_done: i64,
}

/// The done units of one sweep, counted per worker.
fn shares(units: &[&UnitRow]) -> Vec<WorkerShare> {
    let mut by: std::collections::BTreeMap<&str, (usize, i64)> = Default::default();
    for u in units.iter().filter(|u| u.state == "done") {
        let e = by.entry(u.worker.as_deref().unwrap_or("")).or_default();
        e.0 += 1;
        e.1 += u.cells;
    }
    by.into_iter()
        .map(|(w, (units_done, cells_done))| WorkerShare {
            worker: w.to_string(),
            units_done,
            cells_done,
        })
        .collect()
}

/// A running unit.
#[derive(Debug, Clone, Serialize)]
pub struct RunningUnit {
    pub unit: i64,
    pub pair: String,
    pub worker: String,
    pub running_seconds: f64,
    /// Seconds until its lease runs out (negative: expired, the next claim takes it).
    pub lease_seconds_left: f64,
    pub attempts: i64,
}

/// The work of `units` measured by `work` (cells, or a graph block's rows): in all, done, and
/// per second from the first claim to the last finish among them (`None` before any is done).
fn progress(units: &[&UnitRow], work: impl Fn(&UnitRow) -> i64) -> (i64, i64, Option<f64>) {
    let total = units.iter().map(|u| work(u)).sum();
    let done: i64 = units
        .iter()
        .filter(|u| u.state == "done")
        .map(|u| work(u))
        .sum();
    let first = units.iter().filter_map(|u| u.started_ms).min();
    let last = units.iter().filter_map(|u| u.finished_ms).max();
    let rate = match (first, last) {
        (Some(a), Some(b)) if b > a && done > 0 => Some(done as f64 / ((b - a) as f64 / 1000.0)),
        _ => None,
    };
    (total, done, rate)
}

/// A sweep's progress ([`progress`]) in cells over its pair units, and in rows over its graph
/// blocks, which have no cells. They are timed apart: the blocks all run before the pairs.
fn sweep_progress(units: &[&UnitRow]) -> [(i64, i64, Option<f64>); 2] {
    let (blocks, pairs): (Vec<&UnitRow>, Vec<&UnitRow>) =
        units.iter().partition(|u| u.rows.is_some());
    [
        progress(&pairs, |u| u.cells),
        progress(&blocks, |u| u.rows.map_or(0, |(a, b)| b - a)),
    ]
}

/// Every sweep's progress, newest last.
pub fn status(reg: &Registry) -> Result<Vec<SweepStatus>> {
    let (sweeps, units) = reg.catalog.sweep_rows()?;
    let now = reg.catalog.now_ms()?;
    Ok(sweeps
        .into_iter()
        .map(|s| {
            let mine: Vec<&UnitRow> = units.iter().filter(|u| u.sweep == s.id).collect();
            let count = |st: &str| mine.iter().filter(|u| u.state == st).count();
            let [
                (cells, cells_done, rate),
                (graph_rows, graph_rows_done, graph_rate),
            ] = sweep_progress(&mine);
            SweepStatus {
                sweep: s.id,
                label: s.label,
                units: mine.len(),
                pending: count("pending"),
                running: count("running"),
                done: count("done"),
                cells,
                cells_done,
                cells_per_second: rate,
                eta_seconds: rate.map(|r| (cells - cells_done) as f64 / r),
                graph_rows,
                graph_rows_done,
                graph_rows_per_second: graph_rate,
                graph_eta_seconds: graph_rate.map(|r| (graph_rows - graph_rows_done) as f64 / r),
                running_units: mine
                    .iter()
                    .filter(|u| u.state == "running")
                    .map(|u| RunningUnit {
                        unit: u.idx,
                        pair: u.label.clone(),
                        worker: u.worker.clone().unwrap_or_default(),
                        running_seconds: u.started_ms.map_or(0.0, |t| (now - t) as f64 / 1000.0),
                        lease_seconds_left: u
                            .lease_until
                            .map_or(0.0, |t| (t - now) as f64 / 1000.0),
                        attempts: u.attempts,
                    })
                    .collect(),
                workers: shares(&mine),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Graph blocks have no cells; their progress is counted in rows, at the rate of the done
    /// blocks from the first claim.
    #[test]
    fn graph_blocks_progress_in_rows() {
        let unit =
            |rows: Option<(i64, i64)>, cells, state: &str, times: (Option<i64>, Option<i64>)| {
                UnitRow {
                    sweep: 1,
                    idx: 0,
                    label: String::new(),
                    cells,
                    state: state.into(),
                    worker: None,
                    lease_until: None,
                    started_ms: times.0,
                    finished_ms: times.1,
                    attempts: 0,
                    rows,
                }
            };
        let units = [
            unit(Some((0, 512)), 0, "done", (Some(1_000), Some(2_000))),
            unit(Some((512, 1024)), 0, "done", (Some(1_000), Some(3_000))),
            unit(Some((1024, 2048)), 0, "running", (Some(2_000), None)),
            unit(None, 40, "done", (Some(3_000), Some(4_000))),
            unit(None, 40, "pending", (None, None)),
        ];
        let [cells, rows] = sweep_progress(&units.iter().collect::<Vec<_>>());
        // 1,024 rows done in the 2 s from the first claim to the last finish: 512 rows/s.
        assert_eq!(rows, (2048, 1024, Some(512.0)));
        // 40 cells in the pair's own second: the blocks' times are not the pairs'.
        assert_eq!(cells, (80, 40, Some(40.0)));
    }

    #[test]
    fn a_worker_name_carries_the_schedulers_array_index() {
        fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
            move |k| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        }
        let slurm = &[("SLURM_ARRAY_JOB_ID", "1234"), ("SLURM_ARRAY_TASK_ID", "3")];
        assert_eq!(array_task(env(slurm)), ":slurm-1234_3");
        assert_eq!(
            array_task(env(&[("JOB_COMPLETION_INDEX", "7")])),
            ":k8s-index-7"
        );
        // A Slurm job that is not an array, and empty values: no suffix.
        assert_eq!(array_task(env(&[("SLURM_ARRAY_JOB_ID", "1234")])), "");
        assert_eq!(array_task(env(&[("JOB_COMPLETION_INDEX", "")])), "");
    }

    #[test]
    fn a_heavy_pair_is_split_into_blocks_of_x_layers() {
        let pair = |missing_by_x: Vec<usize>| sweep::SweepPair {
            x: CheckpointId(1),
            y: CheckpointId(2),
            label: "a × b".into(),
            x_model: "a".into(),
            y_model: "b".into(),
            cells: missing_by_x.iter().sum(),
            total: 0,
            x_layer_ids: (10..10 + missing_by_x.len() as i64).collect(),
            missing_by_x,
        };
        // Fits, or no limit: one unit of the whole pair.
        assert_eq!(blocks(&pair(vec![4; 6]), 24), vec![(None, 24)]);
        assert_eq!(blocks(&pair(vec![4; 6]), 0), vec![(None, 24)]);
        // 6 layers × 4 cells under a limit of 10: blocks of two layers.
        assert_eq!(
            blocks(&pair(vec![4; 6]), 10),
            vec![
                (Some((10, 11)), 8),
                (Some((12, 13)), 8),
                (Some((14, 15)), 8)
            ]
        );
        // Layers missing nothing are left out at the ends; one layer over the limit is a
        // block of its own; every missing cell is in exactly one block.
        let p = pair(vec![0, 3, 12, 0, 2, 2, 0]);
        let b = blocks(&p, 5);
        assert_eq!(
            b,
            vec![
                (Some((11, 11)), 3),
                (Some((12, 12)), 12),
                (Some((14, 15)), 4)
            ]
        );
        assert_eq!(b.iter().map(|u| u.1).sum::<usize>(), p.cells);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let mut calls = 0;
        let r: Result<()> = retrying(|| {
            calls += 1;
            Err(Error::Conflict("catalog: UNIQUE constraint failed".into()))
        });
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Conflict);
        assert_eq!(calls, 1, "a permanent failure was retried");

        let mut calls = 0;
        let r = retrying(|| {
            calls += 1;
            if calls < 2 {
                Err(Error::Unavailable("catalog: connection reset".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 2, "a transient failure was not retried");
    }
}
