//! A real S3-protocol server for the tests: moto's server mode (PyPI `moto[server]`, in the test
//! virtualenv) on a free loopback port, stopped on drop, or when the test process has gone.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{Process, request};

/// A moto S3 server on a free loopback port, stopped on drop.
pub struct Moto {
    _child: Process,
    endpoint: String,
    venv: std::path::PathBuf,
}

impl Moto {
    pub fn start() -> Moto {
        let venv = super::python::venv(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Process(
            Command::new(venv.join("bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server starts"),
        );
        // Stopped even when this process is killed before the drop: by pid, once the test
        // process is gone, and only if that pid is still this moto (pids are reused).
        let pid = child.0.id();
        super::after_exit(&format!(
            "tr '\\0' ' ' < /proc/{pid}/cmdline | grep -q 'moto_server -H 127.0.0.1 -p {port} ' && kill {pid}"
        ));
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let t = Instant::now();
        while request(addr, "GET", "/", &[], b"").is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            venv,
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Deletes an object behind prh's back (boto3, which moto brings, with the test
    /// credentials).
    pub fn delete(&self, bucket: &str, key: &str) {
        let code = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}').delete_object(Bucket='{bucket}', Key='{key}')",
            self.endpoint
        );
        let o = Command::new(self.venv.join("bin/python"))
            .args(["-c", &code])
            .envs(self.env())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "delete {bucket}/{key}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn bucket(&self, name: &str) {
        let addr = self.endpoint.trim_start_matches("http://").parse().unwrap();
        let r = request(addr, "PUT", &format!("/{name}"), &[], b"").unwrap();
        assert_eq!(r.status, 200, "create bucket: {}", r.text());
    }

    /// The standard AWS environment pointing at this server (dummy credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "prh-test-key".into()),
            ("AWS_SECRET_ACCESS_KEY", "prh-test-secret-5f2b".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}
