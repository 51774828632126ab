//! A registry: a directory (its lock, `tmp/` staging, and by default `catalog.db` and `blobs/`;
//! `config.json` when the parts live elsewhere, see [`crate::location`]) over a [`Catalog`] and a
//! [`BlobStore`] (docs/design.md §1), and the operations that change it: creating datasets,
//! ingesting feature files, setting scores.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{
    BlobRow, Catalog, CatalogTx, CheckpointId, Dataset, DatasetId, GuardMode, Model, ModelId,
    NewRep, PgCatalog, RepFilter, RepSlot, ScoreValue, SqliteCatalog,
};
use crate::error::{Error, Result};
use crate::formats::{self, FeatureFile};
use crate::location::{BlobsAt, CONFIG, CatalogAt, Locations};
use crate::matrix::{self, DType, LayerView};
use crate::names::{nfc, validate_meta_value, validate_name, validate_scores};
use crate::store::{BlobHash, BlobSink, BlobStore, FsBlobStore, ObjectBlobStore, SealedBlob};
use rayon::prelude::*;

/// Name of the directory `prh init` creates when no path is given.
pub const DEFAULT_DIR: &str = ".prh";
/// Checkpoint name used when `--checkpoint` is not given.
pub const DEFAULT_CHECKPOINT: &str = "final";

/// Scores that are known to be better when lower, used when no direction is given.
const LOWER_IS_BETTER: &[&str] = &["loss", "bpb", "perplexity", "ppl", "error", "nll"];

/// An open registry.
pub struct Registry {
    pub root: PathBuf,
    pub catalog: Box<dyn Catalog>,
    pub store: Box<dyn BlobStore>,
}

/// Finds the registry: the explicit path (from `--registry` or `PRH_REGISTRY`), else the
/// nearest `.prh/` walking up from `cwd`.
pub fn discover(explicit: Option<&Path>, cwd: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut dir = Some(cwd);
    while let Some(d) = dir {
        let cand = d.join(DEFAULT_DIR);
        if cand.join("catalog.db").is_file() || cand.join(CONFIG).is_file() {
            return Ok(cand);
        }
        dir = d.parent();
    }
    Err(Error::NoRegistry)
}

/// The catalog and blob store `loc` names (created when `create`).
fn parts(
    root: &Path,
    loc: &Locations,
    create: bool,
) -> Result<(Box<dyn Catalog>, Box<dyn BlobStore>)> {
    let catalog: Box<dyn Catalog> = match loc.catalog(root)? {
        CatalogAt::Sqlite(p) if create => {
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Box::new(SqliteCatalog::create(&p)?)
        }
        CatalogAt::Sqlite(p) => Box::new(SqliteCatalog::open(&p)?),
        CatalogAt::Postgres(url) if create => Box::new(PgCatalog::create(&url)?),
        CatalogAt::Postgres(url) => Box::new(PgCatalog::open(&url)?),
    };
    let store: Box<dyn BlobStore> = match loc.blobs(root)? {
        BlobsAt::Dir(d) => {
            let s = FsBlobStore::new(d);
            if create {
                s.create_dirs()?;
            }
            Box::new(s)
        }
        BlobsAt::S3(url) => Box::new(ObjectBlobStore::open_s3(&url, root.join("tmp"))?),
    };
    Ok((catalog, store))
}

impl Registry {
    /// Creates a registry at `root` (or opens it if one is already there).
    pub fn init(root: &Path) -> Result<Registry> {
        Registry::init_at(root, &Locations::default())
    }

