//! `prh export`: write the registry (or some models) to one bundle file.

use std::path::PathBuf;

use anyhow::Result;

use super::Ctx;
use super::args::FormatArg;
use prh::bundle;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Bundle file to write (a tar: manifest.json, catalog.db, blobs/).
    pub out: PathBuf,
    /// Only these models (comma-separated), with their blobs and cached cells.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
}

pub fn run(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let reg = ctx.open()?;
    let r = bundle::export(&reg, &a.out, a.models.as_deref())?;
    match a.format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        _ => println!(
            "wrote {}: {} models, {} representations, {} blobs, {} cached cells, {} bytes",
            r.path.display(),
            r.models,
            r.representations,
            r.blobs,
            r.cells,
            r.bytes
        ),
    }
    Ok(())
}
