//! prh on a real one-node Slurm cluster (tests/common/slurm.rs), with the sbatch scripts users
//! get: `prh worker` as the task of a job array against a throwaway PostgreSQL
//! (examples/slurm/prh-worker.sbatch), and shards of a sweep over a registry that the tasks
//! only read, merged by `prh import` (examples/slurm/prh-shard.sbatch).

use crate::common;
use crate::shards::{SWEEP, scores};
use crate::workers::{demo, plan, same_scores_as_one_process, status, zoo};

use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres::Cluster;
use common::slurm;

#[test]
fn a_slurm_array_of_workers_fills_a_sweep_and_a_cancelled_task_gives_its_unit_back() {
    let Some(cluster) = slurm::cluster_or_skip() else {
        return;
    };
    let pg = Cluster::start();
    let env = zoo(&pg, "slurm");
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
    let id = common::sweep_id(&planned);
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

#[test]
fn a_slurm_array_of_shards_adds_up_to_one_process_and_a_time_limit_stops_a_worker_cleanly() {
    let Some(cluster) = slurm::cluster_or_skip() else {
        return;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm");
    let prh = env!("CARGO_BIN_EXE_prh").to_string();

    // A worker that waits for more work once its sweep is done (no --once), under a time limit
    // of one minute: Slurm's SIGTERM at the limit stops it cleanly (exit 0, nothing leased)
    // before the SIGKILL KillWait seconds later. It runs while the shards below do.
    let w = demo(vec![], &[]);
    let planned = w.ok(&[
        "align",
        "--x",
        "modality=language",
        "--y",
        "modality=vision",
        "--metric",
        "cka",
        "--all-checkpoints",
        "--workers",
        "0",
    ]);
    let sweep = common::sweep_id(&planned).to_string();
    let waiting = cluster.path("waiting-worker.sbatch");
    std::fs::write(
        &waiting,
        "#!/bin/sh\nexec \"$PRH\" worker --sweep \"$PRH_SWEEP\" --quiet --poll 1\n",
    )
    .unwrap();
    let timed = cluster.sbatch(
        &["--time=1"],
        &waiting,
        &[],
        &[
            ("PRH".into(), prh.clone()),
            ("PRH_REGISTRY".into(), w.reg().display().to_string()),
            ("PRH_SWEEP".into(), sweep),
        ],
    );
    let started = Instant::now();

    // Four array tasks each compute a shard of a registry they only read.
    let env = demo(vec![], &[]);
    let solo = demo(vec![], &[]);
    let (want, computed_solo) = scores(&solo);
    let parts = env.path("parts");
    let job = cluster.sbatch(
        &["--array=0-3"],
        &examples.join("prh-shard.sbatch"),
        &SWEEP[1..SWEEP.len() - 1],
        &[
            ("PRH".into(), prh),
            ("PRH_REGISTRY".into(), env.reg().display().to_string()),
            ("PRH_SHARDS".into(), "4".into()),
            ("PRH_PARTS".into(), parts.display().to_string()),
        ],
    );
    cluster.wait(job, Duration::from_secs(300));
    let mut import = vec!["import".to_string()];
    for i in 0..4 {
        let part = parts.join(format!("part-{i}.prh"));
        assert!(
            part.is_file(),
            "no {}: {:?}",
            part.display(),
            cluster.output(job)
        );
        import.push(part.display().to_string());
    }
    import.extend(["--format".into(), "json".into()]);
    let imported: serde_json::Value =
        serde_json::from_str(&env.ok(&import.iter().map(String::as_str).collect::<Vec<_>>()))
            .unwrap();
    let served: u64 = imported
        .as_array()
        .unwrap()
        .iter()
        .inspect(|r| assert_eq!(r["shard"]["own"], true, "{r}"))
        .map(|r| r["cells_new"].as_u64().unwrap())
        .sum();
    assert_eq!(served, computed_solo);
    let (got, computed_after) = scores(&env);
    assert_eq!(computed_after, 0);
    assert_eq!(got, want);

    cluster.wait(timed, Duration::from_secs(200));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(55),
        "the time-limited worker ended after {waited:?}, before its limit: {:?}",
        cluster.output(timed)
    );
    let said: String = cluster.output(timed).into_iter().map(|o| o.1).collect();
    assert!(said.contains("stopping as asked"), "{said}");
    let st = status(&w);
    assert_eq!(st[0]["done"], st[0]["units"], "{st}");
    assert_eq!(st[0]["running"], 0, "{st}");
}