    /// Creates a registry at `root` whose catalog and blobs live where `loc` says (recorded in
    /// its `config.json`), or opens the one already there. A registry that keeps its parts
    /// elsewhere is never pointed at other ones; nothing is created when `loc` is refused.
    pub fn init_at(root: &Path, loc: &Locations) -> Result<Registry> {
        loc.check()?;
        let had = Locations::read(root)?;
        let given = *loc != Locations::default();
        let is_registry = had != Locations::default() || root.join("catalog.db").is_file();
        if given && had != *loc && is_registry {
            return Err(Error::Conflict(format!(
                "{} is already a registry (catalog {}, blobs {}); its parts are not moved",
                root.display(),
                had.catalog.as_deref().unwrap_or("catalog.db inside it"),
                had.blobs.as_deref().unwrap_or("inside it"),
            )));
        }
        let loc = if given { loc.clone() } else { had };
        fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let (catalog, store) = parts(root, &loc, true)?;
        loc.write(root)?;
        Registry::with_parts(root, catalog, store)
    }

    /// Opens an existing registry: its own `catalog.db` and `blobs/`, or the parts its
    /// `config.json` (or `PRH_CATALOG` / `PRH_BLOBS`) names.
    pub fn open(root: &Path) -> Result<Registry> {
        if !root.join("catalog.db").is_file() && !root.join(CONFIG).is_file() {
            return Err(Error::NotFound(format!(
                "{} is not a prh registry (no catalog.db or config.json)",
                root.display()
            ))
            .hint(format!("create one with `prh init {}`", root.display())));
        }
        let (catalog, store) = parts(root, &Locations::of(root)?, false)?;
        Registry::with_parts(root, catalog, store)
    }

