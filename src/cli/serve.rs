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
    /// Another host name the server answers to (repeat for more). Requests must name this
    /// server in their `Host` header: a loopback name (localhost, 127.0.0.1, [::1]), the bound
    /// address, or one of these; anything else is refused (a web page cannot reach the
    /// dashboard by pointing its own name at 127.0.0.1). A server bound to every address
    /// (0.0.0.0, ::) with a token answers any host name.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// With --compute: how long a request that needs a computation waits while another one
    /// runs (the server computes one view at a time) before it is answered 503, try again.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub compute_wait: u64,
    /// A new connection must send its first request head within this many seconds (a client
    /// that trickles its header is closed); at most 1024 connections are open at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout: u64,
    /// A query of the SQL console (/sql, /api/sql) may run this many seconds; longer ones are
    /// stopped and answered 400 (`prh query` on the command line has no such limit).
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sql_seconds: u64,
    /// A query of the SQL console may use this much memory (MiB of address space of the
    /// process that runs it: the tables, the result, code and threads); one that needs more is
    /// stopped and answered 400.
    #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(256..=1048576))]
    pub sql_mib: u64,
}

pub fn run(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let root = registry::discover(ctx.registry.as_deref(), &cwd)?;
    let opts = ServeOptions {
        bind: a.bind,
        port: a.port,
        token: a.token,
        compute: a.compute,
        allow_hosts: a.allow_hosts,
        compute_wait: std::time::Duration::from_secs(a.compute_wait),
        header_timeout: std::time::Duration::from_secs(a.header_timeout),
        sql: serve::SqlBudget {
            seconds: a.sql_seconds,
            mib: a.sql_mib,
        },
    };
    let shown = root.display().to_string();
    serve::serve(root, opts, |addr| {
        eprintln!("prh serve: http://{addr}/ (registry {shown}; Ctrl-C stops)");
    })?;
    Ok(())
}
