//! The storage interfaces with a second implementation each: a registry on the in-memory
//! catalog and blob store must give every number, listing and refusal the default one (SQLite
//! and files) gives, and a warm sweep must cost a number of catalog calls that grows with model
//! pairs, not with cells.

use std::path::Path;
use std::sync::atomic::Ordering;

use prh::catalog::{Catalog, MemoryCatalog, RepFilter};
use prh::demo::ZooSpec;
use prh::layers::Reduce;
use prh::metrics::{Metric, MetricSpec, Prep};
use prh::registry::{IngestRequest, Registry};
use prh::store::MemoryBlobStore;
use prh::sweep::{self, Selector, Silent, SweepRequest};

/// A registry whose rows and blobs are all in memory (`root` holds only its lock and tmp/).
fn in_memory(root: &Path, catalog: MemoryCatalog) -> Registry {
    Registry::with_parts(root, Box::new(catalog), Box::new(MemoryBlobStore::new())).unwrap()
}

fn request(specs: Vec<MetricSpec>, null: usize, bootstrap: usize) -> SweepRequest {
    SweepRequest {
        x: Selector::Modality("language".into()),
        y: Selector::Modality("vision".into()),
        dataset: None,
        pool: None,
        all_checkpoints: true,
        x_checkpoint: None,
        specs,
        prep: Prep::OFFICIAL,
        mem_budget: 1 << 30,
        null,
        bootstrap,
        seed: 7,
        alpha: prh::stats::DEFAULT_ALPHA,
        reduce: Reduce::Max,
    }
}

/// A small zoo (the demo's first two language and vision models, and lm-large's training
/// checkpoints) ingested into `reg`.
fn fill(reg: &mut Registry, dir: &Path) {
    let mut zoo = ZooSpec::demo();
    zoo.n = 96;
    zoo.models
        .retain(|m| ["lm-tiny", "lm-large", "vit-s", "vit-b"].contains(&m.name.as_str()));
    zoo.ingest_into(reg, dir, "toy").unwrap();
}

/// Results as JSON, without the fields that say where a number came from (cache or not).
fn numbers(results: &[sweep::PairResult]) -> Vec<serde_json::Value> {
    results
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("cells_computed");
            o.remove("cells_cached");
            v
        })
        .collect()
}

fn listings(c: &dyn Catalog) -> serde_json::Value {
    let mut cks = serde_json::to_value(c.checkpoints(None).unwrap()).unwrap();
    for ck in cks.as_array_mut().unwrap() {
        ck.as_object_mut().unwrap().remove("created_at");
    }
    serde_json::json!({
        "datasets": c.datasets().unwrap(),
        "models": c.models().unwrap(),
        "checkpoints": cks,
        "reps": c.reps(&RepFilter::default()).unwrap(),
        "scores": c.scores(None).unwrap(),
    })
}

#[test]
fn the_memory_catalog_gives_the_sqlite_catalogs_numbers_and_listings() {
    let dir = tempfile::tempdir().unwrap();
    let mut lite = Registry::init(&dir.path().join("lite")).unwrap();
    let mem = MemoryCatalog::new();
    let calls = mem.round_trips();
    let mut memory = in_memory(&dir.path().join("mem"), mem);
    fill(&mut lite, &dir.path().join("files-a"));
    fill(&mut memory, &dir.path().join("files-b"));
    assert_eq!(
        listings(lite.catalog.as_ref()),
        listings(memory.catalog.as_ref())
    );

    let specs = vec![
        MetricSpec::new(Metric::MutualKnn),
        MetricSpec::new(Metric::UnbiasedCka),
    ];
    let req = request(specs, 20, 10);
    let a = sweep::sweep(&mut lite, &req, &Silent).unwrap();
    let b = sweep::sweep(&mut memory, &req, &Silent).unwrap();
    // 2 language models (lm-large with 4 checkpoints) × 2 vision models × 2 metrics.
    assert_eq!(a.len(), 5 * 2 * 2);
    assert_eq!(numbers(&a), numbers(&b));
    assert!(
        b.iter()
            .all(|r| r.cells_computed == 36 && r.p_value.is_some())
    );

    // Warm: everything from the cache, the same numbers, in O(pairs) catalog calls.
    calls.store(0, Ordering::Relaxed);
    let warm = sweep::sweep(&mut memory, &req, &Silent).unwrap();
    let round_trips = calls.load(Ordering::Relaxed);
    assert_eq!(numbers(&warm), numbers(&b));
    let cells: usize = warm.iter().map(|r| r.cells_cached).sum();
    assert_eq!(cells, 20 * 36);
    assert!(warm.iter().all(|r| r.cells_computed == 0));
    let pairs = 5 * 2;
    assert!(
        round_trips <= 12 * pairs,
        "{round_trips} catalog calls for {pairs} model pairs ({cells} cells)"
    );
    println!("warm sweep: {round_trips} catalog calls, {pairs} model pairs, {cells} cells");

    // The query layer reads the same cache through the interface.
    // (Symmetric metrics are served in both orientations; the language side is x here.)
    let q = "SELECT x_model, y_model, x_checkpoint, y_checkpoint, metric, score FROM alignment \
             WHERE x_model LIKE 'lm-%' ORDER BY x_model, y_model, x_checkpoint, metric";
    let qa = prh::query::sql(&lite, q).unwrap();
    let qb = prh::query::sql(&memory, q).unwrap();
    assert_eq!(qa.height(), 20);
    assert!(qa.equals(&qb), "{qa}\n{qb}");
}