    /// A registry over any catalog and blob store (`init` and `open` give the defaults:
    /// `root/catalog.db` and files under `root/blobs/`). `root` holds the registry's lock and
    /// staging directory.
    pub fn with_parts(
        root: &Path,
        catalog: Box<dyn Catalog>,
        store: Box<dyn BlobStore>,
    ) -> Result<Registry> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Registry {
            root: root.to_path_buf(),
            catalog,
            store,
        })
    }

    /// Adds a dataset of `n` samples, optionally with ordered sample ids (then n = ids.len()).
    pub fn add_dataset(
        &mut self,
        name: &str,
        n: Option<usize>,
        ids: Option<Vec<String>>,
        description: Option<&str>,
    ) -> Result<Dataset> {
        let name = &nfc(name);
        validate_name("dataset", name)?;
        let n = match (n, &ids) {
            (Some(n), Some(ids)) if ids.len() != n => {
                return Err(Error::Invalid(format!(
                    "--n {n} disagrees with the {} sample ids given",
                    ids.len()
                )));
            }
            (Some(n), _) => n,
            (None, Some(ids)) => ids.len(),
            (None, None) => {
                return Err(Error::Invalid(
                    "a dataset needs --n or --ids (a file with one sample id per line)".into(),
                ));
            }
        };
        if n == 0 {
            return Err(Error::Invalid("a dataset needs at least one sample".into()));
        }
        if let Some(d) = self.catalog.dataset(name)? {
            if d.n == n {
                return Ok(d);
            }
            return Err(Error::Conflict(format!(
                "dataset {name} already exists with n = {}, not {n}",
                d.n
            )));
        }
        self.catalog.write(|tx| {
            let id = tx.insert_dataset(name, n, description)?;
            if let Some(ids) = &ids {
                tx.insert_samples(id, ids)?;
            }
            Ok(())
        })?;
        self.catalog
            .dataset(name)?
            .ok_or_else(|| Error::Conflict("dataset vanished".into()))
    }

    /// Sets scores on a checkpoint (the model's latest when `checkpoint` is `None`).
    /// `higher_is_better` applies to every score given; `None` keeps a stored direction or,
    /// for a new score, guesses from the name (loss, bpb, ... are lower-is-better).
    pub fn set_scores(
        &mut self,
        model: &str,
        checkpoint: Option<&str>,
        scores: &[(String, f64)],
        higher_is_better: Option<bool>,
    ) -> Result<String> {
        let (model, checkpoint) = (&nfc(model), checkpoint.map(nfc));
        let checkpoint = checkpoint.as_deref();
        let scores: Vec<(String, f64)> = scores.iter().map(|(n, v)| (nfc(n), *v)).collect();
        let scores = &scores[..];
        let ck = match checkpoint {
            Some(c) => self.catalog.checkpoint(model, c)?,
            None => self.catalog.latest_checkpoint(model)?,
        }
        .ok_or_else(|| {
            Error::NotFound(match checkpoint {
                Some(c) => format!("model {model} has no checkpoint {c}"),
                None => format!("model {model} is not in the registry (ingest its features first)"),
            })
        })?;
        validate_scores(scores)?;
        self.catalog.write(|tx| {
            for (name, value) in scores {
                upsert_score(tx, ck.id, name, *value, higher_is_better)?;
            }
            Ok(())
        })?;
        Ok(ck.checkpoint)
    }

    /// Ingests a feature file (all its layers) as one checkpoint of one model on one dataset.
    /// Atomic: on any error the catalog and `blobs/` are as they were.
    pub fn ingest(&mut self, path: &Path, req: &IngestRequest) -> Result<IngestReport> {
        let file = formats::open(path)?;
        self.ingest_file(&file, req)
    }

    /// [`Registry::ingest`] for an already opened file: check everything that can be checked
    /// before writing, seal every layer into a temporary blob, refuse a checkpoint whose
    /// layers already hold different matrices, then publish the blobs and commit the rows.
    pub fn ingest_file(&mut self, file: &FeatureFile, req: &IngestRequest) -> Result<IngestReport> {
        let req = &req.normalized();
        let (model, dataset) = self.check_ingest(file, req)?;
        let ck_name = req.checkpoint.as_deref().unwrap_or(DEFAULT_CHECKPOINT);
        // When this checkpoint already exists (a re-ingest), hash first and write only the
        // blobs that are missing.
        let hash_first = match &model {
            Some(m) => self.catalog.checkpoint(&m.name, ck_name)?.is_some(),
            None => false,
        };
        // From here to the commit, gc (on any machine sharing the catalog) may not delete a
        // blob this ingest relies on.
        let lock = self.catalog.blob_guard(GuardMode::Writer)?;
        let sealed = self.seal_layers(file, hash_first)?;
        if let (Some(m), Some(ds)) = (&model, &dataset) {
            self.refuse_changed_layers(file, req, m, ds, ck_name, &sealed)?;
        }
        // Publish the blobs (rename into place), then commit all rows in one transaction. If
        // either fails, the blobs this ingest added are removed again (unless another writer
        // has named them meanwhile).
        let mut layers = Vec::with_capacity(sealed.len());
        let mut added: Vec<BlobHash> = Vec::new();
        let committed = self
            .publish(sealed, &mut layers, &mut added)
            .and_then(|()| self.commit_ingest(file, req, ck_name, &mut layers));
        drop(lock);
        let outcome = match committed {
            Ok(o) => o,
            Err(e) => {
                self.discard_blobs(&added);
                return Err(e);
            }
        };
        Ok(IngestReport {
            path: file.path.clone(),
            model: req.model.clone(),
            checkpoint: ck_name.to_string(),
            dataset: req.dataset.clone(),
            n: file.n(),
            layout: file.layout.name(),
            dataset_created: outcome.dataset_created,
            model_created: outcome.model_created,
            checkpoint_created: outcome.checkpoint_created,
            layers,
            scores_changed: outcome.scores_changed,
            meta_changed: outcome.meta_changed,
            layouts_recorded: outcome.layouts_recorded,
            num_params: req.num_params.or(file.meta.num_params),
        })
    }

    /// What an ingest can check before writing a byte: the request, n against the dataset's,
    /// the modality against the model's (or given, for a new model). Returns the model and
    /// dataset when they exist.
    fn check_ingest(
        &self,
        file: &FeatureFile,
        req: &IngestRequest,
    ) -> Result<(Option<Model>, Option<Dataset>)> {
        let (path, n) = (&file.path, file.n());
        req.validate()?;
        let dataset = self.catalog.dataset(&req.dataset)?;
        if let Some(ds) = &dataset
            && ds.n != n
        {
            return Err(Error::format(
                path,
                format!(
                    "n = {n} rows, but dataset {} has n = {}; features must cover the dataset's samples in order",
                    ds.name, ds.n
                ),
            ));
        }
        match (&dataset, &req.sample_ids) {
            (Some(ds), Some(ids)) => {
                let stored = self.catalog.dataset_ids(ds.id)?;
                ids.check(&path.display().to_string(), &ds.name, &stored)?;
            }
            (None, Some(crate::samples::SampleIds::Ids(ids))) if ids.len() != n => {
                return Err(Error::format(
                    path,
                    format!("n = {n} rows, but {} sample ids given", ids.len()),
                ));
            }
            (None, Some(crate::samples::SampleIds::Digest(_))) => {
                return Err(Error::Invalid(format!(
                    "dataset {} is new: give its sample ids themselves (--ids FILE), not only their digest, or register it first with `prh dataset add {} --ids FILE`",
                    req.dataset, req.dataset
                )));
            }
            _ => {}
        }
        let model = self.catalog.model(&req.model)?;
        match (&model, &req.modality) {
            (Some(m), Some(want)) if &m.modality != want => {
                return Err(Error::Conflict(format!(
                    "{}: model {} is registered with modality {}, not {want}",
                    path.display(),
                    m.name,
                    m.modality
                )));
            }
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "model {} is new: give its --modality (e.g. language, vision)",
                    req.model
                )));
            }
            _ => {}
        }
        Ok((model, dataset))
    }

    /// Encodes every layer (in parallel) into a sealed temporary blob; nothing is published
    /// yet. With `hash_first`, a layer whose blob the store already holds is only hashed.
    fn seal_layers(
        &self,
        file: &FeatureFile,
        hash_first: bool,
    ) -> Result<Vec<(Staged, DType, usize)>> {
        let (path, store) = (&file.path, &self.store);
        (0..file.layers.len())
            .into_par_iter()
            .map(|li| -> Result<(Staged, DType, usize)> {
                let view = file.layer(li);
                let name = &file.layers[li].name;
                let nonfinite = |e: EncodeError| match e {
                    EncodeError::NonFinite { row, col } => Error::format(
                        path,
                        format!(
                            "NaN or Inf present in {name} at row {row}, column {col}; clean the features before ingest"
                        ),
                    ),
                    EncodeError::Store(e) => e,
                };
                if hash_first {
                    let mut h = HashSink(blake3::Hasher::new(), 0);
                    write_canonical(&view, &mut h).map_err(nonfinite)?;
                    let hash = BlobHash(*h.0.finalize().as_bytes());
                    if store.exists(&hash)? {
                        return Ok((Staged::Existing(hash, h.1), view.dtype, view.d));
                    }
                }
                let mut w = store.stage()?;
                write_canonical(&view, &mut w).map_err(nonfinite)?;
                Ok((Staged::Sealed(w.seal()?), view.dtype, view.d))
            })
            .collect()
    }

    /// Refuses a checkpoint whose layers already hold different matrices.
    fn refuse_changed_layers(
        &self,
        file: &FeatureFile,
        req: &IngestRequest,
        m: &Model,
        ds: &Dataset,
        ck_name: &str,
        sealed: &[(Staged, DType, usize)],
    ) -> Result<()> {
        let Some(ck) = self.catalog.checkpoint(&m.name, ck_name)? else {
            return Ok(());
        };
        let held = self.catalog.reps(&RepFilter {
            checkpoint_id: Some(ck.id),
            dataset: Some(ds.name.clone()),
            pool: Some(req.pool.clone()),
            ..Default::default()
        })?;
        for (layer, (s, _, _)) in sealed.iter().enumerate() {
            let existing = held
                .iter()
                .find(|r| r.layer == layer as i64)
                .map(|r| r.hash);
            if let Some(h) = existing
                && h != s.hash()
            {
                return Err(Error::Conflict(format!(
                    "{}: model {} checkpoint {ck_name} layer {layer} (pool {}, dataset {}) already holds a different representation ({}); ingest it under a new --checkpoint",
                    file.path.display(),
                    m.name,
                    req.pool,
                    ds.name,
                    &h.to_hex()[..12]
                )));
            }
        }
        Ok(())
    }

    /// Renames sealed blobs into place, recording each layer and every blob that is new.
    fn publish(
        &self,
        sealed: Vec<(Staged, DType, usize)>,
        layers: &mut Vec<LayerReport>,
        added: &mut Vec<BlobHash>,
    ) -> Result<()> {
        for (s, dtype, d) in sealed {
            let hash = s.hash();
            let (bytes, new_blob) = match s {
                Staged::Sealed(b) => (b.len(), b.publish()?),
                Staged::Existing(_, len) => (len, false),
            };
            if new_blob {
                added.push(hash);
            }
            layers.push(LayerReport {
                layer: layers.len(),
                hash,
                dtype: dtype.name(),
                d,
                bytes,
                new_blob,
                new_row: false,
            });
        }
        Ok(())
    }

    /// Removes blobs a failed write had published, unless a catalog row names them by now.
    /// Holds the blob guard exclusively, so no other writer is between publish and commit.
    fn discard_blobs(&self, added: &[BlobHash]) {
        if added.is_empty() {
            return;
        }
        let Ok(_gc) = self.catalog.blob_guard(GuardMode::Collector) else {
            return; // left for `prh gc`
        };
        for h in added {
            if matches!(self.catalog.blob_named(h), Ok(false)) {
                let _ = self.store.delete(h);
            }
        }
    }

    /// The catalog half of an ingest: every row in one transaction, phase by phase (dataset,
    /// model, checkpoint, layers, scores and provenance).
    fn commit_ingest(
        &mut self,
        file: &FeatureFile,
        req: &IngestRequest,
        ck_name: &str,
        layers: &mut [LayerReport],
    ) -> Result<TxOutcome> {
        let mut scores: Vec<(String, f64)> = file.meta.scores.clone();
        for (k, v) in &req.scores {
            scores.retain(|(kk, _)| kk != k);
            scores.push((k.clone(), *v));
        }
        let num_params = req.num_params.or(file.meta.num_params);
        self.catalog.write(|tx| {
            let mut out = TxOutcome::default();
            let ds = ingest_dataset(tx, file, req, &mut out)?;
            let model = ingest_model(tx, file, req, num_params, &mut out)?;
            let ck = ingest_checkpoint(tx, model, ck_name, req.step, &mut out)?;
            ingest_layers(tx, file, req, ck, ds, layers, &mut out)?;
            for (name, value) in &scores {
                if upsert_score(tx, ck, name, *value, None)? {
                    out.scores_changed.push(name.clone());
                }
            }
            for (key, value) in &req.meta {
                if tx.put_meta(ck, key, value)? {
                    out.meta_changed.push(key.clone());
                }
            }
            Ok(out)
        })
    }

    /// The model row, or an error naming the model.
    pub fn require_model(&self, name: &str) -> Result<Model> {
        let name = &nfc(name);
        self.catalog
            .model(name)?
            .ok_or_else(|| Error::NotFound(format!("no model named {name} in the registry")))
    }
}

