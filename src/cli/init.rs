//! `prh init`: create a registry.

use std::path::PathBuf;

use anyhow::Result;

use super::{Ctx, display};
use prh::registry::{self, Registry};

#[derive(clap::Args)]
pub struct InitArgs {
    /// Where to create the registry.
    pub path: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let path = a
        .path
        .or_else(|| ctx.registry.clone())
        .unwrap_or_else(|| PathBuf::from(registry::DEFAULT_DIR));
    let existed = path.join("catalog.db").is_file();
    let reg = Registry::init(&path)?;
    println!(
        "{} registry at {} (schema version {})",
        if existed { "existing" } else { "created" },
        display(&path),
        reg.catalog.schema_version()?
    );
    Ok(())
}
