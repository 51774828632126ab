//! The Kubernetes manifests users get (examples/kubernetes/): checked against what prh needs,
//! and each container's command run as the kubelet would expand it against a real registry on
//! a throwaway PostgreSQL. No cluster: what a cluster adds (scheduling pods, sending SIGTERM)
//! is what tests/slurm.rs and tests/workers.rs cover for the same worker.

use crate::workers::{plan, same_scores_as_one_process, status, zoo};

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::postgres::Cluster;
use serde_json::Value;

fn manifest(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubernetes")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A container's command with `$(VAR)` replaced from `env`, as the kubelet expands it.
fn expand(command: &Value, env: &HashMap<String, String>) -> Vec<String> {
    command
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut s = a.as_str().unwrap().to_string();
            for (k, v) in env {
                s = s.replace(&format!("$({k})"), v);
            }
            assert!(
                !s.contains("$("),
                "{s} names a variable the container lacks"
            );
            s
        })
        .collect()
}

/// The names of a container's environment variables, and those read from a Secret.
fn env_names(c: &Value) -> (Vec<&str>, Vec<&str>) {
    let env = c["env"].as_array().unwrap();
    let names = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let secret = env
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    (names, secret)
}

#[test]
fn the_kubernetes_jobs_run_prh_workers_that_drain_within_the_grace_period() {
    let pg = Cluster::start();
    let env = zoo(&pg, "k8s");
    let id = plan(&env);
    // The zoo keeps its blobs in its registry directory ('blobs/' under this prefix).
    let blobs = format!("file://{}", env.reg().display());
    for (file, indexed) in [("indexed-job.json", true), ("work-queue-job.json", false)] {
        let m = manifest(file);
        assert_eq!(
            (m["apiVersion"].as_str(), m["kind"].as_str()),
            (Some("batch/v1"), Some("Job"))
        );
        let spec = &m["spec"];
        assert_eq!(spec["completionMode"] == "Indexed", indexed, "{file}");
        let pod = &spec["template"]["spec"];
        // A pod failure policy needs restartPolicy Never; disruptions are not failures.
        assert_eq!(pod["restartPolicy"], "Never", "{file}");
        assert_eq!(
            spec["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"],
            "DisruptionTarget"
        );
        let init = &pod["initContainers"][0];
        let worker = &pod["containers"][0];
        let (names, secret) = env_names(worker);
        assert!(
            names.contains(&"PRH_SWEEP") && names.contains(&"PRH_REGISTRY"),
            "{names:?}"
        );
        assert!(
            secret.contains(&"PGPASSWORD"),
            "the password comes from a Secret: {secret:?}"
        );
        // The worker's grace ends well before Kubernetes' SIGKILL.
        let args: Vec<&str> = worker["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[..2], ["prh", "worker"]);
        assert!(args.contains(&"--once"), "{args:?}");
        let grace: f64 = args[args.iter().position(|a| *a == "--grace").unwrap() + 1]
            .parse()
            .unwrap();
        let kill = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
        assert!(
            grace + 5.0 <= kill,
            "{file}: --grace {grace} vs SIGKILL after {kill} s"
        );
        // Run the pod's two commands here, with the test's catalog and blobs.
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry");
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("PRH_SWEEP".into(), id.to_string());
        vars.insert("PRH_REGISTRY".into(), registry.display().to_string());
        vars.insert("PRH_CATALOG".into(), pg.url("k8s"));
        vars.insert("PRH_BLOBS".into(), blobs.clone());
        for (k, v) in pg.env() {
            vars.insert(k, v);
        }
        if indexed {
            vars.insert("JOB_COMPLETION_INDEX".into(), "3".into());
        }
        for c in [init, worker] {
            let mut cmd = expand(&c["command"], &vars);
            let init_path = cmd.iter_mut().find(|a| *a == "/registry");
            if let Some(p) = init_path {
                *p = registry.display().to_string();
            }
            assert_eq!(cmd[0], "prh");
            let out = Command::new(env!("CARGO_BIN_EXE_prh"))
                .args(&cmd[1..])
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap())
                .envs(&vars)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file}: {cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The indexed pod did the sweep, under its completion index.
    let st = status(&env);
    assert_eq!(st[0]["done"], st[0]["units"], "{st}");
    let shares = st[0]["workers"].as_array().unwrap();
    assert!(
        shares
            .iter()
            .any(|s| s["worker"].as_str().unwrap().ends_with(":k8s-index-3")),
        "{st}"
    );
    same_scores_as_one_process(&env);
}