#[derive(Default)]
struct TxOutcome {
    dataset_created: bool,
    model_created: bool,
    checkpoint_created: bool,
    scores_changed: Vec<String>,
    meta_changed: Vec<String>,
    layouts_recorded: usize,
}

/// The ingest's dataset: found (its n must be the file's) or created.
fn ingest_dataset(
    tx: &mut dyn CatalogTx,
    file: &FeatureFile,
    req: &IngestRequest,
    out: &mut TxOutcome,
) -> Result<DatasetId> {
    let n = file.n();
    match tx.dataset(&req.dataset)? {
        Some((id, dn)) if dn == n => Ok(id),
        Some((_, dn)) => Err(Error::format(
            &file.path,
            format!("n = {n} rows, but dataset {} has n = {dn}", req.dataset),
        )),
        None => {
            out.dataset_created = true;
            let id = tx.insert_dataset(&req.dataset, n, None)?;
            if let Some(crate::samples::SampleIds::Ids(ids)) = &req.sample_ids {
                tx.insert_samples(id, ids)?;
            }
            Ok(id)
        }
    }
}

/// The ingest's model: found (its modality must be the one given) or created; its parameter
/// count and (where none is recorded) family updated.
fn ingest_model(
    tx: &mut dyn CatalogTx,
    file: &FeatureFile,
    req: &IngestRequest,
    num_params: Option<i64>,
    out: &mut TxOutcome,
) -> Result<ModelId> {
    let id = match tx.model(&req.model)? {
        Some((id, modality)) => {
            if let Some(want) = &req.modality
                && &modality != want
            {
                return Err(Error::Conflict(format!(
                    "{}: model {} is registered with modality {modality}, not {want}",
                    file.path.display(),
                    req.model
                )));
            }
            id
        }
        None => {
            let modality = req.modality.as_deref().ok_or_else(|| {
                Error::Invalid(format!(
                    "model {} is new: give its --modality (e.g. language, vision)",
                    req.model
                ))
            })?;
            out.model_created = true;
            tx.insert_model(&req.model, modality, req.family.as_deref())?
        }
    };
    if let Some(np) = num_params {
        tx.set_num_params(id, np)?;
    }
    if let Some(f) = &req.family {
        tx.fill_family(id, f)?;
    }
    Ok(id)
}

