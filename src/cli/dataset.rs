//! `prh dataset add|ls`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Ctx;
use super::args::FormatArg;
use prh::output;

#[derive(Subcommand)]
pub enum DatasetCmd {
    /// Register a dataset: n samples in a fixed order (row i of every feature file is sample i).
    Add {
        /// Dataset name, e.g. wit_1024.
        name: String,
        /// Number of samples.
        #[arg(long)]
        n: Option<usize>,
        /// File with one sample id per line, in row order (sets n).
        #[arg(long, value_name = "FILE")]
        ids: Option<PathBuf>,
        /// Free-text description.
        #[arg(long)]
        description: Option<String>,
    },
    /// List datasets (with `ids_digest`, the digest of the sample ids of those that have them).
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: FormatArg,
    },
    /// Print a dataset's sample ids, one per line, in row order.
    Ids {
        /// Dataset name.
        name: String,
    },
}

pub fn run(ctx: &Ctx, cmd: DatasetCmd) -> Result<()> {
    let mut reg = ctx.open()?;
    match cmd {
        DatasetCmd::Add {
            name,
            n,
            ids,
            description,
        } => {
            let ids = ids
                .map(|p| -> Result<Vec<String>> {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read sample ids from {}", p.display()))?;
                    Ok(prh::samples::parse_lines(&text))
                })
                .transpose()?;
            let d = reg.add_dataset(&name, n, ids, description.as_deref())?;
            println!("dataset {} (n = {})", d.name, d.n);
            Ok(())
        }
        DatasetCmd::Ls { format } => {
            let mut rows = Vec::new();
            for d in reg.catalog.datasets()? {
                let ids = reg.catalog.dataset_ids(d.id)?;
                let mut row = serde_json::to_value(&d)?;
                row["ids_digest"] = match ids.is_empty() {
                    true => serde_json::Value::Null,
                    false => prh::samples::digest(&ids).into(),
                };
                rows.push(row);
            }
            output::render(&rows, format.into(), &mut std::io::stdout())?;
            Ok(())
        }
        DatasetCmd::Ids { name } => {
            let name = prh::names::nfc(&name);
            let d = reg.catalog.dataset(&name)?.ok_or_else(|| {
                prh::Error::NotFound(format!("no dataset named {name}"))
                    .hint("`prh dataset ls` lists them")
            })?;
            let ids = reg.catalog.dataset_ids(d.id)?;
            if ids.is_empty() {
                anyhow::bail!(prh::Error::NotFound(format!(
                    "dataset {name} records no sample ids (it was made with --n, or by an ingest without --ids)"
                )));
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for id in ids {
                use std::io::Write;
                writeln!(out, "{id}")?;
            }
            Ok(())
        }
    }
}
