//! `prh init`: create a registry.

use std::path::PathBuf;

use anyhow::Result;

use super::{Ctx, display};
use prh::location::{CONFIG, Locations};
use prh::registry::{self, Registry};

#[derive(clap::Args)]
pub struct InitArgs {
    /// Where to create the registry.
    pub path: Option<PathBuf>,
    /// Keep the catalog elsewhere: sqlite:///path/to/catalog.db, or a PostgreSQL database a lab
    /// shares, postgres://USER@HOST[:PORT]/DB (an empty database, or a prh catalog already
    /// there; the password comes from PGPASSWORD or ~/.pgpass, never from the URL). Recorded in
    /// the registry's config.json; PRH_CATALOG overrides it for one command.
    #[arg(long, value_name = "URL")]
    pub catalog: Option<String>,
    /// Keep the blobs elsewhere (a big disk, a shared mount): file:///path/to/dir, which gets a
    /// blobs/ folder, or s3://BUCKET/PREFIX (credentials and endpoint from AWS_*). PRH_BLOBS
    /// overrides it for one command.
    #[arg(long, value_name = "URL")]
    pub blobs: Option<String>,
}

pub fn run(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let path = a
        .path
        .or_else(|| ctx.registry.clone())
        .unwrap_or_else(|| PathBuf::from(registry::DEFAULT_DIR));
    let existed = path.join("catalog.db").is_file() || path.join(CONFIG).is_file();
    let loc = Locations {
        catalog: a.catalog,
        blobs: a.blobs,
    };
    let reg = Registry::init_at(&path, &loc)?;
    println!(
        "{} registry at {} (schema version {})",
        if existed { "existing" } else { "created" },
        display(&path),
        reg.catalog.schema_version()?
    );
    Ok(())
}
