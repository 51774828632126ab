//! `prh align`: sweep selected model pairs through the cache.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use super::args::{FormatArg, SweepArgs};
use super::progress::Bar;
use prh::output;
use prh::sweep::{self, PairResult};

#[derive(clap::Args)]
pub struct AlignArgs {
    /// X models: names (a,b), modality=…, family=… or all.
    #[arg(long)]
    pub x: String,
    /// Y models: names (a,b), modality=…, family=… or all.
    #[arg(long)]
    pub y: String,
    /// Every checkpoint of each model, not only the latest.
    #[arg(long)]
    pub all_checkpoints: bool,
    /// Dataset to align on (default: the only one the selected models share).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Pooling to use when a checkpoint has several.
    #[arg(long)]
    pub pool: Option<String>,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Split the missing cells over N worker processes on this machine (`prh worker --once`),
    /// one unit at a time (a model pair, or a block of a heavy pair's layers: --unit-cells);
    /// `prh worker` on other machines that reach the same catalog and blobs joins in. `prh status` shows the progress. With 0, only enter the sweep, print its
    /// id and leave the work to `prh worker` processes started elsewhere.
    #[arg(long, value_name = "N", conflicts_with = "shard")]
    pub workers: Option<usize>,
    /// With --workers: a model pair missing more cells than this is entered as several units,
    /// blocks of its x layers against every y layer, so that several workers share one heavy
    /// pair (0: one unit per pair).
    #[arg(
        long,
        value_name = "CELLS",
        default_value_t = prh::workers::Split::default().unit_cells,
        requires = "workers"
    )]
    pub unit_cells: usize,
    /// With --workers: a layer on the large-n path with more samples than this has its
    /// k-nearest-neighbour graph searched in blocks of about this many rows, each a unit that
    /// any worker may take, before the pairs that need it (0: each graph is searched whole by
    /// the worker of a pair that needs it).
    #[arg(
        long,
        value_name = "ROWS",
        default_value_t = prh::workers::Split::default().graph_rows,
        requires = "workers"
    )]
    pub graph_rows: usize,
    /// Compute shard I of N of the sweep (I from 0, e.g. $SLURM_ARRAY_TASK_ID/64) into the
    /// bundle --out, writing nothing to the registry (it is only read: a shared file system is
    /// enough, no database server). Pairs are split by their cell counts, the same way in every
    /// shard. `prh import part-*.prh` merges the parts, and serves their cells as they are
    /// because this registry's key (shard.key, made by the first shard) sealed them.
    #[arg(long, value_name = "I/N", requires = "out")]
    pub shard: Option<prh::shard::Shard>,
    /// The bundle a shard writes (never overwritten).
    #[arg(long, value_name = "FILE", requires = "shard")]
    pub out: Option<std::path::PathBuf>,
    /// Where a shard keeps its working copy of the catalog while it runs (default: the system's
    /// temporary directory; node-local disk is best).
    #[arg(long, value_name = "DIR", requires = "shard")]
    pub scratch: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

#[derive(Serialize)]
struct Row<'a> {
    x_model: &'a str,
    y_model: &'a str,
    x_checkpoint: &'a str,
    y_checkpoint: &'a str,
    metric: &'a str,
    reduce: &'a str,
    score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    best_layers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ties: Option<usize>,
    cells_computed: usize,
    cells_cached: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    q_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    z: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    calibrated: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ci95: Option<String>,
}

/// Prints sweep results: JSON as the documented array of objects, else a table or CSV.
pub fn print_results(results: &[PairResult], format: FormatArg) -> Result<()> {
    let out = &mut std::io::stdout();
    match format {
        FormatArg::Json => output::render(results, output::Format::Json, out)?,
        f => {
            let rows: Vec<Row> = results
                .iter()
                .map(|r| Row {
                    x_model: &r.x_model,
                    y_model: &r.y_model,
                    x_checkpoint: &r.x_checkpoint,
                    y_checkpoint: &r.y_checkpoint,
                    metric: &r.metric,
                    score: r.score,
                    reduce: &r.reduce,
                    best_layers: r.best_layers.map(|l| format!("{},{}", l[0], l[1])),
                    ties: r.ties,
                    cells_computed: r.cells_computed,
                    cells_cached: r.cells_cached,
                    p_value: r.p_value,
                    q_value: r.q_value,
                    z: r.z,
                    calibrated: r.calibrated,
                    ci95: r.ci95.map(|c| format!("{:.4}..{:.4}", c[0], c[1])),
                })
                .collect();
            output::render(&rows, f.into(), out)?
        }
    }
    Ok(())
}