/// The ingest's checkpoint: found (learning its step when none was recorded) or created.
fn ingest_checkpoint(
    tx: &mut dyn CatalogTx,
    model: ModelId,
    name: &str,
    step: Option<i64>,
    out: &mut TxOutcome,
) -> Result<CheckpointId> {
    match tx.checkpoint(model, name)? {
        Some(id) => {
            if let Some(step) = step {
                tx.fill_step(id, step)?;
            }
            Ok(id)
        }
        None => {
            out.checkpoint_created = true;
            tx.insert_checkpoint(model, name, step)
        }
    }
}

/// Each layer's blob row and representation; a slot already holding another blob is refused.
fn ingest_layers(
    tx: &mut dyn CatalogTx,
    file: &FeatureFile,
    req: &IngestRequest,
    ck: CheckpointId,
    ds: DatasetId,
    layers: &mut [LayerReport],
    out: &mut TxOutcome,
) -> Result<()> {
    let (n, layout) = (file.n(), file.layout.name());
    let source = file.path.display().to_string();
    for l in layers.iter_mut() {
        tx.insert_blob(&BlobRow {
            hash: l.hash,
            dtype: l.dtype.to_string(),
            n,
            d: l.d,
            bytes: l.bytes,
        })?;
        let at = RepSlot {
            checkpoint: ck,
            dataset: ds,
            layer: l.layer,
            pool: &req.pool,
        };
        match tx.rep_blob(at)? {
            // Registries from before layouts were recorded learn it on re-ingest.
            Some(h) if h == l.hash => {
                out.layouts_recorded += tx.fill_layout(at, layout)? as usize;
            }
            Some(h) => {
                return Err(Error::Conflict(format!(
                    "{}: layer {} already holds a different representation ({}); ingest it under a new --checkpoint",
                    file.path.display(),
                    l.layer,
                    &h.to_hex()[..12]
                )));
            }
            None => {
                let rep = NewRep {
                    blob: l.hash,
                    source: &source,
                    layout,
                };
                tx.insert_rep(at, rep)?;
                l.new_row = true;
            }
        }
    }
    Ok(())
}

