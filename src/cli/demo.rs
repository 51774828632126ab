//! `prh demo`: builds a demo registry from a synthetic zoo.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where to create the demo registry.
    #[arg(long, default_value = "prh-demo")]
    pub dir: PathBuf,
}

pub fn run(_a: DemoArgs) -> Result<()> {
    Ok(())
}
