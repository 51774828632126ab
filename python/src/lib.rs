//! `prh._prh`: the compiled core of the Python package. Thin: every function opens the
//! registry, calls the same library code as the CLI with the GIL released, and answers in the
//! CLI's `--format json` shapes; `prh/__init__.py` turns them into polars DataFrames.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use serde_json::{Value, json};

use prh::catalog::RepFilter;
use prh::error::Error as PrhError;
use prh::formats::{self, Buffer, TensorSpec};
use prh::layers::{self, Reduce};
use prh::matrix::DType;
use prh::metrics::{ClampRule, MetricSpec, Prep};
use prh::registry::{self, IngestRequest, Registry};
use prh::samples::SampleIds;
use prh::sweep::{self, Progress, Selector, SweepRequest};
use prh::views::{CellValue, NullSpec, TrendQuery, View};

// The exceptions live in module `prh` (the package re-exports them), so an error raised in a
// multiprocessing or DataLoader worker pickles and reaches the parent as what it is.
create_exception!(
    prh,
    Error,
    PyException,
    "Any error prh reports (the base class)."
);
create_exception!(
    prh,
    InvalidInput,
    Error,
    "Bad input: a malformed array or file, NaN/Inf, wrong shapes, an unknown metric, an out-of-range option (the message names the value)."
);
create_exception!(
    prh,
    NotFound,
    Error,
    "A named model, checkpoint, dataset, representation or registry does not exist."
);
create_exception!(
    prh,
    Conflict,
    Error,
    "The request conflicts with what the registry holds (a name taken, a dataset of another n)."
);
create_exception!(
    prh,
    NotCached,
    Conflict,
    "Cached alignments a query needs are missing; the message names the `prh align` command (or pass compute=True)."
);
create_exception!(
    prh,
    Unsupported,
    Error,
    "A well-formed request prh does not do (a URL scheme, a newer catalog schema)."
);
create_exception!(
    prh,
    Unavailable,
    Error,
    "A backend is busy or unreachable for now (a locked catalog, a lost connection); trying again can succeed."
);
create_exception!(
    prh,
    BackendError,
    Error,
    "A backend or the operating system failed in a way retrying will not fix (disk, permissions, database)."
);
create_exception!(
    prh,
    Corrupt,
    Error,
    "Stored data does not match its hash or cannot be parsed; `prh verify` names it."
);
create_exception!(
    prh,
    Interrupted,
    Error,
    "A deadline stopped the operation; nothing of it was committed. (Ctrl-C raises KeyboardInterrupt.)"
);
create_exception!(
    prh,
    InternalError,
    Error,
    "A bug in prh; please report it with the message."
);

/// The Python exception for a prh error: the one place a kind becomes a class. The message is
/// the CLI's, with its hint line.
fn to_py(e: PrhError) -> PyErr {
    use prh::error::ErrorKind as K;
    let msg = e.report();
    match e.kind() {
        K::InvalidInput => InvalidInput::new_err(msg),
        K::NotFound => NotFound::new_err(msg),
        K::Conflict if matches!(e.innermost(), PrhError::NotCached { .. }) => {
            NotCached::new_err(msg)
        }
        K::Conflict => Conflict::new_err(msg),
        K::Unsupported => Unsupported::new_err(msg),
        K::Unavailable => Unavailable::new_err(msg),
        K::Failed => BackendError::new_err(msg),
        K::Corrupt => Corrupt::new_err(msg),
        K::Interrupted if matches!(e.innermost(), PrhError::Interrupted) => {
            PyKeyboardInterrupt::new_err(msg)
        }
        K::Interrupted => Interrupted::new_err(msg),
        K::Internal => InternalError::new_err(msg),
    }
}

fn invalid(msg: impl Into<String>) -> PrhError {
    PrhError::Invalid(msg.into())
}

type R<T> = Result<T, PrhError>;