/// Inserts or updates a score; returns true when the stored value changed.
fn upsert_score(
    tx: &mut dyn CatalogTx,
    checkpoint_id: CheckpointId,
    name: &str,
    value: f64,
    higher_is_better: Option<bool>,
) -> Result<bool> {
    validate_name("score", name)?;
    let old = tx.score(checkpoint_id, name)?;
    let dir = match (higher_is_better, &old) {
        (Some(h), _) => Some(h),
        (None, Some(o)) => o.higher_is_better,
        (None, None) => LOWER_IS_BETTER
            .contains(&name.to_ascii_lowercase().as_str())
            .then_some(false),
    };
    let new = ScoreValue {
        value,
        higher_is_better: dir,
    };
    if old == Some(new) {
        return Ok(false);
    }
    tx.put_score(checkpoint_id, name, new)?;
    Ok(true)
}

impl IngestRequest {
    /// The request with every name in NFC ([`nfc`]).
    pub fn normalized(&self) -> IngestRequest {
        let opt = |s: &Option<String>| s.as_deref().map(nfc);
        IngestRequest {
            model: nfc(&self.model),
            dataset: nfc(&self.dataset),
            modality: opt(&self.modality),
            family: opt(&self.family),
            pool: nfc(&self.pool),
            checkpoint: opt(&self.checkpoint),
            step: self.step,
            scores: self.scores.iter().map(|(n, v)| (nfc(n), *v)).collect(),
            num_params: self.num_params,
            meta: self.meta.iter().map(|(k, v)| (nfc(k), v.clone())).collect(),
            sample_ids: self.sample_ids.clone(),
        }
    }

