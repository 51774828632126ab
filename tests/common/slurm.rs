//! A throwaway one-node Slurm cluster per test: Debian's `slurm-wlm` and `munge` packages
//! (installed with apt-get when missing and the tests run as root), `munged`, `slurmctld` and
//! `slurmd` started in a temporary directory with their own key, sockets, state and free
//! loopback ports, so nothing of the machine's own configuration is used or changed. Every job
//! is cancelled and the daemons stopped on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::is_root;

/// Why the Slurm tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let have =
        || Path::new("/usr/sbin/slurmctld").is_file() && Path::new("/usr/sbin/munged").is_file();
    if have() {
        return (!is_root()).then(|| "the Slurm tests run slurmd as root; run them as root".into());
    }
    if !is_root() {
        return Some("the Slurm tests need Debian's slurm-wlm and munge packages: run `sudo apt-get install slurm-wlm munge`".into());
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "-q", "slurm-wlm", "munge"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .expect("apt-get runs");
    assert!(st.success(), "apt-get install slurm-wlm munge failed");
    assert!(have(), "slurm-wlm installed its daemons");
    None
}

/// A one-node cluster for a test, or `None` (with the reason printed) where the Slurm tests
/// cannot run.
pub fn cluster_or_skip() -> Option<Slurm> {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Slurm::start())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running cluster of one node.
pub struct Slurm {
    dir: tempfile::TempDir,
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd, and waits until the node takes jobs.
    pub fn start() -> Slurm {
        let dir = tempfile::Builder::new()
            .prefix("prh-slurm-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let munge = d.join("munge");
        std::fs::create_dir_all(&munge).unwrap();
        for sub in ["state", "spool", "jobs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(munge.join("munge.key"), key).unwrap();
        std::fs::set_permissions(
            munge.join("munge.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let st = Command::new("munged")
            .arg("-f")
            .arg(format!("--socket={}", munge.join("munge.sock").display()))
            .arg(format!("--key-file={}", munge.join("munge.key").display()))
            .arg(format!("--log-file={}", munge.join("munged.log").display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!(
                "--seed-file={}",
                munge.join("munged.seed").display()
            ))
            .status()
            .unwrap();
        assert!(st.success(), "munged did not start");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string();
        let p = |name: &str| d.join(name).display().to_string();
        let conf = format!(
            "ClusterName=prhtest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={sock}\n\
             CredType=cred/munge\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             SlurmctldPort={ctld}\n\
             SlurmdPort={slurmd}\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={slurmd_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={slurmd_log}\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             SchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             ReturnToService=2\n\
             MpiDefault=none\n\
             KillWait=30\n\
             NodeName=prhnode NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
             PartitionName=test Nodes=prhnode Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n",
            // The node's real count (slurmd refuses more); tasks share them (OverSubscribe).
            cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
            sock = munge.join("munge.sock").display(),
            ctld = free_port(),
            slurmd = free_port(),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            slurmd_pid = p("slurmd.pid"),
            ctld_log = p("slurmctld.log"),
            slurmd_log = p("slurmd.log"),
        );
        std::fs::write(d.join("slurm.conf"), conf).unwrap();
        let s = Slurm { dir };
        let conf = s.conf();
        // What the drop does, also when this process is killed before it can drop the cluster:
        // cancel every job, stop the daemons by their pid files, remove the directory. After a
        // normal drop the directory, and so the pid files and the configuration, are gone:
        // nothing is killed twice, and scancel is not left retrying a stopped controller (it
        // did so for about two minutes after every test run).
        let d = s.dir.path().display();
        super::after_exit(&format!(
            "[ -d {d} ] || exit 0; SLURM_CONF={conf} scancel --full -u root; for f in slurmd.pid slurmctld.pid munge/munged.pid; do [ -f {d}/$f ] && kill $(cat {d}/$f); done; sleep 1; rm -rf {d}"
        ));
        assert!(
            s.command("slurmctld")
                .args(["-f", &conf, "-i"])
                .status()
                .unwrap()
                .success(),
            "slurmctld did not start"
        );
        assert!(
            s.command("slurmd")
                .args(["-f", &conf, "-N", "prhnode"])
                .status()
                .unwrap()
                .success(),
            "slurmd did not start"
        );
        let t = Instant::now();
        loop {
            let out = s
                .command("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the node never became idle ({state}): {}",
                s.log("slurmd.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    fn conf(&self) -> String {
        self.dir.path().join("slurm.conf").display().to_string()
    }

    /// A Slurm command of this cluster.
    pub fn command(&self, exe: &str) -> Command {
        let mut c = Command::new(exe);
        c.env("SLURM_CONF", self.conf());
        c
    }

    /// A file of the cluster's directory (logs, job output).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Submits `script` with sbatch's `args` and the script's own `script_args`; the job id.
    pub fn sbatch(
        &self,
        args: &[&str],
        script: &Path,
        script_args: &[&str],
        envs: &[(String, String)],
    ) -> u64 {
        let out = self
            .command("sbatch")
            .arg("--parsable")
            .arg(format!(
                "--output={}",
                self.path("jobs/%A_%a.out").display()
            ))
            .args(args)
            .arg(script)
            .args(script_args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sbatch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The job's tasks still queued or running, as `ID_TASK STATE`.
    pub fn queued(&self, job: u64) -> Vec<String> {
        let out = self
            .command("squeue")
            .args(["-h", "-r", "-j", &job.to_string(), "-o", "%i %T"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until every task of `job` has left the queue.
    pub fn wait(&self, job: u64, limit: Duration) {
        let t = Instant::now();
        while !self.queued(job).is_empty() {
            assert!(
                t.elapsed() < limit,
                "job {job} still queued after {limit:?}: {:?}",
                self.queued(job)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the job's tasks printed (standard output and error), by task.
    pub fn output(&self, job: u64) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(self.path("jobs"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{job}_"))
            })
            .map(|e| {
                (
                    e.file_name().to_string_lossy().to_string(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = self
            .command("scancel")
            .args(["--full", "-u", "root"])
            .status();
        for pid in ["slurmd.pid", "slurmctld.pid", "munge/munged.pid"] {
            if let Ok(p) = std::fs::read_to_string(self.path(pid)) {
                let _ = Command::new("kill").arg(p.trim()).status();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
