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
    /// List datasets.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: FormatArg,
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
                    Ok(text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect())
                })
                .transpose()?;
            let d = reg.add_dataset(&name, n, ids, description.as_deref())?;
            println!("dataset {} (n = {})", d.name, d.n);
            Ok(())
        }
        DatasetCmd::Ls { format } => {
            let rows = reg.catalog.datasets()?;
            output::render(&rows, format.into(), &mut std::io::stdout())?;
            Ok(())
        }
    }
}