/// Catalog calls of a warm sweep over the small zoo with `layers` layers per model.
fn warm_calls(layers: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryCatalog::new();
    let calls = mem.round_trips();
    let mut reg = in_memory(&dir.path().join("mem"), mem);
    let mut zoo = ZooSpec::demo();
    zoo.n = 64;
    zoo.models
        .retain(|m| ["lm-tiny", "lm-large", "vit-s", "vit-b"].contains(&m.name.as_str()));
    for m in &mut zoo.models {
        m.layers = layers;
    }
    zoo.ingest_into(&mut reg, &dir.path().join("files"), "toy")
        .unwrap();
    let req = request(vec![MetricSpec::new(Metric::MutualKnn)], 0, 0);
    sweep::sweep(&mut reg, &req, &Silent).unwrap();
    calls.store(0, Ordering::Relaxed);
    let warm = sweep::sweep(&mut reg, &req, &Silent).unwrap();
    let cells = warm.iter().map(|r| r.cells_cached).sum();
    (calls.load(Ordering::Relaxed), cells)
}

#[test]
fn a_warm_sweep_costs_the_same_catalog_calls_whatever_the_number_of_cells() {
    let (few, few_cells) = warm_calls(2);
    let (many, many_cells) = warm_calls(8);
    assert_eq!((few_cells, many_cells), (10 * 4, 10 * 64));
    assert_eq!(
        few, many,
        "{few} calls for {few_cells} cells, {many} for {many_cells}"
    );
    println!("warm sweep: {few} catalog calls for {few_cells} cells and for {many_cells} cells");
}

#[test]
fn a_refused_ingest_leaves_the_memory_catalog_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = in_memory(&dir.path().join("mem"), MemoryCatalog::new());
    fill(&mut reg, &dir.path().join("files"));
    let before = listings(reg.catalog.as_ref());
    let blobs = reg.catalog.blob_hashes().unwrap().len();
    // Other features under an existing checkpoint: refused, nothing written.
    let file = dir.path().join("other.npy");
    let x: Vec<f32> = (0..96 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    common::write_npy(&file, &[96, 8], &x);
    let req = |model: &str, checkpoint: &str, modality: Option<&str>| IngestRequest {
        model: model.into(),
        dataset: "toy".into(),
        modality: modality.map(str::to_string),
        family: None,
        pool: "avg".into(),
        checkpoint: Some(checkpoint.into()),
        step: None,
        scores: vec![("bpb".into(), 0.5)],
        num_params: None,
        meta: vec![("source".into(), "elsewhere".into())],
        sample_ids: None,
    };
    let e = reg.ingest(&file, &req("vit-s", "final", None)).unwrap_err();
    assert!(
        e.to_string()
            .contains("already holds a different representation"),
        "{e}"
    );
    let e = reg
        .ingest(&file, &req("vit-s", "later", Some("language")))
        .unwrap_err();
    assert!(
        e.to_string().contains("modality vision, not language"),
        "{e}"
    );
    assert_eq!(listings(reg.catalog.as_ref()), before);
    assert_eq!(reg.catalog.blob_hashes().unwrap().len(), blobs);
    // The same request under a new checkpoint lands, provenance and score included.
    let r = reg.ingest(&file, &req("vit-s", "later", None)).unwrap();
    assert!(r.checkpoint_created && r.layers[0].new_row);
    let ck = reg.catalog.checkpoint("vit-s", "later").unwrap().unwrap();
    assert_eq!(ck.meta.get("source").map(String::as_str), Some("elsewhere"));
    let scores = reg.catalog.scores(Some("vit-s")).unwrap();
    assert!(
        scores
            .iter()
            .any(|s| s.checkpoint == "later" && s.value == 0.5)
    );
}

#[test]
fn verify_and_gc_work_through_both_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = in_memory(&dir.path().join("mem"), MemoryCatalog::new());
    fill(&mut reg, &dir.path().join("files"));
    let req = request(vec![MetricSpec::new(Metric::MutualKnn)], 0, 0);
    sweep::sweep(&mut reg, &req, &Silent).unwrap();
    // A blob no row names (as a crash between publishing and committing leaves one).
    let mut stray = prh::matrix::canonical_header(prh::matrix::DType::F32, 1, 1).to_vec();
    stray.extend(2.5f32.to_le_bytes());
    let (h, _) = reg.store.put(&mut stray.as_slice(), None).unwrap();
    let v = prh::bundle::verify(&mut reg, 6, 1).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.cells_recomputed, 6);
    assert_eq!(v.unreferenced_files, vec![h.to_hex()]);
    let blobs = reg.store.list().unwrap().len();
    let g = prh::bundle::gc(&mut reg, Default::default()).unwrap();
    assert_eq!(g.blobs, vec![h.to_hex()]);
    assert_eq!(g.blob_bytes, stray.len() as u64);
    assert!(!reg.store.exists(&h).unwrap());
    assert_eq!(reg.store.list().unwrap().len(), blobs - 1);
    // Nothing else was garbage: the sweep is still served from the cache.
    let again = sweep::sweep(&mut reg, &req, &Silent).unwrap();
    assert!(again.iter().all(|r| r.cells_computed == 0));
}

use crate::common;
