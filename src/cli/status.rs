//! `prh status`: the sweeps split over workers — units pending, running (by whom, since when),
//! done (and by whom); cells per second, kNN graph rows done, and time left.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use super::args::FormatArg;
use prh::output;
use prh::workers;

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

/// A table row: one sweep, or one running unit under it.
#[derive(Serialize)]
struct Row {
    sweep: i64,
    what: String,
    pending: usize,
    running: usize,
    done: usize,
    cells: String,
    cells_per_second: String,
    /// kNN graph rows done of those in blocks, when the sweep has any.
    graph_rows: String,
    eta: String,
}

pub fn run(ctx: &Ctx, a: StatusArgs) -> Result<()> {
    let reg = ctx.open()?;
    let sweeps = workers::status(&reg)?;
    let out = &mut std::io::stdout();
    if let FormatArg::Json = a.format {
        output::render(&sweeps, output::Format::Json, out)?;
        return Ok(());
    }
    let mut rows = Vec::new();
    for s in &sweeps {
        rows.push(Row {
            sweep: s.sweep,
            what: s.label.clone(),
            pending: s.pending,
            running: s.running,
            done: s.done,
            cells: format!("{}/{}", s.cells_done, s.cells),
            cells_per_second: s.cells_per_second.map_or("-".into(), |r| format!("{r:.1}")),
            graph_rows: match s.graph_rows {
                0 => String::new(),
                all => format!("{}/{all}", s.graph_rows_done),
            },
            eta: eta(s),
        });
        for u in &s.running_units {
            rows.push(Row {
                sweep: s.sweep,
                what: format!(
                    "  unit {} {} on {} for {:.0} s (lease {:+.0} s, attempt {})",
                    u.unit, u.pair, u.worker, u.running_seconds, u.lease_seconds_left, u.attempts
                ),
                pending: 0,
                running: 1,
                done: 0,
                cells: String::new(),
                cells_per_second: String::new(),
                graph_rows: String::new(),
                eta: String::new(),
            });
        }
        for w in &s.workers {
            rows.push(Row {
                sweep: s.sweep,
                what: format!("  done by {}", w.worker),
                pending: 0,
                running: 0,
                done: w.units_done,
                cells: w.cells_done.to_string(),
                cells_per_second: String::new(),
                graph_rows: String::new(),
                eta: String::new(),
            });
        }
    }
    output::render(&rows, a.format.into(), out)?;
    Ok(())
}

/// Time left: at the cells' rate once a pair is done; before that, while graph blocks run, the
/// blocks' time left (the pairs still to come after it).
fn eta(s: &workers::SweepStatus) -> String {
    match (s.eta_seconds, s.graph_eta_seconds) {
        (Some(e), _) => format!("{e:.0} s"),
        (None, Some(g)) if s.graph_rows_done < s.graph_rows => format!("{g:.0} s + pairs"),
        _ => "-".into(),
    }
}