/// The process that imported the module. A process forked from it after prh did work there (a
/// DataLoader worker, multiprocessing's "fork" start method) has none of its thread pools'
/// threads.
static IMPORTED_IN: OnceLock<u32> = OnceLock::new();

/// Runs `f` with the GIL released: on rayon's global pool, or, in a forked child, on a pool
/// of the child's own (the global pool's threads stayed in the parent: work handed to them
/// would wait for ever).
fn unlocked<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.allow_threads(move || {
        if IMPORTED_IN
            .get()
            .is_none_or(|&pid| pid == std::process::id())
        {
            f()
        } else {
            child_pool().install(f)
        }
    })
}

/// The thread pool of a forked child (one per process id).
fn child_pool() -> Arc<rayon::ThreadPool> {
    static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut held = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, pool)) = held.as_ref()
        && *p == pid
    {
        return pool.clone();
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .build()
            .expect("a thread pool for a forked process"),
    );
    *held = Some((pid, pool.clone()));
    pool
}

/// Runs `f` on an open registry with the GIL released.
fn with_reg<T: Send>(
    py: Python<'_>,
    root: &str,
    f: impl FnOnce(&mut Registry) -> R<T> + Send,
) -> PyResult<T> {
    let root = PathBuf::from(root);
    unlocked(py, move || {
        let mut reg = Registry::open(&root)?;
        f(&mut reg)
    })
    .map_err(to_py)
}

fn json_out<T: serde::Serialize>(v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| invalid(format!("cannot serialise the result: {e}")))
}

fn parse(opts: &str) -> R<Value> {
    serde_json::from_str(opts).map_err(|e| invalid(format!("bad options: {e}")))
}

fn s<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str)
}

fn u(o: &Value, key: &str, default: u64) -> R<u64> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(format!("{key} must be a non-negative integer, got {v}"))),
    }
}

fn need<'a>(o: &'a Value, key: &str) -> R<&'a str> {
    s(o, key).ok_or_else(|| invalid(format!("give {key}")))
}

/// The metric, its parameters, preparation and layer aggregate from options.
fn view(o: &Value) -> R<View> {
    let spec = MetricSpec::from_options(s(o, "metric").unwrap_or("mutual_knn"), &|name| {
        o.get(name).and_then(|v| match v {
            Value::Null => None,
            Value::String(t) => Some(t.clone()),
            v => Some(v.to_string()),
        })
    })?;
    let reduce: Reduce = s(o, "reduce").unwrap_or("max").parse()?;
    let rule = match s(o, "clamp_rule").unwrap_or("exact") {
        "exact" => ClampRule::Exact,
        "sample-mean" => ClampRule::SampleMean,
        other => {
            return Err(invalid(format!(
                "clamp_rule must be \"exact\" or \"sample-mean\", got {other:?}"
            )));
        }
    };
    let prep = if o.get("prep") == Some(&Value::Bool(false)) {
        Prep::NONE
    } else {
        Prep {
            rule,
            ..Prep::OFFICIAL
        }
    };
    Ok(View { spec, prep, reduce })
}

/// Finds the registry like the CLI: the given path, else $PRH_REGISTRY, else the nearest .prh/.
#[pyfunction]
#[pyo3(signature = (path=None))]
fn discover(path: Option<PathBuf>) -> PyResult<String> {
    let explicit = path.or_else(|| std::env::var_os("PRH_REGISTRY").map(PathBuf::from));
    let cwd = std::env::current_dir().map_err(|e| Error::new_err(e.to_string()))?;
    let root = registry::discover(explicit.as_deref(), &cwd).map_err(to_py)?;
    // Open it once: no registry there is NotFound, a damaged one the error it is.
    if !root.join("catalog.db").exists() && !root.join(prh::location::CONFIG).exists() {
        return Err(NotFound::new_err(format!(
            "{} is not a prh registry (no catalog.db or {}); create one with prh.init(path) or `prh init`",
            root.display(),
            prh::location::CONFIG
        )));
    }
    Registry::open(&root).map_err(to_py)?;
    Ok(root.display().to_string())
}

