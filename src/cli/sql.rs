//! `prh query`: free SQL over the catalog tables, run by polars.

use anyhow::Result;

use super::Ctx;
use super::args::{OutArgs, QueryFormat};
use prh::query;

#[derive(clap::Args)]
pub struct QueryArgs {
    /// SQL over the tables models, checkpoints, datasets, reps, scores, cells, alignment
    /// (columns in the README), run by polars.
    pub sql: String,
    #[command(flatten)]
    pub out: OutArgs,
}

pub fn run(ctx: &Ctx, a: QueryArgs) -> Result<()> {
    let reg = ctx.open()?;
    let mut df = query::sql(&reg, &a.sql)?;
    if let QueryFormat::Parquet = a.out.format {
        let path = a
            .out
            .out
            .as_ref()
            .ok_or_else(|| super::invalid("--format parquet needs --out FILE"))?;
        query::write_parquet(&mut df, path)?;
        return Ok(());
    }
    let rows = prh::frame::to_rows(&df);
    a.out.rows(&rows)
}
