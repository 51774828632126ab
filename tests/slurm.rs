//! `prh worker` as the task of a Slurm job array, on a real one-node cluster
//! (tests/common/slurm.rs) against a throwaway PostgreSQL, with the sbatch script users get
//! (examples/slurm/prh-worker.sbatch).

use crate::common;
use crate::workers::{plan, same_scores_as_one_process, status, zoo};

use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres::Cluster;
use common::slurm::{self, Slurm};

#[test]
fn a_slurm_array_of_workers_fills_a_sweep_and_a_cancelled_task_gives_its_unit_back() {
    if let Some(why) = slurm::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let pg = Cluster::start();
    let env = zoo(&pg, "slurm");
    let cluster = Slurm::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/prh-worker.sbatch");
    let envs = |sweep: i64, grace: &str| {
        let mut v = pg.env();
        v.push(("PRH".into(), env!("CARGO_BIN_EXE_prh").into()));
        v.push(("PRH_REGISTRY".into(), env.reg().display().to_string()));
        v.push(("PRH_SWEEP".into(), sweep.to_string()));
        v.push(("PRH_GRACE".into(), grace.into()));
        v
    };
    // Four array tasks fill the zoo's sweep: every unit done once, by tasks named after their
    // array index, with the numbers of one process.
    let id = plan(&env);
    let job = cluster.sbatch(&["--array=0-3"], &script, &[], &envs(id, "20"));
    cluster.wait(job, Duration::from_secs(600));
    let st = status(&env);
    let s = &st[0];
    assert_eq!(s["done"], s["units"], "{st} {:?}", cluster.output(job));
    for share in s["workers"].as_array().unwrap() {
        let name = share["worker"].as_str().unwrap();
        assert!(name.contains(&format!(":slurm-{job}_")), "{name}");
    }
    same_scores_as_one_process(&env);

    // A task cancelled while it holds a unit (scancel: SIGTERM, SIGKILL 30 s later) gives the
    // unit back at once with no grace, instead of leaving it leased for 60 s to a dead task.
    let planned = env.ok(&[
        "align",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--metric",
        "cka",
        "--workers",
        "0",
    ]);
    let id = planned
        .strip_prefix("sweep ")
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("{planned}"));
    let job = cluster.sbatch(&["--array=0-0"], &script, &[], &envs(id, "0"));
    let t = Instant::now();
    let held = loop {
        let st = status(&env);
        let sweep = st
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sweep"] == id)
            .cloned();
        if let Some(u) = sweep.and_then(|s| {
            s["running_units"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| {
                    u["worker"]
                        .as_str()
                        .unwrap()
                        .contains(&format!(":slurm-{job}_0"))
                })
                .cloned()
        }) {
            break u["unit"].as_i64().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the task never took a unit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        cluster
            .command("scancel")
            .arg(job.to_string())
            .status()
            .unwrap()
            .success()
    );
    cluster.wait(job, Duration::from_secs(25));
    let row = pg.psql(
        "slurm",
        &format!("SELECT state || ':' || attempts FROM sweep_units WHERE sweep_id = {id} AND idx = {held}"),
    );
    assert_eq!(
        row,
        "pending:1",
        "the cancelled task's unit: {:?}",
        cluster.output(job)
    );
    let said: String = cluster.output(job).into_iter().map(|o| o.1).collect();
    assert!(said.contains("given back for another worker"), "{said}");
}