/// Creates a registry at `path` (catalog and blobs where given, as URLs).
#[pyfunction]
#[pyo3(signature = (path, catalog=None, blobs=None))]
fn init(
    py: Python<'_>,
    path: PathBuf,
    catalog: Option<String>,
    blobs: Option<String>,
) -> PyResult<String> {
    unlocked(py, || {
        let loc = prh::location::Locations { catalog, blobs };
        Registry::init_at(&path, &loc).map(|r| r.root.display().to_string())
    })
    .map_err(to_py)
}

/// Keeps the Python object that owns an array's memory alive while prh reads it in place.
struct Owner(#[allow(dead_code)] PyObject);

/// One array handed over from Python: address, bytes spanned, shape, strides in elements,
/// dtype name and the object owning the memory.
type ArrayIn = (usize, usize, Vec<usize>, Vec<usize>, String, PyObject);

/// A feature file over arrays lent by Python (no copy): one array is one tensor.
fn lent_file(label: &str, arrays: Vec<ArrayIn>) -> R<formats::FeatureFile> {
    let mut buffers = Vec::with_capacity(arrays.len());
    let mut tensors = Vec::with_capacity(arrays.len());
    let many = arrays.len() > 1;
    for (i, (addr, len, shape, strides, dtype, owner)) in arrays.into_iter().enumerate() {
        let dtype = match dtype.as_str() {
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            "f64" => DType::F64,
            other => {
                return Err(invalid(format!(
                    "{label}: dtype {other} is not f16, bf16, f32 or f64"
                )));
            }
        };
        if shape.len() != strides.len() || addr == 0 && len > 0 {
            return Err(invalid(format!("{label}: malformed array description")));
        }
        // SAFETY: the Python layer passes the address and extent of a live array and its
        // owner; holding the owner keeps the memory allocated, and prh only reads it.
        buffers.push(unsafe { Buffer::lent(addr as *const u8, len, Box::new(Owner(owner))) });
        tensors.push(TensorSpec {
            name: if many {
                format!("layer{i}")
            } else {
                "features".into()
            },
            buffer: i,
            offset: 0,
            dtype,
            shape,
            strides,
        });
    }
    formats::from_memory(label, buffers, tensors)
}

fn ingest_request(o: &Value) -> R<IngestRequest> {
    let scores = match o.get("scores") {
        None | Some(Value::Null) => vec![],
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_f64()
                    .map(|f| (k.clone(), f))
                    .ok_or_else(|| invalid(format!("score {k} must be a number, got {v}")))
            })
            .collect::<R<_>>()?,
        Some(v) => {
            return Err(invalid(format!(
                "scores must be a dict of name to number, got {v}"
            )));
        }
    };
    let meta = match o.get("meta") {
        None | Some(Value::Null) => vec![],
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        Some(v) => return Err(invalid(format!("meta must be a dict, got {v}"))),
    };
    // The rows' sample ids: a list of strings, or their digest (64 hex digits).
    let sample_ids = match o.get("sample_ids") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(SampleIds::digest_of(d)?),
        Some(Value::Array(a)) => Some(SampleIds::Ids(
            a.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        )),
        Some(v) => {
            return Err(invalid(format!(
                "sample_ids must be a list of ids or their digest (a string), got {v}"
            )));
        }
    };
    let req = IngestRequest {
        model: need(o, "model")?.to_string(),
        dataset: need(o, "dataset")?.to_string(),
        modality: s(o, "modality").map(str::to_string),
        family: s(o, "family").map(str::to_string),
        pool: s(o, "pool").unwrap_or("avg").to_string(),
        checkpoint: s(o, "checkpoint").map(str::to_string),
        step: o.get("step").and_then(Value::as_i64),
        scores,
        num_params: o.get("num_params").and_then(Value::as_i64),
        meta,
        sample_ids,
    };
    prh::names::validate_scores(&req.scores)?;
    Ok(req)
}

