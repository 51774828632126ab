//! `prh serve` under load and in the browser: a registry of 100 language × 100 vision models
//! (10,000 cached model pairs), then
//! - API latency: 50 concurrent clients on loopback, 20 requests each per endpoint (1,000
//!   requests), p50 / p99 / max per endpoint;
//! - load beside a hostile client: 20 concurrent clients over the dashboard's pages and APIs
//!   (1,000 requests), alone and then while a hostile client runs beside them (100 slow-loris
//!   connections, a flood of 10,000 idle connections against a server whose descriptor limit is
//!   lowered to 2,048, and an exploding console query over and over): requests per second,
//!   p50 / p99, failures, the server's RSS before and after;
//! - the 100 × 100 matrix page in headless Chromium: navigation start to load event, and to
//!   the 10,000 heatmap cells in the DOM (target: under 1 s).
//!
//! Run: `cargo bench --bench serve` (release build; needs chromium + chromedriver, which the
//! bench installs with apt-get when run as root).

#[path = "../tests/common/browser.rs"]
mod browser;
#[path = "../tests/common/http.rs"]
mod http;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{prh_ok as prh, size};

const BIN: &str = env!("CARGO_BIN_EXE_prh");
const N: usize = 64;

/// One n × d f32 .npy whose rows share a signal of strength `q` with every other model's.
fn features(path: &Path, seed: u64, q: f32) {
    let d = 16;
    let mut rng = prh::rng::Rng::new(seed);
    let mut shared = prh::rng::Rng::new(7);
    let data: Vec<f32> = (0..N * d)
        .map(|_| q * shared.normal() as f32 + (1.0 - q) * rng.normal() as f32)
        .collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({N}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    common::announce("serve");
    let (models, clients, per_client) = (size(100, 4), size(50, 2), size(20, 2));
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("reg");
    let t = Instant::now();
    prh(&reg, &["init"]);
    prh(&reg, &["dataset", "add", "bench", "--n", &N.to_string()]);
    for (i, modality) in
        (0..2 * models).map(|i| (i, if i < models { "language" } else { "vision" }))
    {
        let name = format!("{}{:03}", &modality[..4], i % models);
        let f = dir.path().join(format!("{name}.npy"));
        let q = (i % models) as f32 / models as f32 * 0.8;
        features(&f, i as u64 + 1, q);
        let score = format!("quality={q}");
        prh(
            &reg,
            &[
                "ingest",
                f.to_str().unwrap(),
                "--model",
                &name,
                "--dataset",
                "bench",
                "--modality",
                modality,
                "--score",
                &score,
            ],
        );
    }
    prh(
        &reg,
        &[
            "align",
            "--metric",
            "mutual_knn",
            "--x",
            "modality=language",
            "--y",
            "modality=vision",
            "-q",
        ],
    );
    println!(
        "registry: {models} × {models} models, {} model pairs cached in {:.1} s",
        models * models,
        t.elapsed().as_secs_f64()
    );

    let server = http::Server::start(Path::new(BIN), &reg, &[]);
    let q = "metric=mutual_knn&x=modality%3Dlanguage&y=modality%3Dvision&perf=quality";
    let endpoints = [
        ("version", "/api/version".to_string()),
        ("overview", "/api/overview".to_string()),
        ("model page", format!("/model/lang{:03}", models * 42 / 100)),
        ("trend", format!("/api/trend?{q}")),
        ("matrix", format!("/api/matrix?{q}")),
    ];
    println!("API latency, one client alone, 20 requests each (loopback):");
    for (name, target) in &endpoints {
        let mut all: Vec<Duration> = (0..per_client)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(http::get(server.addr, target).status, 200);
                t.elapsed()
            })
            .collect();
        all.sort();
        println!(
            "  {name:<16} p50 {:7.1} ms  max {:7.1} ms",
            percentile(&all, 0.50).as_secs_f64() * 1e3,
            all.last().unwrap().as_secs_f64() * 1e3
        );
    }
    println!("API latency, {clients} concurrent clients × {per_client} requests (loopback):");
    for (name, target) in &endpoints {
        let (all, failed, wall) = mixed_load(
            server.addr,
            std::slice::from_ref(target),
            clients,
            per_client,
        );
        assert_eq!(failed, 0, "{target}");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {name:<16} p50 {:7.1} ms  p99 {:7.1} ms  max {:7.1} ms  ({} requests in {:.2} s)",
            ms(percentile(&all, 0.50)),
            ms(percentile(&all, 0.99)),
            ms(*all.last().unwrap()),
            all.len(),
            wall.as_secs_f64()
        );
    }

    hostile_load(&server, models, q);

    let b = browser::Browser::start();
    let url = format!("http://{}/matrix?{q}", server.addr);
    b.goto(&url); // warm: the first page load also starts the browser's renderer
    println!("matrix page, {models} × {models} models, headless Chromium:");
    for run in 1..=3 {
        let t = Instant::now();
        b.goto(&url);
        b.wait(&format!(
            "return document.readyState === 'complete' && document.querySelectorAll('rect.cell').length === {}",
            models * models
        ));
        let wall = t.elapsed();
        let nav = b.js(
            "const n = performance.getEntriesByType('navigation')[0]; return [n.responseEnd, n.domContentLoadedEventEnd, n.loadEventEnd]",
        );
        let f = |i: usize| nav[i].as_f64().unwrap();
        println!(
            "  run {run}: response {:.0} ms, DOM ready {:.0} ms, load event {:.0} ms; navigate → {} cells in DOM {:.0} ms (WebDriver round trips included)",
            f(0),
            f(1),
            f(2),
            models * models,
            wall.as_secs_f64() * 1e3
        );
    }
    assert!(b.errors().is_empty());
}

