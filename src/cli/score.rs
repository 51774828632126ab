//! `prh score set`.

use anyhow::Result;
use clap::Subcommand;

use super::{Ctx, parse_scores};

#[derive(Subcommand)]
pub enum ScoreCmd {
    /// Set scores (NAME=VALUE ...) on a model's checkpoint (default: its latest).
    Set {
        /// Model name.
        #[arg(long)]
        model: String,
        /// Checkpoint name (default: the latest, by step then time of ingest).
        #[arg(long)]
        checkpoint: Option<String>,
        /// Scores as NAME=VALUE, e.g. bpb=0.61 mmlu=0.35.
        #[arg(required = true, value_name = "NAME=VALUE")]
        scores: Vec<String>,
        /// Mark these scores higher-is-better (accuracy, ...).
        #[arg(long, conflicts_with = "lower_is_better")]
        higher_is_better: bool,
        /// Mark these scores lower-is-better (loss, bpb, ...; those two are known already).
        #[arg(long)]
        lower_is_better: bool,
    },
}

pub fn run(ctx: &Ctx, cmd: ScoreCmd) -> Result<()> {
    let mut reg = ctx.open()?;
    match cmd {
        ScoreCmd::Set {
            model,
            checkpoint,
            scores,
            higher_is_better,
            lower_is_better,
        } => {
            let scores = parse_scores(&scores)?;
            let dir = if higher_is_better {
                Some(true)
            } else if lower_is_better {
                Some(false)
            } else {
                None
            };
            let ck = reg.set_scores(&model, checkpoint.as_deref(), &scores, dir)?;
            for (k, v) in &scores {
                println!("{model} @ {ck}: {k} = {}", prh::output::format_float(*v));
            }
            Ok(())
        }
    }
}