    /// Checks every name and score before any byte is written.
    pub fn validate(&self) -> Result<()> {
        validate_name("model", &self.model)?;
        validate_name("dataset", &self.dataset)?;
        validate_name("pool", &self.pool)?;
        if let Some(m) = &self.modality {
            validate_name("modality", m)?;
        }
        if let Some(f) = &self.family {
            validate_name("family", f)?;
        }
        if let Some(c) = &self.checkpoint {
            validate_name("checkpoint", c)?;
        }
        validate_scores(&self.scores)?;
        for (k, v) in &self.meta {
            validate_name("meta key", k)?;
            validate_meta_value(k, v)?;
        }
        Ok(())
    }
}

/// What to ingest a file as.
#[derive(Debug, Clone, Default)]
pub struct IngestRequest {
    /// The model the features come from (created when new).
    pub model: String,
    /// The input set they were computed on (created with the file's n when new).
    pub dataset: String,
    /// The model's modality: required for a new model, checked for a known one.
    pub modality: Option<String>,
    /// The model's family, recorded where none is.
    pub family: Option<String>,
    /// How token or patch features were pooled into one row per sample.
    pub pool: String,
    /// The checkpoint's name (`final` when `None`).
    pub checkpoint: Option<String>,
    /// Its training step.
    pub step: Option<i64>,
    /// Scores of the checkpoint, by name (they override the file's own).
    pub scores: Vec<(String, f64)>,
    /// The model's parameter count.
    pub num_params: Option<i64>,
    /// Provenance of the features as (key, value): precision, batch size, prompt, ...
    pub meta: Vec<(String, String)>,
    /// The sample ids of the rows (or their digest): checked against the dataset's before
    /// anything is written, and recorded with a dataset this ingest creates.
    pub sample_ids: Option<crate::samples::SampleIds>,
}

/// One layer's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    #[serde(serialize_with = "ser_hash")]
    pub hash: BlobHash,
    pub dtype: &'static str,
    pub d: usize,
    pub bytes: u64,
    pub new_blob: bool,
    pub new_row: bool,
}