/// Calls a Python progress callback `(done_cells, total_cells)`.
struct Callback(
    Option<PyObject>,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicU64,
);

impl Progress for Callback {
    fn start(&self, total: u64) {
        self.2.store(total, std::sync::atomic::Ordering::Relaxed);
        self.report();
    }
    fn advance(&self, cells: u64) {
        self.1
            .fetch_add(cells, std::sync::atomic::Ordering::Relaxed);
        self.report();
    }
}

impl Callback {
    fn report(&self) {
        if let Some(cb) = &self.0 {
            Python::with_gil(|py| {
                // Read under the GIL, which orders the calls: each sees at least what the one
                // before it saw, so the callback's counts never go back and the last is the
                // total (read before taking it, two threads could report 47 after 48).
                let done = self.1.load(std::sync::atomic::Ordering::Relaxed);
                let total = self.2.load(std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = cb.call1(py, (done, total)) {
                    e.print(py);
                }
            });
        }
    }
}

/// A sweep request from options (x, y, metric, k, null, bootstrap, seed, …).
fn sweep_request(o: &Value, x: Selector, y: Selector) -> R<SweepRequest> {
    let v = view(o)?;
    Ok(SweepRequest {
        x,
        y,
        dataset: s(o, "dataset").map(str::to_string),
        pool: s(o, "pool").map(str::to_string),
        all_checkpoints: o.get("all_checkpoints") == Some(&Value::Bool(true)),
        x_checkpoint: s(o, "x_checkpoint").map(str::to_string),
        specs: vec![v.spec],
        prep: v.prep,
        mem_budget: (u(o, "mem_mib", 4096)? as usize) << 20,
        null: u(o, "null", 0)? as usize,
        bootstrap: u(o, "bootstrap", 0)? as usize,
        seed: u(o, "seed", 0)?,
        alpha: o
            .get("alpha")
            .and_then(Value::as_f64)
            .unwrap_or(prh::stats::DEFAULT_ALPHA),
        reduce: v.reduce,
    })
}

/// Ingests arrays (`log`) or a file (`ingest`), then aligns against `against` when given.
/// Returns {"ingest": report, "alignment": [pair results]}.
#[pyfunction]
#[pyo3(signature = (root, opts, arrays=None, path=None, progress=None))]
fn ingest(
    py: Python<'_>,
    root: &str,
    opts: &str,
    arrays: Option<Vec<ArrayIn>>,
    path: Option<PathBuf>,
    progress: Option<PyObject>,
) -> PyResult<String> {
    let o = parse(opts).map_err(to_py)?;
    let cb = Callback(progress, 0.into(), 0.into());
    with_reg(py, root, move |reg| {
        let req = ingest_request(&o)?;
        let report = match (arrays, path) {
            (Some(a), None) => reg.ingest_file(&lent_file("features from Python", a)?, &req)?,
            (None, Some(p)) => reg.ingest(&p, &req)?,
            _ => return Err(invalid("give either arrays or a path")),
        };
        let mut alignment = Value::Array(vec![]);
        if let Some(against) = s(&o, "against") {
            let mut sreq = sweep_request(
                &o,
                Selector::Names(vec![report.model.clone()]),
                against.parse()?,
            )?;
            sreq.x_checkpoint = Some(report.checkpoint.clone());
            sreq.dataset = Some(report.dataset.clone());
            sreq.pool = Some(req.pool.clone());
            let results = sweep::sweep(reg, &sreq, &cb)?;
            alignment = serde_json::to_value(&results).expect("serialises");
        }
        json_out(&json!({"ingest": report, "alignment": alignment}))
    })
}

/// Aligns x × y through the cache; the `prh align --format json` rows.
#[pyfunction]
#[pyo3(signature = (root, opts, progress=None))]
fn align(py: Python<'_>, root: &str, opts: &str, progress: Option<PyObject>) -> PyResult<String> {
    let o = parse(opts).map_err(to_py)?;
    let cb = Callback(progress, 0.into(), 0.into());
    with_reg(py, root, move |reg| {
        let req = sweep_request(&o, need(&o, "x")?.parse()?, need(&o, "y")?.parse()?)?;
        json_out(&sweep::sweep(reg, &req, &cb)?)
    })
}

/// A chart query: "trend", "matrix", "trajectory" or "layers", as the CLI's JSON.
#[pyfunction]
fn chart(py: Python<'_>, root: &str, kind: &str, opts: &str) -> PyResult<String> {
    let o = parse(opts).map_err(to_py)?;
    let kind = kind.to_string();
    with_reg(py, root, move |reg| {
        let v = view(&o)?;
        if o.get("compute") == Some(&Value::Bool(true)) {
            let (x, y, all) = match kind.as_str() {
                "trajectory" => (need(&o, "model")?, need(&o, "against")?, true),
                _ => (need(&o, "x")?, need(&o, "y")?, false),
            };
            v.fill(reg, (x.parse()?, y.parse()?), all, None, &sweep::Silent)?;
        }
        let lower = (o.get("lower_is_better") == Some(&Value::Bool(true))).then_some(true);
        let plot = s(&o, "plot").map(PathBuf::from);
        match kind.as_str() {
            "trend" => {
                let q = TrendQuery {
                    x: need(&o, "x")?,
                    y: need(&o, "y")?,
                    perf: need(&o, "perf")?,
                    lower_is_better: lower,
                    per_y: o.get("per_y") == Some(&Value::Bool(true)),
                    bootstrap: u(&o, "ci_resamples", 1000)? as usize,
                    seed: u(&o, "seed", 0)?,
                };
                let t = v.trend(reg, &q)?;
                if let Some(p) = &plot {
                    prh::plot::trend(p, &t, q.perf, &v.label())?;
                }
                json_out(&t)
            }
            "matrix" => {
                let sel = (need(&o, "x")?, need(&o, "y")?);
                let values: CellValue = s(&o, "values").unwrap_or("score").parse()?;
                let null = NullSpec {
                    permutations: u(&o, "null", 0)? as usize,
                    seed: u(&o, "seed", 0)?,
                    alpha: prh::stats::DEFAULT_ALPHA,
                };
                let order = (s(&o, "perf"), lower);
                let m = v.value_matrix(reg, sel, order, null, values, &sweep::Silent)?;
                if let Some(p) = &plot {
                    prh::plot::matrix(p, &m, &v.label())?;
                }
                json_out(&v.matrix_rows(&m))
            }
            "trajectory" => {
                let model = need(&o, "model")?;
                let points = v.trajectory(reg, model, need(&o, "against")?)?;
                if let Some(p) = &plot {
                    prh::plot::trajectory(p, &points, model, &v.label())?;
                }
                let rows: Vec<Value> = points
                    .iter()
                    .map(|p| {
                        let mut r = serde_json::to_value(p).expect("serialises");
                        r["reduce"] = v.reduce.key().into();
                        r
                    })
                    .collect();
                json_out(&rows)
            }
            "layers" => json_out(&v.layers(reg, need(&o, "x")?, need(&o, "y")?)?),
            other => Err(invalid(format!("no chart {other:?}"))),
        }
    })
}

/// Free SQL over the registry's tables, as JSON rows.
#[pyfunction]
fn query(py: Python<'_>, root: &str, sql: String) -> PyResult<String> {
    with_reg(py, root, move |reg| {
        json_out(&prh::frame::to_rows(&prh::query::sql(reg, &sql)?))
    })
}

/// A listing as `prh ls WHAT --format json`: models, checkpoints, reps, scores, datasets.
#[pyfunction]
#[pyo3(signature = (root, what, model=None))]
fn listing(py: Python<'_>, root: &str, what: &str, model: Option<String>) -> PyResult<String> {
    let model = model.as_deref().map(prh::names::nfc);
    let what = what.to_string();
    with_reg(py, root, move |reg| match what.as_str() {
        "models" => {
            let mut rows = reg.catalog.models()?;
            if let Some(m) = &model {
                rows.retain(|r| &r.name == m);
            }
            json_out(&rows)
        }
        "checkpoints" => json_out(&reg.catalog.checkpoints(model.as_deref())?),
        "reps" => json_out(&reg.catalog.reps(&RepFilter {
            model,
            ..Default::default()
        })?),
        "scores" => json_out(&reg.catalog.scores(model.as_deref())?),
        "datasets" => json_out(&reg.catalog.datasets()?),
        other => Err(invalid(format!(
            "no listing {other:?}: models, checkpoints, reps, scores or datasets"
        ))),
    })
}

/// Writes the registry (or some models) to a bundle file.
#[pyfunction]
#[pyo3(signature = (root, out, models=None))]
fn export(
    py: Python<'_>,
    root: &str,
    out: PathBuf,
    models: Option<Vec<String>>,
) -> PyResult<String> {
    with_reg(py, root, move |reg| {
        json_out(&prh::bundle::export(reg, &out, models.as_deref())?)
    })
}

/// Merges a bundle into the registry (verified before anything is committed).
#[pyfunction]
fn import_bundle(py: Python<'_>, root: &str, bundle: PathBuf) -> PyResult<String> {
    with_reg(py, root, move |reg| {
        json_out(&prh::bundle::import(
            reg,
            &bundle,
            &prh::bundle::ImportOptions::default(),
        )?)
    })
}

/// One metric between two feature sets (each one or several arrays), no registry.
#[pyfunction]
fn compare(py: Python<'_>, a: Vec<ArrayIn>, b: Vec<ArrayIn>, opts: &str) -> PyResult<f64> {
    let o = parse(opts).map_err(to_py)?;
    unlocked(py, move || -> R<f64> {
        let v = view(&o)?;
        let (fa, fb) = (lent_file("a", a)?, lent_file("b", b)?);
        let (la, lb) = (fa.finite_layers()?, fb.finite_layers()?);
        if la[0].nrows() != lb[0].nrows() {
            return Err(invalid(format!(
                "a has n = {} samples but b has n = {}; alignment needs features of the same samples in the same order",
                la[0].nrows(),
                lb[0].nrows()
            )));
        }
        v.spec.validate(la[0].nrows())?;
        let (da, _) = layers::derive_checkpoint(&la, v.prep, fa.layout)?;
        let (db, _) = layers::derive_checkpoint(&lb, v.prep, fb.layout)?;
        let t = layers::layer_table(&v.spec, &da, &db)?;
        Ok(v.reduce.apply(&t.table)?.0)
    })
    .map_err(to_py)
}

#[pymodule]
fn _prh(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    IMPORTED_IN.get_or_init(std::process::id);
    let options: Vec<&str> = prh::metrics::spec::OPTIONS.iter().map(|o| o.name).collect();
    m.add("METRIC_OPTIONS", options)?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("Conflict", py.get_type::<Conflict>())?;
    m.add("NotCached", py.get_type::<NotCached>())?;
    m.add("Unsupported", py.get_type::<Unsupported>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add("Corrupt", py.get_type::<Corrupt>())?;
    m.add("Interrupted", py.get_type::<Interrupted>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add_function(wrap_pyfunction!(discover, m)?)?;
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_function(wrap_pyfunction!(ingest, m)?)?;
    m.add_function(wrap_pyfunction!(align, m)?)?;
    m.add_function(wrap_pyfunction!(chart, m)?)?;
    m.add_function(wrap_pyfunction!(query, m)?)?;
    m.add_function(wrap_pyfunction!(listing, m)?)?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add_function(wrap_pyfunction!(import_bundle, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
