//! A throwaway PostgreSQL cluster per test: Debian's `postgresql` package (installed with
//! apt-get when missing and the tests run as root), `initdb` + `pg_ctl` in a temporary
//! directory on a free loopback port, run as the `postgres` user when the tests run as root
//! (PostgreSQL refuses root). Password authentication (scram-sha-256) for every connection, as
//! on a lab's server. Stopped (`pg_ctl stop -m immediate`) and removed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser's password of every test cluster (given to prh through PGPASSWORD only).
pub const PASSWORD: &str = "prh-test-pw-7c1e";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The directory of PostgreSQL's server binaries, installing the package when it is missing.
fn server_bin() -> PathBuf {
    let find = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(b) = find() {
        return b;
    }
    assert!(
        is_root(),
        "the PostgreSQL tests need Debian's postgresql package: run `sudo apt-get install postgresql`"
    );
    let st = Command::new("apt-get")
        .args(["install", "-y", "-q", "postgresql"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .expect("apt-get runs");
    assert!(st.success(), "apt-get install postgresql failed");
    find().expect("postgresql installed its server binaries")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    root: bool,
}

impl Cluster {
    pub fn start() -> Cluster {
        let bin = server_bin();
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("prh-pg-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
        if root {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown of the cluster directory failed");
        }
        let c = Cluster {
            bin,
            port: free_port(),
            root,
            dir,
        };
        let data = c.data();
        let pw = c.dir.path().join("pw");
        c.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "prh",
                &format!("--pwfile={}", pw.display()),
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        c.start_server();
        // Stopped (`-m immediate`, using the data directory's own pid file) and removed even if
        // this process is killed before the cluster is dropped.
        let pg_ctl = format!(
            "{} -D {} -m immediate stop",
            c.bin.join("pg_ctl").display(),
            data.display()
        );
        let as_owner = if root {
            format!("runuser -u postgres -- {pg_ctl}")
        } else {
            pg_ctl
        };
        super::after_exit(&format!("{as_owner}; rm -rf {}", c.dir.path().display()));
        c
    }

    /// Starts the server on the cluster's port (waits until it accepts connections).
    fn start_server(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let (data, log) = (self.data(), self.dir.path().join("log"));
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Starts the server again after [`Cluster::stop`], on the same port.
    pub fn resume(&self) {
        self.start_server();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server binary, as the `postgres` user when we are root.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let o = self
            .command(tool)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// The URL of database `db` (no password: it travels in PGPASSWORD).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://prh@127.0.0.1:{}/{db}", self.port)
    }

    /// The environment prh needs to reach this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("PGPASSWORD".into(), PASSWORD.into())]
    }

    /// Runs SQL on database `db` with psql; its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let exe: &Path = if psql.is_file() {
            &psql
        } else {
            Path::new("psql")
        };
        let o = Command::new(exe)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "prh",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// An open psql session on database `db`, statements sent as they come (to hold a lock
    /// or a transaction open while prh runs); ended when dropped.
    pub fn session(&self, db: &str) -> Session {
        let psql = self.bin.join("psql");
        let exe: &Path = if psql.is_file() {
            &psql
        } else {
            Path::new("psql")
        };
        let child = Command::new(exe)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", "prh", "-d", db])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Session(child)
    }

    /// Creates an empty database; its URL.
    pub fn database(&self, db: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        self.url(db)
    }

    /// Stops the server (as a crash would: no shutdown checkpoint).
    pub fn stop(&self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A psql process reading statements from the test ([`Cluster::session`]).
pub struct Session(std::process::Child);

impl Session {
    /// Sends one statement (or several, `;`-terminated); psql runs it on reading it.
    pub fn send(&mut self, sql: &str) {
        use std::io::Write;
        let stdin = self.0.stdin.as_mut().expect("psql's stdin");
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
