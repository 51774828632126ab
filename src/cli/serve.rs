//! `prh serve`: the web dashboard and JSON API over a registry.

use std::net::IpAddr;

use anyhow::{Context, Result};

use super::Ctx;
use prh::registry;
use prh::serve::{self, ServeOptions};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on. Loopback by default; any other address needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Access token every request must carry (`Authorization: Bearer TOKEN`, or open a page
    /// once with ?token=TOKEN). Required when binding beyond loopback.
    #[arg(long, env = "PRH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Compute missing cells (and the permutation null of calibrated trends) when a page
    /// asks for them. Without it the server only reads, and pages show the `prh align`
    /// command that fills what is missing.
    #[arg(long)]
    pub compute: bool,
}

pub fn run(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let root = registry::discover(ctx.registry.as_deref(), &cwd)?;
    let opts = ServeOptions {
        bind: a.bind,
        port: a.port,
        token: a.token,
        compute: a.compute,
    };
    let shown = root.display().to_string();
    serve::serve(root, opts, |addr| {
        eprintln!("prh serve: http://{addr}/ (registry {shown}; Ctrl-C stops)");
    })?;
    Ok(())
}
