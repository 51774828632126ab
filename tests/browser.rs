//! The dashboard in a real browser: Debian's headless Chromium driven through ChromeDriver
//! (WebDriver over HTTP on loopback). Every page of a demo registry loads without a
//! JavaScript error, its numbers equal the CLI's JSON, clicks lead where they should, and
//! each page leaves a screenshot in target/tmp/screenshots/.
//!
//! Set-up: when chromium or chromedriver is missing and the tests run as root, they are
//! installed with `apt-get install chromium chromium-driver` (Debian's packages; see
//! tests/common/browser.rs).

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::Env;
use common::browser::Browser;
use common::http::{Server, enc};
use serde_json::{Value, json};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

#[test]
fn every_page_shows_the_cli_numbers_and_clicks_lead_on() {
    let env = Env::new();
    env.ok(&["demo", "--dir", env.reg().to_str().unwrap()]);
    env.ok(&[
        "align",
        "--metric",
        "mutual_knn",
        "--x",
        "lm-large",
        "--y",
        "modality=vision",
        "--all-checkpoints",
        "-q",
    ]);
    let server = Server::start(Path::new(env!("CARGO_BIN_EXE_prh")), &env.reg(), &[]);
    let base = format!("http://{}", server.addr);
    let b = Browser::start();
    let (x, y) = ("modality=language", "modality=vision");

    // Overview: the counts of `prh ls`.
    b.goto(&format!("{base}/"));
    let models = env
        .json(&["ls", "models", "--format", "json"])
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        b.wait("return document.getElementById('n-models').textContent"),
        json!(models.to_string())
    );
    let reps = env
        .json(&["ls", "reps", "--format", "json"])
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        b.js("return document.getElementById('n-reps').textContent"),
        json!(reps.to_string())
    );
    b.wait("return document.getElementById('live').className === 'on'");
    b.screenshot("overview");
    assert_eq!(b.errors(), Vec::<String>::new(), "overview");
    // The console check sees a thrown error (it would not pass vacuously).
    b.js("setTimeout(() => { throw new Error('prh-probe') }, 0); return 1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.errors().iter().any(|e| e.contains("prh-probe")));

    // Trend: r and every point as the CLI computes them.
    let cli = env.json(&[
        "trend",
        "--metric",
        "mutual_knn",
        "--x",
        x,
        "--y",
        y,
        "--perf",
        "bpb",
        "--format",
        "json",
    ]);
    b.goto(&format!("{base}/trend"));
    let r = b.wait("return document.querySelector('#trend-raw .pearson-r').dataset.value");
    assert!(close(
        r.as_str().unwrap().parse().unwrap(),
        cli["pearson_r"].as_f64().unwrap()
    ));
    let points = b.js("return [...document.querySelectorAll('circle.point')].map(c => [c.dataset.model, +c.dataset.x, +c.dataset.y])");
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), cli["models"].as_array().unwrap().len());
    for m in cli["models"].as_array().unwrap() {
        let p = points
            .iter()
            .find(|p| p[0] == m["model"])
            .unwrap_or_else(|| panic!("{m} not drawn"));
        assert!(
            close(p[1].as_f64().unwrap(), m["performance"].as_f64().unwrap()),
            "{m}"
        );
        assert!(
            close(p[2].as_f64().unwrap(), m["alignment"].as_f64().unwrap()),
            "{m}"
        );
    }
    b.screenshot("trend");
    assert_eq!(b.errors(), Vec::<String>::new(), "trend");
    // Click the best model's point: its model page opens.
    b.click("circle.point[data-model='lm-xxl']");
    b.wait("return location.pathname === '/model/lm-xxl'");
    assert_eq!(
        b.wait("return document.getElementById('model-name').dataset.model"),
        json!("lm-xxl")
    );
    let bpb = b.js("return document.querySelector(\".score[data-name='bpb']\").dataset.value");
    let cli_scores = env.json(&["ls", "scores", "--model", "lm-xxl", "--format", "json"]);
    assert_eq!(
        bpb.as_str().unwrap().parse::<f64>().unwrap(),
        cli_scores[0]["value"].as_f64().unwrap()
    );
    b.screenshot("model");
    assert_eq!(b.errors(), Vec::<String>::new(), "model");

    // Matrix: every cell as `prh matrix`; click one for its layer × layer heatmap.
    let cli = env.json(&[
        "matrix",
        "--metric",
        "mutual_knn",
        "--x",
        x,
        "--y",
        y,
        "--perf",
        "bpb",
        "--format",
        "json",
    ]);
    b.goto(&format!("{base}/matrix?perf=bpb"));
    let cells = b.wait("return [...document.querySelectorAll('rect.cell')].map(c => [c.dataset.row, c.dataset.col, +c.dataset.value])");
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 36);
    for c in cells {
        let row = cli
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == c[0])
            .unwrap();
        assert!(
            close(
                c[2].as_f64().unwrap(),
                row[c[1].as_str().unwrap()].as_f64().unwrap()
            ),
            "{c:?}"
        );
    }
    let rows = b.js(
        "return [...new Set([...document.querySelectorAll('rect.cell')].map(c => c.dataset.row))]",
    );
    let cli_rows: Vec<Value> = cli
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].clone())
        .collect();
    assert_eq!(
        rows,
        Value::Array(cli_rows),
        "rows ordered by bpb as the CLI orders them"
    );
    b.screenshot("matrix");
    assert_eq!(b.errors(), Vec::<String>::new(), "matrix");
    b.click("rect.cell[data-row='lm-xxl'][data-col='vit-g']");
    b.wait("return location.pathname === '/pair'");
    assert!(b.url().ends_with("&x=lm-xxl&y=vit-g"), "{}", b.url());
    let best = b.wait(
        "return document.getElementById('best') && +document.getElementById('best').dataset.value",
    );
    let pair = cli
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "lm-xxl")
        .unwrap()["vit-g"]
        .as_f64()
        .unwrap();
    assert!(
        close(best.as_f64().unwrap(), pair),
        "best layer pair {best} vs pair score {pair}"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('rect.best').length"),
        json!(1)
    );
    b.screenshot("pair");
    assert_eq!(b.errors(), Vec::<String>::new(), "pair");

    // Trajectory: one line per reference, the CLI's points.
    let cli = env.json(&[
        "trajectory",
        "--metric",
        "mutual_knn",
        "--model",
        "lm-large",
        "--against",
        y,
        "--format",
        "json",
    ]);
    b.goto(&format!(
        "{base}/trajectory?model=lm-large&against={}",
        enc(y)
    ));
    let lines = b.wait("return document.querySelectorAll('polyline.series').length");
    assert_eq!(lines, json!(6));
    let pts = b.js("return [...document.querySelectorAll('circle.point')].map(c => [c.dataset.series, c.dataset.checkpoint, +c.dataset.y])");
    assert_eq!(pts.as_array().unwrap().len(), cli.as_array().unwrap().len());
    for p in cli.as_array().unwrap() {
        assert!(
            pts.as_array().unwrap().iter().any(|q| q[0] == p["against"]
                && q[1] == p["checkpoint"]
                && close(q[2].as_f64().unwrap(), p["score"].as_f64().unwrap())),
            "{p} not drawn"
        );
    }
    b.screenshot("trajectory");
    assert_eq!(b.errors(), Vec::<String>::new(), "trajectory");

    // Missing cells: the page names the command.
    b.goto(&format!("{base}/matrix?metric=cka"));
    let cmd = b.wait("return document.getElementById('align-command') && document.getElementById('align-command').textContent");
    assert_eq!(
        cmd,
        json!(format!("prh align --metric cka --x {x} --y {y}"))
    );
    b.screenshot("missing");
    b.errors(); // the 409 status of the page itself is logged as a failed load

    // SQL: the console's first page and its total equal `prh query`.
    b.goto(&format!("{base}/sql"));
    b.wait("return document.getElementById('sql-info')");
    b.js("document.getElementById('sql-text').value = 'SELECT x_model, count(*) AS n FROM alignment GROUP BY x_model ORDER BY x_model'; return 1");
    b.click("#sql-form button[type=submit]");
    b.wait("return document.getElementById('sql-info') && document.getElementById('sql-info').dataset.total === '12' && document.querySelectorAll('#sql-table tbody tr').length === 12");
    let cli = env.json(&[
        "query",
        "SELECT x_model, count(*) AS n FROM alignment GROUP BY x_model ORDER BY x_model",
        "--format",
        "json",
    ]);
    let table = b.js("return [...document.querySelectorAll('#sql-table tbody tr')].map(r => [...r.cells].map(c => c.textContent))");
    for (row, c) in table
        .as_array()
        .unwrap()
        .iter()
        .zip(cli.as_array().unwrap())
    {
        assert_eq!(row[0], c["x_model"]);
        assert_eq!(row[1].as_str().unwrap(), c["n"].to_string());
    }
    // A writing statement is refused in the page too.
    b.js("document.getElementById('sql-text').value = 'DELETE FROM models'; return 1");
    b.click("#sql-form button[type=submit]");
    let err =
        b.wait("const e = document.getElementById('sql-error'); return !e.hidden && e.textContent");
    assert!(err.as_str().unwrap().contains("read-only"), "{err}");
    b.screenshot("sql");
    let errs: Vec<String> = b
        .errors()
        .into_iter()
        .filter(|e| !e.contains("400"))
        .collect();
    assert_eq!(errs, Vec::<String>::new(), "sql");

    // The page follows the registry: a new score appears without a manual reload.
    b.goto(&format!("{base}/model/vit-b"));
    b.wait("return document.getElementById('live').className === 'on'");
    env.ok(&["score", "set", "--model", "vit-b", "top5=0.625"]);
    let v = b.wait("const s = document.querySelector(\".score[data-name='top5']\"); return s && s.dataset.value");
    assert_eq!(v, json!("0.625"));
    assert_eq!(b.errors(), Vec::<String>::new(), "live reload");
}