/// The most local worker processes `--workers` starts (more is a typo, not a plan).
pub const MAX_WORKERS: usize = 1024;

pub fn run(ctx: &Ctx, a: AlignArgs) -> Result<()> {
    // Checked before anything is written: a sweep entered for workers that never start would
    // wait in the catalog.
    if let Some(n) = a.workers.filter(|&n| n > MAX_WORKERS) {
        anyhow::bail!(prh::Error::Invalid(format!(
            "--workers {n}: at most {MAX_WORKERS} local worker processes; for more, enter the sweep with --workers 0 and start `prh worker` where the work should happen"
        )));
    }
    let mut reg = ctx.open()?;
    let (x_sel, y_sel) = (a.x.clone(), a.y.clone());
    let mut req = a
        .sweep
        .request(a.x.parse()?, a.y.parse()?, a.all_checkpoints)?;
    req.dataset = a.dataset;
    req.pool = a.pool;
    let metrics: Vec<&str> = req.specs.iter().map(|s| s.metric.name()).collect();
    let label = format!(
        "align --x {x_sel} --y {y_sel} --metric {}",
        metrics.join(",")
    );
    if let (Some(shard), Some(out)) = (a.shard, &a.out) {
        let bar = Bar::new(a.sweep.quiet);
        let r = prh::shard::run(reg, &req, shard, out, a.scratch.as_deref(), &bar)?;
        drop(bar);
        match a.format {
            FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
            _ => println!(
                "shard {} of sweep {}: {} of {} pairs, {} cells ({} computed now, the rest cached) → {} ({} bytes); merge the parts with `prh import {}`",
                r.shard,
                r.sweep,
                r.pairs_here,
                r.pairs,
                r.cells_here,
                r.cells_computed,
                r.path.display(),
                r.bytes,
                out.with_file_name("*.prh").display()
            ),
        }
        return Ok(());
    }
    let split = prh::workers::Split {
        unit_cells: a.unit_cells,
        graph_rows: a.graph_rows,
    };
    if a.workers == Some(0) {
        match prh::workers::plan(&mut reg, &req, &label, split)? {
            Some(id) => {
                println!(
                    "sweep {id}: submit `prh worker --sweep {id} --once` where the work should happen (each task of a Slurm array or a Kubernetes Job, any machine whose registry shares this catalog); it exits 0 when no unit is left, gives its unit back on SIGTERM, and `prh status` shows the progress"
                )
            }
            None => println!("nothing to do: every cell is cached"),
        }
        return Ok(());
    }
    if let Some(n) = a.workers {
        run_workers(ctx, &mut reg, &req, (&label, split), n, a.sweep.quiet)?;
    }
    let bar = Bar::new(a.sweep.quiet);
    let results = sweep::sweep(&mut reg, &req, &bar)?;
    drop(bar);
    print_results(&results, a.format)
}

/// Enters the request's missing pairs as a sweep and runs `n` local workers on it until every
/// unit is done (workers elsewhere may take some of them).
fn run_workers(
    ctx: &Ctx,
    reg: &mut prh::registry::Registry,
    req: &sweep::SweepRequest,
    (label, split): (&str, prh::workers::Split),
    n: usize,
    quiet: bool,
) -> Result<()> {
    let Some(id) = prh::workers::plan(reg, req, label, split)? else {
        return Ok(());
    };
    if !quiet {
        eprintln!("sweep {id}: {n} worker(s); `prh status` shows the progress");
    }
    let exe = std::env::current_exe()?;
    let root = ctx.root()?;
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let child = std::process::Command::new(&exe)
            .arg("--registry")
            .arg(&root)
            .args(["worker", "--once", "--quiet", "--sweep", &id.to_string()])
            .args(["--name", &format!("{}-{i}", prh::workers::default_name())])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        children.push(child);
    }
    let mut failed = 0;
    for mut c in children {
        if !c.wait()?.success() {
            failed += 1;
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {n} workers failed (their messages are above); finished units are kept: run the same command again, or `prh worker --sweep {id}`"
    );
    Ok(())
}