fn ser_hash<S: serde::Serializer>(h: &BlobHash, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&h.to_hex())
}

/// What an ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub path: PathBuf,
    pub model: String,
    pub checkpoint: String,
    pub dataset: String,
    pub n: usize,
    /// How the file gave its layers: `stacked` (one tensor) or `layers` (one array each).
    pub layout: &'static str,
    pub dataset_created: bool,
    pub model_created: bool,
    pub checkpoint_created: bool,
    pub layers: Vec<LayerReport>,
    pub scores_changed: Vec<String>,
    /// Provenance keys added or changed.
    pub meta_changed: Vec<String>,
    /// Layers whose layout was not recorded before (ingested by an older prh) and now is.
    pub layouts_recorded: usize,
    pub num_params: Option<i64>,
}

impl IngestReport {
    /// True when nothing new was added (the same file ingested again).
    pub fn unchanged(&self) -> bool {
        !self.dataset_created
            && !self.model_created
            && !self.checkpoint_created
            && self.layers.iter().all(|l| !l.new_row)
            && self.scores_changed.is_empty()
            && self.meta_changed.is_empty()
            && self.layouts_recorded == 0
    }
}

/// A layer ready to publish: a new sealed blob, or one already stored.
enum Staged {
    Sealed(Box<dyn SealedBlob>),
    Existing(BlobHash, u64),
}

impl Staged {
    fn hash(&self) -> BlobHash {
        match self {
            Staged::Sealed(b) => b.hash(),
            Staged::Existing(h, _) => *h,
        }
    }
}

/// Where canonical bytes go: a blob on disk, or only a hasher.
trait Sink {
    fn put(&mut self, bytes: &[u8]) -> Result<()>;
}

impl Sink for Box<dyn BlobSink> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.write(bytes)
    }
}

struct HashSink(blake3::Hasher, u64);

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.0.update_rayon(bytes);
        self.1 += bytes.len() as u64;
        Ok(())
    }
}

enum EncodeError {
    NonFinite { row: usize, col: usize },
    Store(Error),
}

impl From<Error> for EncodeError {
    fn from(e: Error) -> Self {
        EncodeError::Store(e)
    }
}

/// Size of the staging chunk used while encoding a layer.
const CHUNK: usize = 8 << 20;

/// Writes the canonical encoding of a layer (header + row-major LE elements) into `w`,
/// refusing NaN and Inf.
fn write_canonical(view: &LayerView, w: &mut impl Sink) -> std::result::Result<(), EncodeError> {
    w.put(&matrix::canonical_header(view.dtype, view.n, view.d))?;
    let es = view.dtype.size();
    let row_bytes = view.d * es;
    // Contiguous rows packed back to back: stream straight from the source.
    if view.col_stride == 1 && view.row_stride == view.d {
        let all = &view.data[..view.n * row_bytes];
        for (ci, chunk) in all.chunks(CHUNK - CHUNK % row_bytes.max(1)).enumerate() {
            if let Some(i) = view.dtype.first_non_finite(chunk) {
                let flat = ci * (CHUNK - CHUNK % row_bytes.max(1)) / es + i;
                return Err(EncodeError::NonFinite {
                    row: flat / view.d,
                    col: flat % view.d,
                });
            }
            w.put(chunk)?;
        }
        return Ok(());
    }
    let rows_per_chunk = (CHUNK / row_bytes.max(1)).max(1);
    let mut buf = Vec::with_capacity(rows_per_chunk * row_bytes);
    let mut start = 0;
    while start < view.n {
        let end = (start + rows_per_chunk).min(view.n);
        buf.clear();
        for i in start..end {
            view.push_row(i, &mut buf);
        }
        if let Some(i) = view.dtype.first_non_finite(&buf) {
            return Err(EncodeError::NonFinite {
                row: start + i / view.d,
                col: i % view.d,
            });
        }
        w.put(&buf)?;
        start = end;
    }
    Ok(())
}