/// The server's resident and peak memory (MiB) from /proc.
fn rss(pid: u32) -> (f64, f64) {
    let field = |name: &str| {
        common::proc_status_kib(&pid.to_string(), name).map_or(f64::NAN, |kib| kib as f64 / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `clients` threads, each sending `per_client` requests round-robin over `targets` (a new
/// connection each, as the tests' client does); the sorted latencies of the answered ones, how
/// many were not answered 200, and the wall time.
fn mixed_load(
    addr: std::net::SocketAddr,
    targets: &[String],
    clients: usize,
    per_client: usize,
) -> (Vec<Duration>, usize, Duration) {
    let wall = Instant::now();
    let results: Vec<Result<Duration, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    (0..per_client)
                        .map(|i| {
                            let target = &targets[(c + i) % targets.len()];
                            let t = Instant::now();
                            match http::request(addr, "GET", target, &[], b"") {
                                Ok(r) if r.status == 200 => Ok(t.elapsed()),
                                Ok(r) => Err(format!("{target}: {}", r.status)),
                                Err(e) => Err(format!("{target}: {e}")),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut ok: Vec<Duration> = results.iter().filter_map(|r| r.clone().ok()).collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        println!("    first failure: {first}");
    }
    ok.sort();
    (ok, failed.len(), wall.elapsed())
}

/// The dashboard under 20 concurrent clients, alone and beside a hostile client.
fn hostile_load(server: &http::Server, models: usize, q: &str) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (clients, per_client) = (size(20, 2), size(50, 3));
    let (loris, flood) = (size(100, 4), size(10_000, 64));
    let sql = |q: &str| format!("/api/sql?q={}", http::enc(q));
    let targets = vec![
        "/".to_string(),
        format!("/trend?{q}"),
        format!("/model/lang{:03}", models / 2),
        "/api/version".to_string(),
        "/api/overview".to_string(),
        format!("/api/trend?{q}"),
        format!("/api/matrix?{q}"),
        sql("SELECT model, count(*) AS n FROM reps GROUP BY model ORDER BY model LIMIT 5"),
    ];
    let pid = server.pid();
    let addr = server.addr;
    let report = |label: &str, (ok, failed, wall): (Vec<Duration>, usize, Duration)| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (now, peak) = rss(pid);
        println!(
            "  {label:<28} {:6.1} req/s  p50 {:6.1} ms  p99 {:7.1} ms  max {:7.1} ms  {} answered, {failed} not  (RSS {now:.0} MiB, peak {peak:.0} MiB)",
            (ok.len() + failed) as f64 / wall.as_secs_f64(),
            ms(percentile(&ok, 0.50)),
            ms(percentile(&ok, 0.99)),
            ms(*ok.last().unwrap()),
            ok.len(),
        );
        failed
    };
    let (before, _) = rss(pid);
    println!(
        "load over {} pages and APIs, {clients} concurrent clients × {per_client} requests (RSS before: {before:.0} MiB):",
        targets.len()
    );
    let alone = report("alone", mixed_load(addr, &targets, clients, per_client));
    // The hostile client: its descriptors and the server's.
    let limited = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=2048:2048"])
        .status()
        .unwrap();
    assert!(limited.success());
    let stop = AtomicBool::new(false);
    let (cut, held, bombs) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    // A keyed self-join of the 2 × models layers with more than 10^10 rows.
    let ways = (10.0 / ((2 * models) as f64).log10()).ceil() as usize + 1;
    let bomb = {
        let mut q = "SELECT count(*) AS n FROM reps t0".to_string();
        for i in 1..ways {
            q.push_str(&format!(" JOIN reps t{i} ON t0.n = t{i}.n"));
        }
        sql(&q)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let beside = std::thread::scope(|s| {
        // Slow loris: a header line every 100 ms, never the end; reconnect when cut.
        s.spawn(|| {
            let connect =
                || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok();
            let mut conns: Vec<_> = (0..loris).filter_map(|_| connect()).collect();
            for c in &mut conns {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            }
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for c in &mut conns {
                    if c.write_all(b"X-Slow: 1\r\n").is_err() {
                        cut.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = connect() {
                            *c = n;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // A flood of idle connections, held until the end.
        s.spawn(|| {
            let mut conns = Vec::new();
            while conns.len() < flood && !stop.load(Ordering::Relaxed) && Instant::now() < deadline
            {
                if let Ok(c) =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                {
                    conns.push(c);
                    held.store(conns.len(), Ordering::Relaxed);
                }
            }
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // The exploding console query, again and again.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(r) = http::request(addr, "GET", &bomb, &[], b"") {
                    assert_eq!(r.status, 400, "{}", r.text());
                    bombs.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Let the flood build up (half of it) before the clients start.
        let t = Instant::now();
        while held.load(Ordering::Relaxed) < flood / 2 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = mixed_load(addr, &targets, clients, per_client);
        stop.store(true, Ordering::Relaxed);
        r
    });
    let failed = report("beside the hostile client", beside);
    println!(
        "    hostile: {} slow-loris connections cut and reopened, {} idle connections opened, {} exploding queries refused (400)",
        cut.load(Ordering::Relaxed),
        held.load(Ordering::Relaxed),
        bombs.load(Ordering::Relaxed)
    );
    assert_eq!(
        http::get(addr, "/api/overview").status,
        200,
        "the server is gone"
    );
    let (after, peak) = rss(pid);
    println!("  RSS after: {after:.0} MiB (peak {peak:.0} MiB)");
    assert_eq!(alone, 0, "requests failed without the hostile client");
    assert_eq!(failed, 0, "requests failed beside the hostile client");
}
