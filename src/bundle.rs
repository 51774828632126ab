//! Sharing a registry (DESIGN.md §7): `export` writes one tar file (a consistent snapshot of
//! the catalog plus every blob it references and a manifest), `import` merges one into a
//! registry after verifying everything, `verify` re-hashes blobs and recomputes cached cells,
//! `gc` removes what nothing references.
//!
//! Bundle format (tar, entries in this order):
//! - `manifest.json`: `{"format": "prh-bundle", "format_version": 1, "prh_version", "schema_version",
//!   "catalog": {"bytes", "blake3"}, "blobs": [{"hash", "bytes"}, ...]}`
//! - `catalog.db`: the SQLite catalog snapshot (`VACUUM INTO`, consistent while others write)
//! - `blobs/<hash[0:2]>/<hash>`: every blob the snapshot references, byte for byte.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, MIGRATIONS};
use crate::error::{Error, Result};
use crate::lock::RegistryLock;
use crate::matrix;
use crate::metrics::{Derived, Kernel, Metric, MetricSpec, Scope, prep};
use crate::registry::Registry;
use crate::registry::validate_name;
use crate::rng::Rng;
use crate::store::{Blob, BlobHash, BlobStore};

/// Identifies a bundle.
pub const FORMAT: &str = "prh-bundle";
/// Version of the bundle layout.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted, in bytes.
const MAX_MANIFEST: u64 = 256 << 20;

/// The manifest at the head of every bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub prh_version: String,
    pub schema_version: usize,
    pub catalog: FileEntry,
    pub blobs: Vec<BlobEntry>,
}

/// Size and hash of the catalog snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub bytes: u64,
    pub blake3: String,
}

/// One blob in a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobEntry {
    pub hash: String,
    pub bytes: u64,
}

/// A directory under the registry's `tmp/` removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new(reg: &Registry, what: &str) -> Result<Self> {
        let p = reg.root.join("tmp").join(format!(
            "{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(Staging(p))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub models: usize,
    pub representations: usize,
    pub blobs: usize,
    pub cells: usize,
    pub bytes: u64,
}

/// Writes a bundle of the registry (or of some models) to `out`.
pub fn export(reg: &Registry, out: &Path, models: Option<&[String]>) -> Result<ExportReport> {
    let staging = Staging::new(reg, "export")?;
    let snap = staging.0.join("catalog.db");
    reg.catalog
        .conn()
        .execute("VACUUM INTO ?1", [snap.to_string_lossy().as_ref()])?;
    {
        let db = Connection::open(&snap)?;
        db.pragma_update(None, "journal_mode", "DELETE")?;
        if let Some(keep) = models {
            for m in keep {
                let found: i64 =
                    db.query_row("SELECT count(*) FROM models WHERE name = ?1", [m], |r| {
                        r.get(0)
                    })?;
                if found == 0 {
                    return Err(Error::Invalid(format!("no model named {m} to export")));
                }
            }
            db.execute_batch("CREATE TEMP TABLE keep (name TEXT PRIMARY KEY)")?;
            for m in keep {
                db.execute("INSERT OR IGNORE INTO keep VALUES (?1)", [m])?;
            }
            db.execute_batch(
                "PRAGMA foreign_keys = OFF;
                 DELETE FROM scores WHERE checkpoint_id IN (SELECT c.id FROM checkpoints c JOIN models m ON m.id = c.model_id WHERE m.name NOT IN (SELECT name FROM keep));
                 DELETE FROM checkpoint_meta WHERE checkpoint_id IN (SELECT c.id FROM checkpoints c JOIN models m ON m.id = c.model_id WHERE m.name NOT IN (SELECT name FROM keep));
                 DELETE FROM representations WHERE checkpoint_id IN (SELECT c.id FROM checkpoints c JOIN models m ON m.id = c.model_id WHERE m.name NOT IN (SELECT name FROM keep));
                 DELETE FROM checkpoints WHERE model_id IN (SELECT id FROM models WHERE name NOT IN (SELECT name FROM keep));
                 DELETE FROM models WHERE name NOT IN (SELECT name FROM keep);
                 DELETE FROM blobs WHERE hash NOT IN (SELECT blob_hash FROM representations);
                 DELETE FROM cell_sides WHERE hash NOT IN (SELECT hash FROM blobs);
                 DELETE FROM cells WHERE x NOT IN (SELECT id FROM cell_sides) OR y NOT IN (SELECT id FROM cell_sides);
                 DELETE FROM imported_cells WHERE x NOT IN (SELECT id FROM cell_sides) OR y NOT IN (SELECT id FROM cell_sides);
                 DELETE FROM null_samples;
                 DELETE FROM dataset_samples WHERE dataset_id NOT IN (SELECT dataset_id FROM representations);
                 DELETE FROM datasets WHERE id NOT IN (SELECT dataset_id FROM representations);",
            )?;
            db.execute_batch("VACUUM")?;
        }
    }
    let db = Connection::open(&snap)?;
    let schema_version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut blobs = Vec::new();
    {
        let mut st = db.prepare("SELECT hash, bytes FROM blobs ORDER BY hash")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (hash, bytes) = row?;
            blobs.push(BlobEntry {
                hash,
                bytes: bytes as u64,
            });
        }
    }
    let count = |sql: &str| -> Result<usize> {
        Ok(db.query_row(sql, [], |r| r.get::<_, i64>(0))? as usize)
    };
    let (n_models, n_reps, n_cells) = (
        count("SELECT count(*) FROM models")?,
        count("SELECT count(*) FROM representations")?,
        count("SELECT count(*) FROM cells")?,
    );
    drop(db);
    let cat_bytes = fs::read(&snap).map_err(|e| Error::io(&snap, e))?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        prh_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: schema_version as usize,
        catalog: FileEntry {
            bytes: cat_bytes.len() as u64,
            blake3: blake3::hash(&cat_bytes).to_hex().to_string(),
        },
        blobs,
    };
    let tmp_out = out.with_extension("prh.partial");
    // Whatever fails below, no partial bundle is left behind.
    let partial = RemoveOnDrop(Some(tmp_out.clone()));
    {
        let f = File::create(&tmp_out).map_err(|e| Error::io(&tmp_out, e))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let mjson = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        append(
            &mut tar,
            "manifest.json",
            &mut mjson.as_slice(),
            mjson.len() as u64,
            &tmp_out,
        )?;
        append(
            &mut tar,
            "catalog.db",
            &mut cat_bytes.as_slice(),
            cat_bytes.len() as u64,
            &tmp_out,
        )?;
        for b in &manifest.blobs {
            let h: BlobHash = b.hash.parse()?;
            let p = reg.store.path(&h);
            let f = File::open(&p).map_err(|e| {
                Error::Invalid(format!(
                    "blob {} is missing ({e}); run `prh verify`",
                    b.hash
                ))
            })?;
            let len = f.metadata().map_err(|e| Error::io(&p, e))?.len();
            if len != b.bytes {
                return Err(Error::CorruptBlob {
                    hash: b.hash.clone(),
                    msg: format!(
                        "{len} bytes on disk, {} in the catalog; run `prh verify`, nothing exported",
                        b.bytes
                    ),
                });
            }
            // Hashed while it streams into the tar: a blob altered on disk is never exported.
            let mut r = HashingReader(f, blake3::Hasher::new());
            let name = format!("blobs/{}/{}", &b.hash[..2], b.hash);
            append(&mut tar, &name, &mut r, b.bytes, &tmp_out)?;
            let got = BlobHash(*r.1.finalize().as_bytes());
            if got != h {
                return Err(Error::CorruptBlob {
                    hash: b.hash.clone(),
                    msg: format!("content hashes to {got}; run `prh verify`, nothing exported"),
                });
            }
        }
        let w = tar.into_inner().map_err(|e| Error::io(&tmp_out, e))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&tmp_out, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp_out, e))?;
    }
    fs::rename(&tmp_out, out).map_err(|e| Error::io(out, e))?;
    partial.disarm();
    let bytes = fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(ExportReport {
        path: out.to_path_buf(),
        models: n_models,
        representations: n_reps,
        blobs: manifest.blobs.len(),
        cells: n_cells,
        bytes,
    })
}

/// Removes a path when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R>(R, blake3::Hasher);

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.0.read(buf)?;
        self.1.update(&buf[..k]);
        Ok(k)
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &mut dyn Read,
    size: u64,
    out: &Path,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    let mut counted = CountingReader(data.take(size), 0);
    tar.append_data(&mut h, name, &mut counted)
        .map_err(|e| Error::io(out, e))?;
    if counted.1 != size {
        return Err(Error::Invalid(format!(
            "{name}: {} bytes read, {size} expected (the file changed or was truncated); nothing exported",
            counted.1
        )));
    }
    Ok(())
}

struct CountingReader<R>(R, u64);

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.0.read(buf)?;
        self.1 += k as u64;
        Ok(k)
    }
}

/// What an import added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub blobs_new: usize,
    pub blobs_present: usize,
    pub datasets_new: usize,
    pub models_new: usize,
    pub checkpoints_new: usize,
    pub representations_new: usize,
    pub scores_new: usize,
    /// Provenance entries (`--meta`) added to checkpoints.
    pub meta_new: usize,
    /// Cached cells now served: the recomputed sample, or all of them with --trust-cells.
    pub cells_new: usize,
    /// Cached cells held in `imported_cells` until `prh verify --recompute` checks them.
    pub cells_quarantined: usize,
    /// Cells recomputed at import and found equal.
    pub cells_checked: usize,
    /// Cached null and bootstrap samples taken (only with --trust-cells).
    pub null_samples_new: usize,
    /// Clamp thresholds computed here from the imported blobs (layer sets × q).
    pub thresholds_computed: usize,
}

/// Where a bundle entry may go: `manifest.json`, `catalog.db` or `blobs/ab/<hash>`.
enum Slot {
    Manifest,
    Catalog,
    Blob(String),
    Dir,
}

fn classify(path: &Path) -> std::result::Result<Slot, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().to_string()),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "entry {} escapes the bundle (absolute path or ..)",
                    path.display()
                ));
            }
        }
    }
    let strs: Vec<&str> = parts.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["manifest.json"] => Ok(Slot::Manifest),
        ["catalog.db"] => Ok(Slot::Catalog),
        ["blobs"] => Ok(Slot::Dir),
        ["blobs", d] if d.len() == 2 => Ok(Slot::Dir),
        ["blobs", d, h]
            if h.len() == 64
                && h.starts_with(d)
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) =>
        {
            Ok(Slot::Blob(h.to_string()))
        }
        _ => Err(format!("unexpected entry {} in the bundle", path.display())),
    }
}

/// Merges a bundle into the registry. Everything is verified (manifest, every blob's hash,
/// the catalog's hash and schema, conflicts by name) before anything is committed; a bundle
/// that fails any check leaves the registry unchanged.
pub fn import(reg: &mut Registry, bundle: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let bad = |m: String| Error::format(bundle, m);
    let (mut f, _) = crate::formats::open_regular(bundle)?;
    check_is_tar(&mut f).map_err(bad)?;
    let staging = Staging::new(reg, "import")?;
    let (manifest, declared) = unpack(bundle, f, &staging.0)?;
    // The staged catalog is SQL from a stranger: its schema must be exactly one of ours
    // before anything runs on it; then it is brought to our schema and its rows checked.
    let staged = staging.0.join("catalog.db");
    check_staged(reg, bundle, &staged, &declared)?;
    // A sample of the bundle's cached cells is recomputed here: one wrong number refuses the
    // whole bundle. The sampled cells are trusted; the rest wait in `imported_cells` (or, with
    // --trust-cells, are served as they are).
    let verified = check_cells(reg, &staged, &staging.0, opts).map_err(bad)?;
    let origin = manifest.catalog.blake3.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(opts.max_seconds);
    let _lock = RegistryLock::shared(&reg.root)?;
    let mut rep = merge(
        reg, &staged, &staging.0, bundle, opts, &origin, &verified, deadline,
    )?;
    rep.cells_checked = verified.len();
    drop(_lock);
    rep.thresholds_computed = recompute_thresholds(reg, &staged)?;
    Ok(rep)
}

/// Unpacks a bundle's entries into `dir`, checking each against the manifest (which must come
/// first) as it streams: names, kinds, sizes, hashes, blob headers. Returns the manifest and
/// its blobs' declared sizes by hash.
fn unpack(bundle: &Path, f: File, dir: &Path) -> Result<(Manifest, HashMap<String, u64>)> {
    let bad = |m: String| Error::format(bundle, m);
    let mut ar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut manifest: Option<Manifest> = None;
    let mut declared: HashMap<String, u64> = HashMap::new();
    let mut got_blobs: HashSet<String> = HashSet::new();
    let mut got_catalog = false;
    for entry in ar
        .entries()
        .map_err(|e| bad(format!("not a tar bundle: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad entry name: {e}")))?
            .to_path_buf();
        let kind = entry.header().entry_type();
        let slot = classify(&path).map_err(bad)?;
        if matches!(slot, Slot::Dir) {
            if !kind.is_dir() {
                return Err(bad(format!(
                    "entry {} should be a directory",
                    path.display()
                )));
            }
            continue;
        }
        if !matches!(kind, tar::EntryType::Regular) {
            return Err(bad(format!(
                "entry {} is a {:?}, not a regular file (links are refused)",
                path.display(),
                kind
            )));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| bad(format!("bad size: {e}")))?;
        match slot {
            Slot::Manifest => {
                if manifest.is_some() {
                    return Err(bad("two manifests".into()));
                }
                if size > MAX_MANIFEST {
                    return Err(bad(format!(
                        "manifest declares {size} bytes, over the limit"
                    )));
                }
                let mut buf = Vec::new();
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(format!("truncated manifest: {e}")))?;
                let m: Manifest =
                    serde_json::from_slice(&buf).map_err(|e| bad(format!("bad manifest: {e}")))?;
                if m.format != FORMAT || m.format_version != FORMAT_VERSION {
                    return Err(bad(format!(
                        "not a prh bundle of format version {FORMAT_VERSION}"
                    )));
                }
                if m.schema_version > MIGRATIONS.len() {
                    return Err(bad(format!(
                        "bundle schema version {} is newer than this prh understands ({}); upgrade prh",
                        m.schema_version,
                        MIGRATIONS.len()
                    )));
                }
                for b in &m.blobs {
                    b.hash
                        .parse::<BlobHash>()
                        .map_err(|_| bad(format!("manifest lists a bad hash {:?}", b.hash)))?;
                    if declared.insert(b.hash.clone(), b.bytes).is_some() {
                        return Err(bad(format!("manifest lists blob {} twice", b.hash)));
                    }
                }
                manifest = Some(m);
            }
            Slot::Catalog => {
                let m = manifest
                    .as_ref()
                    .ok_or_else(|| bad("manifest.json must come first".into()))?;
                if size != m.catalog.bytes {
                    return Err(bad(format!(
                        "catalog.db is {size} bytes but the manifest says {}",
                        m.catalog.bytes
                    )));
                }
                let dest = dir.join("catalog.db");
                let hash = copy_hashed(&mut entry, size, &dest)
                    .map_err(|e| bad(format!("catalog.db: {e}")))?;
                if hash != m.catalog.blake3 {
                    return Err(bad("catalog.db does not match the manifest's hash".into()));
                }
                got_catalog = true;
            }
            Slot::Blob(h) => {
                let want = *declared.get(&h).ok_or_else(|| {
                    bad(format!(
                        "blob {h} is not listed in the manifest (or the manifest is not first)"
                    ))
                })?;
                if size != want {
                    return Err(bad(format!(
                        "blob {h} declares {size} bytes but the manifest says {want}"
                    )));
                }
                if !got_blobs.insert(h.clone()) {
                    return Err(bad(format!("blob {h} appears twice")));
                }
                let dest = dir.join(&h);
                let got = copy_hashed(&mut entry, size, &dest)
                    .map_err(|e| bad(format!("blob {h}: {e}")))?;
                if got != h {
                    return Err(bad(format!(
                        "blob {h} does not match its hash (content hashes to {got})"
                    )));
                }
                let mut head = [0u8; matrix::HEADER_LEN];
                File::open(&dest)
                    .and_then(|mut f| f.read_exact(&mut head))
                    .map_err(|_| bad(format!("blob {h} is too short to be a matrix")))?;
                matrix::parse_header(&head)
                    .ok_or_else(|| bad(format!("blob {h} has no valid header")))?;
            }
            Slot::Dir => unreachable!(),
        }
    }
    let manifest = manifest.ok_or_else(|| bad("no manifest.json".into()))?;
    if !got_catalog {
        return Err(bad("no catalog.db".into()));
    }
    let missing: Vec<&String> = declared
        .keys()
        .filter(|h| !got_blobs.contains(*h))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "the manifest lists {} blobs the bundle does not hold (e.g. {})",
            missing.len(),
            missing[0]
        )));
    }
    Ok((manifest, declared))
}

/// Checks a staged catalog before anything of it is merged: exactly prh's schema, brought to
/// ours, rows that make sense, SQLite's integrity check, every blob row held by the bundle
/// (with the manifest's size) or by this registry.
fn check_staged(
    reg: &Registry,
    bundle: &Path,
    staged: &Path,
    declared: &HashMap<String, u64>,
) -> Result<()> {
    let bad = |m: String| Error::format(bundle, m);
    check_schema(staged).map_err(|m| bad(format!("catalog.db: {m}")))?;
    drop(Catalog::open(staged).map_err(|e| bad(format!("catalog.db: {e}")))?);
    check_rows(staged).map_err(|m| bad(format!("catalog.db: {m}")))?;
    {
        let db = Connection::open(staged)?;
        let ok: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(bad(format!("catalog.db fails its integrity check: {ok}")));
        }
        let mut st = db.prepare("SELECT hash, bytes FROM blobs")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (h, bytes) = row?;
            let in_bundle = declared.get(&h).copied();
            let here = h
                .parse::<BlobHash>()
                .map(|hh| reg.store.contains(&hh))
                .unwrap_or(false);
            match in_bundle {
                Some(b) if b != bytes as u64 => {
                    return Err(bad(format!(
                        "catalog says blob {h} has {bytes} bytes, the manifest {b}"
                    )));
                }
                None if !here => {
                    return Err(bad(format!(
                        "catalog references blob {h}, which neither the bundle nor this registry holds"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Computes from the blobs (never taking the bundle's word) the clamp threshold of every layer
/// set the bundle brought (and of each of its layers, for cells clamped per layer), at every q
/// its cells name, so that its cells can be attributed to their checkpoints by queries.
/// Returns how many thresholds were computed.
fn recompute_thresholds(reg: &Registry, staged: &Path) -> Result<usize> {
    let db = Connection::open(staged)?;
    let mut qs: Vec<(f64, Scope)> = Vec::new();
    {
        let mut st = db.prepare("SELECT DISTINCT prep FROM cell_sides")?;
        let keys: Vec<String> = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for k in keys {
            if let Some((q, _, scope)) = crate::query::prep_clamp(&k)
                && !qs.contains(&(q, scope))
            {
                qs.push((q, scope));
            }
        }
    }
    if qs.is_empty() {
        return Ok(0);
    }
    let mut st = db.prepare(
        "SELECT checkpoint_id, dataset_id, pool, blob_hash FROM representations
         ORDER BY checkpoint_id, dataset_id, pool, layer",
    )?;
    let rows: Vec<(i64, i64, String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut sets: Vec<Vec<BlobHash>> = Vec::new();
    let mut last: Option<(i64, i64, String)> = None;
    for (c, d, p, h) in rows {
        let key = Some((c, d, p));
        if key != last {
            sets.push(Vec::new());
            last = key;
        }
        sets.last_mut().expect("pushed").push(h.parse()?);
    }
    let mut computed = 0;
    for layers in &sets {
        for &(q, scope) in &qs {
            match scope {
                Scope::Checkpoint => {
                    crate::sweep::clamp_threshold_cached(reg, layers, q)?;
                    computed += 1;
                }
                Scope::Layer => {
                    for h in layers {
                        crate::sweep::clamp_threshold_cached(reg, std::slice::from_ref(h), q)?;
                        computed += 1;
                    }
                }
            }
        }
    }
    Ok(computed)
}

/// How `import` treats what a bundle claims.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Serve the bundle's cached cells and null samples without recomputing them.
    pub trust_cells: bool,
    /// How many of the bundle's cached cells to recompute before importing anything.
    pub check_cells: usize,
    /// Seed for choosing them.
    pub seed: u64,
    /// Longest the merge may run before it is interrupted and rolled back.
    pub max_seconds: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            trust_cells: false,
            check_cells: 32,
            seed: 0,
            max_seconds: 3600,
        }
    }
}

/// Refuses a file that is not an uncompressed tar, naming what it is instead.
fn check_is_tar(f: &mut File) -> std::result::Result<(), String> {
    use std::io::Seek;
    let mut head = Vec::new();
    (&mut *f)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    let compressed = [
        (&b"\x1f\x8b"[..], "gzip", "gunzip"),
        (&b"\x28\xb5\x2f\xfd"[..], "zstd", "zstd -d"),
        (&b"\xfd7zXZ\x00"[..], "xz", "unxz"),
        (&b"BZh"[..], "bzip2", "bunzip2"),
    ];
    for (magic, name, tool) in compressed {
        if head.starts_with(magic) {
            return Err(format!(
                "a {name}-compressed file, not a prh bundle; decompress it first ({tool}) and import the .prh tar inside"
            ));
        }
    }
    if head.starts_with(b"PK\x03\x04") {
        return Err("a zip archive, not a prh bundle (a tar written by `prh export`)".into());
    }
    if head.len() < 512 || !tar_checksum_ok(&head) {
        return Err(
            "not a prh bundle: not a tar archive (bundles are written by `prh export`)".into(),
        );
    }
    Ok(())
}

/// True when a 512-byte block is a tar header: its checksum field (octal, bytes 148..156)
/// equals the sum of its bytes with that field read as spaces. Holds for v7, ustar and GNU tar.
fn tar_checksum_ok(block: &[u8]) -> bool {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| !matches!(c, '\0' | ' '))
        .collect();
    let Ok(want) = u32::from_str_radix(&text, 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                b as u32
            }
        })
        .sum();
    !text.is_empty() && sum == want
}

/// The schema objects of a catalog (type, name, table, SQL), in a fixed order.
fn schema_objects(db: &Connection) -> rusqlite::Result<Vec<[Option<String>; 4]>> {
    let mut st =
        db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")?;
    st.query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?
        .collect()
}

/// Accepts only a catalog whose schema is exactly what prh's migrations make for its version:
/// no views, triggers, extra tables or changed columns.
fn check_schema(staged: &Path) -> std::result::Result<(), String> {
    use rusqlite::OpenFlags;
    let sql = |e: rusqlite::Error| format!("not a readable SQLite catalog: {e}");
    let db = Connection::open_with_flags(staged, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    db.pragma_update(None, "trusted_schema", "OFF")
        .map_err(sql)?;
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version < 1 || version as usize > MIGRATIONS.len() {
        return Err(format!(
            "schema version {version} is not one this prh knows (1 to {})",
            MIGRATIONS.len()
        ));
    }
    let expected = {
        let mem = Connection::open_in_memory().map_err(sql)?;
        crate::catalog::register_functions(&mem).map_err(sql)?;
        for (_, m) in &MIGRATIONS[..version as usize] {
            mem.execute_batch(m).map_err(sql)?;
        }
        schema_objects(&mem).map_err(sql)?
    };
    let got = schema_objects(&db).map_err(sql)?;
    if got == expected {
        return Ok(());
    }
    let name = |o: &[Option<String>; 4]| {
        format!(
            "{} {}",
            o[0].as_deref().unwrap_or("?"),
            o[1].as_deref().unwrap_or("?")
        )
    };
    for o in &got {
        match expected.iter().find(|e| e[0] == o[0] && e[1] == o[1]) {
            None => {
                return Err(format!(
                    "holds {}, which a prh catalog does not (only prh's own schema is accepted)",
                    name(o)
                ));
            }
            Some(e) if e != o => {
                return Err(format!("{} is not defined as prh defines it", name(o)));
            }
            Some(_) => {}
        }
    }
    Err("lacks part of prh's schema".into())
}

/// Checks the values of a staged catalog (already at our schema): names a listing can print,
/// numbers of the right type, every representation naming a blob row.
fn check_rows(staged: &Path) -> std::result::Result<(), String> {
    let db = Connection::open(staged).map_err(|e| e.to_string())?;
    let names: &[(&str, &str)] = &[
        ("dataset", "SELECT name FROM datasets"),
        ("model", "SELECT name FROM models"),
        ("modality", "SELECT DISTINCT modality FROM models"),
        (
            "family",
            "SELECT DISTINCT family FROM models WHERE family IS NOT NULL",
        ),
        ("checkpoint", "SELECT name FROM checkpoints"),
        ("pool", "SELECT DISTINCT pool FROM representations"),
        ("score", "SELECT DISTINCT name FROM scores"),
        ("meta key", "SELECT DISTINCT key FROM checkpoint_meta"),
    ];
    for (what, q) in names {
        let mut st = db.prepare(q).map_err(|e| e.to_string())?;
        let vals: Vec<rusqlite::types::Value> = st
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        for v in vals {
            let rusqlite::types::Value::Text(t) = v else {
                return Err(format!("a {what} name is not text"));
            };
            validate_name(what, &t).map_err(|e| e.to_string())?;
        }
    }
    let bad_rows: &[(&str, &str)] = &[
        (
            "datasets with a non-integer n",
            "SELECT count(*) FROM datasets WHERE typeof(n) != 'integer' OR n < 1",
        ),
        (
            "blobs with malformed fields",
            "SELECT count(*) FROM blobs WHERE typeof(hash) != 'text' OR length(hash) != 64 OR typeof(n) != 'integer' OR typeof(d) != 'integer' OR typeof(bytes) != 'integer'",
        ),
        (
            "representations with malformed fields",
            "SELECT count(*) FROM representations WHERE typeof(layer) != 'integer' OR typeof(blob_hash) != 'text'",
        ),
        (
            "representations with an unknown layout",
            "SELECT count(*) FROM representations WHERE layout IS NOT NULL AND layout NOT IN ('stacked', 'layers')",
        ),
        (
            "representations naming no blob row",
            "SELECT count(*) FROM representations WHERE blob_hash NOT IN (SELECT hash FROM blobs)",
        ),
        (
            "checkpoints with a non-integer step",
            "SELECT count(*) FROM checkpoints WHERE step IS NOT NULL AND typeof(step) != 'integer'",
        ),
        (
            "scores that are not finite numbers",
            "SELECT count(*) FROM scores WHERE typeof(value) NOT IN ('real', 'integer') OR abs(value) > 1.7976931348623157e308",
        ),
        (
            "cached cells with malformed fields",
            "SELECT count(*) FROM cells WHERE typeof(value) NOT IN ('real', 'integer') OR abs(value) > 1.7976931348623157e308 OR typeof(micros) != 'integer' OR typeof(computed_at) != 'integer'",
        ),
        (
            "cached cells naming no key",
            "SELECT count(*) FROM cells WHERE m NOT IN (SELECT id FROM cell_metrics) OR x NOT IN (SELECT id FROM cell_sides) OR y NOT IN (SELECT id FROM cell_sides)",
        ),
    ];
    {
        let mut st = db
            .prepare("SELECT key, value FROM checkpoint_meta")
            .map_err(|e| e.to_string())?;
        let rows: Vec<(rusqlite::types::Value, rusqlite::types::Value)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        for (k, v) in rows {
            let (rusqlite::types::Value::Text(k), rusqlite::types::Value::Text(v)) = (k, v) else {
                return Err("a meta entry is not text".into());
            };
            crate::registry::validate_meta_value(&k, &v).map_err(|e| e.to_string())?;
        }
    }
    for (what, q) in bad_rows {
        let k: i64 = db
            .query_row(q, [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if k > 0 {
            return Err(format!("{k} {what}"));
        }
    }
    check_cell_keys(&db)
}

/// Every cache key id of a staged catalog must be the one its content derives (ids are how
/// rows from different registries meet: a forged one would file a value under another key).
fn check_cell_keys(db: &Connection) -> std::result::Result<(), String> {
    use rusqlite::types::Value;
    let e = |e: rusqlite::Error| e.to_string();
    let mut st = db
        .prepare("SELECT id, hash, prep FROM cell_sides")
        .map_err(e)?;
    let rows: Vec<(Value, Value, Value)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(e)?;
    for row in rows {
        let ok = match &row {
            // The hash must be one prh writes: 64 lower-case hex digits.
            (Value::Integer(id), Value::Text(h), Value::Text(p)) => {
                h.parse::<BlobHash>().is_ok_and(|b| b.to_hex() == *h)
                    && crate::catalog::side_id(h, p) == *id
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "a cache key side ({:?}) does not match its id",
                row.1
            ));
        }
    }
    let mut st = db
        .prepare("SELECT id, metric, version, params FROM cell_metrics")
        .map_err(e)?;
    let rows: Vec<[Value; 4]> = st
        .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))
        .and_then(|rows| rows.collect())
        .map_err(e)?;
    for row in rows {
        let ok = match &row {
            [
                Value::Integer(id),
                Value::Text(m),
                Value::Integer(v),
                Value::Text(p),
            ] => crate::catalog::metric_id(m, *v, p) == *id,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "a cache key metric ({:?}) does not match its id",
                row[1]
            ));
        }
    }
    Ok(())
}

/// One cached cell's key (ids and content) and value.
struct CellRow {
    ids: [i64; 3],
    hash_x: String,
    hash_y: String,
    metric: String,
    version: i64,
    params: String,
    prep_x: String,
    prep_y: String,
    value: f64,
}

/// Every row of `table` (`cells` or `imported_cells`) with its key spelled out.
fn cell_rows(db: &Connection, table: &str) -> rusqlite::Result<Vec<CellRow>> {
    let mut st = db.prepare(&format!(
        "SELECT sx.hash, sy.hash, k.metric, k.version, k.params, sx.prep, sy.prep, c.value, c.m, c.x, c.y
         FROM {table} c JOIN cell_metrics k ON k.id = c.m
         JOIN cell_sides sx ON sx.id = c.x JOIN cell_sides sy ON sy.id = c.y"
    ))?;
    st.query_map([], |r| {
        Ok(CellRow {
            ids: [r.get(8)?, r.get(9)?, r.get(10)?],
            hash_x: r.get(0)?,
            hash_y: r.get(1)?,
            metric: r.get(2)?,
            version: r.get(3)?,
            params: r.get(4)?,
            prep_x: r.get(5)?,
            prep_y: r.get(6)?,
            value: r.get(7)?,
        })
    })?
    .collect()
}

/// Up to `k` of `rows`, chosen uniformly at random.
fn sample<T>(mut rows: Vec<T>, k: usize, rng: &mut Rng) -> Vec<T> {
    let mut order = rng.permutation(rows.len());
    order.truncate(k);
    // Highest index first, so each swap_remove leaves the indices still to take in place.
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.into_iter().map(|i| rows.swap_remove(i)).collect()
}

/// Recomputes one cell from blobs found by `open`; `None` for a metric or version this prh
/// does not compute.
fn recompute_cell(open: &dyn Fn(&BlobHash) -> Result<Blob>, c: &CellRow) -> Result<Option<f64>> {
    let Some(spec) = spec_from_key(&c.metric, &c.params) else {
        return Ok(None);
    };
    if spec.metric.version() as i64 != c.version {
        return Ok(None);
    }
    let load = |h: &str, p: &str| -> Result<Derived> {
        let (t, norm) =
            prep_from_key(p).ok_or_else(|| Error::Invalid(format!("unreadable prep key {p:?}")))?;
        let x = open(&h.parse()?)?.to_f32_verified()?;
        Ok(Derived::new(prep::prepare(x.view(), t, norm)?))
    };
    let a = load(&c.hash_x, &c.prep_x)?;
    let b = load(&c.hash_y, &c.prep_y)?;
    spec.compute(&a, &b).map(Some)
}

/// True when a recomputed value equals the cached one (up to float rounding).
fn same_value(cached: f64, got: f64) -> bool {
    (got - cached).abs() <= 1e-6 * (1.0 + cached.abs())
}

/// Recomputes a random sample of a staged bundle's cells from its blobs (or ours); returns the
/// sampled cells that matched, or an error naming the first that did not.
fn check_cells(
    reg: &Registry,
    staged: &Path,
    staged_blobs: &Path,
    opts: &ImportOptions,
) -> std::result::Result<Vec<CellRow>, String> {
    let db = Connection::open(staged).map_err(|e| e.to_string())?;
    let rows = cell_rows(&db, "cells").map_err(|e| e.to_string())?;
    let sample = sample(rows, opts.check_cells, &mut Rng::new(opts.seed));
    let open = |h: &BlobHash| -> Result<Blob> {
        let p = staged_blobs.join(h.to_hex());
        if p.is_file() {
            Blob::open_path(&p, h)
        } else {
            reg.store.open(h)
        }
    };
    let mut ok = Vec::new();
    for c in sample {
        match recompute_cell(&open, &c) {
            Ok(None) => {}
            Ok(Some(v)) if same_value(c.value, v) => ok.push(c),
            Ok(Some(v)) => {
                return Err(format!(
                    "its cached {}({}) for {}…×{}… is {}, recomputed here {v}: the bundle's cached results are wrong; nothing imported",
                    c.metric,
                    c.params,
                    &c.hash_x[..12],
                    &c.hash_y[..12],
                    c.value
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot recompute its cached {}({}): {e}; nothing imported",
                    c.metric, c.params
                ));
            }
        }
    }
    Ok(ok)
}

/// Copies `size` bytes from `r` to `dest`, fsyncs, and returns their BLAKE3 hex.
fn copy_hashed(r: &mut dyn Read, size: u64, dest: &Path) -> std::io::Result<String> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(dest)?);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    let mut r = r.take(size);
    while left > 0 {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated",
            ));
        }
        h.update(&buf[..k]);
        f.write_all(&buf[..k])?;
        left -= k as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(h.finalize().to_hex().to_string())
}

#[allow(clippy::too_many_arguments)]
fn merge(
    reg: &mut Registry,
    staged: &Path,
    staged_blobs: &Path,
    bundle: &Path,
    opts: &ImportOptions,
    origin: &str,
    verified: &[CellRow],
    deadline: std::time::Instant,
) -> Result<ImportReport> {
    let conn = reg.catalog.conn();
    conn.execute(
        "ATTACH DATABASE ?1 AS b",
        [staged.to_string_lossy().as_ref()],
    )?;
    // A watchdog interrupts the merge at the deadline; the transaction then rolls back.
    let interrupt = conn.get_interrupt_handle();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
            interrupt.interrupt();
        }
    });
    let result = merge_attached(reg, staged_blobs, bundle, opts, origin, verified);
    drop(done);
    let _ = watchdog.join();
    let _ = reg.catalog.conn().execute("DETACH DATABASE b", []);
    result.map_err(|e| match e {
        Error::Sql(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            Error::format(
                bundle,
                format!(
                    "import took longer than {} s and was rolled back; nothing imported",
                    opts.max_seconds
                ),
            )
        }
        e => e,
    })
}

fn merge_attached(
    reg: &mut Registry,
    staged_blobs: &Path,
    bundle: &Path,
    opts: &ImportOptions,
    origin: &str,
    verified: &[CellRow],
) -> Result<ImportReport> {
    let store_root = reg.root.clone();
    reg.catalog.write(|tx| {
        let mut conflicts: Vec<String> = Vec::new();
        let mut collect = |sql: &str| -> Result<()> {
            let mut st = tx.prepare(sql)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            for r in rows {
                conflicts.push(r?);
            }
            Ok(())
        };
        collect("SELECT 'dataset ' || d.name || ': n = ' || d.n || ' here, ' || bd.n || ' in the bundle'
                 FROM b.datasets bd JOIN main.datasets d ON d.name = bd.name WHERE d.n != bd.n")?;
        collect("SELECT 'model ' || m.name || ': modality ' || m.modality || ' here, ' || bm.modality || ' in the bundle'
                 FROM b.models bm JOIN main.models m ON m.name = bm.name WHERE m.modality != bm.modality")?;
        collect("SELECT 'model ' || bm.name || ' checkpoint ' || bc.name || ' layer ' || br.layer || ' pool ' || br.pool
                        || ' on ' || bd.name || ': a different representation here (' || substr(r.blob_hash, 1, 12) || ') than in the bundle (' || substr(br.blob_hash, 1, 12) || ')'
                 FROM b.representations br
                 JOIN b.checkpoints bc ON bc.id = br.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
                 JOIN b.datasets bd ON bd.id = br.dataset_id
                 JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
                 JOIN main.datasets d ON d.name = bd.name
                 JOIN main.representations r ON r.checkpoint_id = c.id AND r.dataset_id = d.id AND r.layer = br.layer AND r.pool = br.pool
                 WHERE r.blob_hash != br.blob_hash")?;
        collect("SELECT 'meta ' || bk.key || ' of ' || bm.name || ' @ ' || bc.name || ': ' || mk.value || ' here, ' || bk.value || ' in the bundle'
                 FROM b.checkpoint_meta bk JOIN b.checkpoints bc ON bc.id = bk.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
                 JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
                 JOIN main.checkpoint_meta mk ON mk.checkpoint_id = c.id AND mk.key = bk.key
                 WHERE mk.value != bk.value")?;
        collect("SELECT 'score ' || bs.name || ' of ' || bm.name || ' @ ' || bc.name || ': ' || s.value || ' here, ' || bs.value || ' in the bundle'
                 FROM b.scores bs JOIN b.checkpoints bc ON bc.id = bs.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
                 JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
                 JOIN main.scores s ON s.checkpoint_id = c.id AND s.name = bs.name
                 WHERE s.value != bs.value")?;
        if !conflicts.is_empty() {
            let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
            return Err(Error::format(
                bundle,
                format!(
                    "{} conflict(s) with this registry, nothing imported: {}{}",
                    conflicts.len(),
                    shown.join("; "),
                    if conflicts.len() > 10 { "; ..." } else { "" }
                ),
            ));
        }
        let mut rep = ImportReport {
            datasets_new: tx.execute(
                "INSERT INTO main.datasets (name, n, description, created_at)
                 SELECT name, n, description, created_at FROM b.datasets
                 WHERE name NOT IN (SELECT name FROM main.datasets)",
                [],
            )?,
            ..Default::default()
        };
        tx.execute(
            "INSERT INTO main.dataset_samples (dataset_id, idx, sample_id)
             SELECT d.id, s.idx, s.sample_id FROM b.dataset_samples s
             JOIN b.datasets bd ON bd.id = s.dataset_id JOIN main.datasets d ON d.name = bd.name
             WHERE NOT EXISTS (SELECT 1 FROM main.dataset_samples x WHERE x.dataset_id = d.id)",
            [],
        )?;
        rep.models_new = tx.execute(
            "INSERT INTO main.models (name, modality, family, num_params, created_at)
             SELECT name, modality, family, num_params, created_at FROM b.models
             WHERE name NOT IN (SELECT name FROM main.models)",
            [],
        )?;
        rep.checkpoints_new = tx.execute(
            "INSERT INTO main.checkpoints (model_id, name, step, created_at)
             SELECT m.id, bc.name, bc.step, bc.created_at FROM b.checkpoints bc
             JOIN b.models bm ON bm.id = bc.model_id JOIN main.models m ON m.name = bm.name
             WHERE NOT EXISTS (SELECT 1 FROM main.checkpoints c WHERE c.model_id = m.id AND c.name = bc.name)",
            [],
        )?;
        // Blob files first (renamed into place), rows after: no row ever names a missing blob.
        let mut st = tx.prepare("SELECT hash FROM b.blobs WHERE hash NOT IN (SELECT hash FROM main.blobs)")?;
        let new_hashes: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        let store = crate::store::FsBlobStore::new(&store_root);
        for h in &new_hashes {
            let hash: BlobHash = h.parse()?;
            let dest = store.path(&hash);
            if dest.is_file() {
                continue;
            }
            let src = staged_blobs.join(h);
            if !src.is_file() {
                return Err(Error::format(bundle, format!("blob {h} is missing from the bundle")));
            }
            let dir = dest.parent().expect("blob dir");
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            fs::rename(&src, &dest).map_err(|e| Error::io(&dest, e))?;
            rep.blobs_new += 1;
        }
        tx.execute(
            "INSERT OR IGNORE INTO main.blobs (hash, dtype, n, d, bytes, created_at)
             SELECT hash, dtype, n, d, bytes, created_at FROM b.blobs",
            [],
        )?;
        rep.blobs_present =
            tx.query_row("SELECT count(*) FROM b.blobs", [], |r| r.get::<_, i64>(0))? as usize - rep.blobs_new;
        rep.representations_new = tx.execute(
            "INSERT INTO main.representations (checkpoint_id, dataset_id, layer, pool, blob_hash, source, created_at, layout)
             SELECT c.id, d.id, br.layer, br.pool, br.blob_hash, br.source, br.created_at, br.layout
             FROM b.representations br
             JOIN b.checkpoints bc ON bc.id = br.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
             JOIN b.datasets bd ON bd.id = br.dataset_id JOIN main.datasets d ON d.name = bd.name
             WHERE NOT EXISTS (SELECT 1 FROM main.representations r WHERE r.checkpoint_id = c.id
                               AND r.dataset_id = d.id AND r.layer = br.layer AND r.pool = br.pool)",
            [],
        )?;
        // A representation here whose layout was never recorded learns the bundle's.
        tx.execute(
            "UPDATE main.representations AS r SET layout = (
                 SELECT br.layout FROM b.representations br
                 JOIN b.checkpoints bc ON bc.id = br.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
                 JOIN b.datasets bd ON bd.id = br.dataset_id
                 JOIN main.checkpoints c ON c.name = bc.name JOIN main.models m ON m.id = c.model_id AND m.name = bm.name
                 JOIN main.datasets d ON d.name = bd.name
                 WHERE c.id = r.checkpoint_id AND d.id = r.dataset_id AND br.layer = r.layer
                   AND br.pool = r.pool AND br.blob_hash = r.blob_hash)
             WHERE r.layout IS NULL",
            [],
        )?;
        rep.meta_new = tx.execute(
            "INSERT INTO main.checkpoint_meta (checkpoint_id, key, value)
             SELECT c.id, bk.key, bk.value FROM b.checkpoint_meta bk
             JOIN b.checkpoints bc ON bc.id = bk.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
             WHERE NOT EXISTS (SELECT 1 FROM main.checkpoint_meta x WHERE x.checkpoint_id = c.id AND x.key = bk.key)",
            [],
        )?;
        rep.scores_new = tx.execute(
            "INSERT INTO main.scores (checkpoint_id, name, value, higher_is_better)
             SELECT c.id, bs.name, bs.value, bs.higher_is_better FROM b.scores bs
             JOIN b.checkpoints bc ON bc.id = bs.checkpoint_id JOIN b.models bm ON bm.id = bc.model_id
             JOIN main.models m ON m.name = bm.name JOIN main.checkpoints c ON c.model_id = m.id AND c.name = bc.name
             WHERE NOT EXISTS (SELECT 1 FROM main.scores s WHERE s.checkpoint_id = c.id AND s.name = bs.name)",
            [],
        )?;
        // Clamp thresholds are never taken from a bundle: a wrong one would make genuine blobs
        // give wrong numbers. They are recomputed from the blobs on first use.
        // Key ids derive from content (checked when staged), so the bundle's keys are ours: a
        // differing row under one id would be a 64-bit collision, refused rather than merged.
        let clash: i64 = tx.query_row(
            "SELECT (SELECT count(*) FROM b.cell_sides bs JOIN main.cell_sides s ON s.id = bs.id
                     WHERE s.hash != bs.hash OR s.prep != bs.prep)
                  + (SELECT count(*) FROM b.cell_metrics bm JOIN main.cell_metrics m ON m.id = bm.id
                     WHERE m.metric != bm.metric OR m.version != bm.version OR m.params != bm.params)",
            [],
            |r| r.get(0),
        )?;
        if clash > 0 {
            return Err(Error::Invalid(format!(
                "{bundle}: {clash} of its cache key ids are taken here by other keys (a 64-bit hash collision); nothing imported — please report it",
                bundle = bundle.display()
            )));
        }
        tx.execute(
            "INSERT OR IGNORE INTO main.cell_metrics SELECT id, metric, version, params FROM b.cell_metrics",
            [],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO main.cell_sides SELECT id, hash, prep FROM b.cell_sides",
            [],
        )?;
        let cols = "m, x, y, value, micros, computed_at";
        let absent =
            "NOT EXISTS (SELECT 1 FROM main.cells c WHERE c.m = bc.m AND c.x = bc.x AND c.y = bc.y)";
        if opts.trust_cells {
            rep.cells_new = tx.execute(
                &format!("INSERT OR IGNORE INTO main.cells ({cols}) SELECT {cols} FROM b.cells bc"),
                [],
            )?;
            rep.null_samples_new = tx.execute(
                "INSERT OR IGNORE INTO main.null_samples (pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals)
                 SELECT pair_key, kind, metric, version, params, prep_x, prep_y, seed, vals FROM b.null_samples",
                [],
            )?;
        } else {
            for c in verified {
                rep.cells_new += tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO main.cells ({cols}) SELECT {cols} FROM b.cells
                         WHERE m = ?1 AND x = ?2 AND y = ?3"
                    ),
                    c.ids,
                )?;
            }
            rep.cells_quarantined = tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO main.imported_cells ({cols}, origin)
                     SELECT {cols}, ?1 FROM b.cells bc WHERE {absent}"
                ),
                [origin],
            )?;
        }
        Ok(rep)
    })
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub cells_recomputed: usize,
    /// Imported cells that recomputed equal and are now served.
    pub cells_promoted: usize,
    /// Everything wrong, one line each; empty when the registry is sound.
    pub problems: Vec<String>,
    /// Blob files that no catalog row names (garbage for `gc`, e.g. left by a crash between
    /// publishing a blob and committing its rows; not an error).
    pub unreferenced_files: Vec<String>,
}

/// Re-hashes every blob and recomputes `recompute` randomly chosen cached cells.
pub fn verify(reg: &Registry, recompute: usize, seed: u64) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    let ok: String = reg
        .catalog
        .conn()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if ok != "ok" {
        rep.problems
            .push(format!("catalog.db: integrity check: {ok}"));
    }
    let mut st = reg.catalog.conn().prepare(
        "SELECT b.hash, b.dtype, b.n, b.d,
                (SELECT m.name || ' @ ' || c.name || ' layer ' || r.layer FROM representations r
                 JOIN checkpoints c ON c.id = r.checkpoint_id JOIN models m ON m.id = c.model_id
                 WHERE r.blob_hash = b.hash LIMIT 1)
         FROM blobs b ORDER BY b.hash",
    )?;
    let rows: Vec<(String, String, i64, i64, Option<String>)> = st
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let known: HashSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    for (h, dtype, n, d, used) in &rows {
        rep.blobs_checked += 1;
        let used = used.as_deref().unwrap_or("no representation");
        let hash: BlobHash = match h.parse() {
            Ok(x) => x,
            Err(_) => {
                rep.problems.push(format!("blob row {h:?} is not a hash"));
                continue;
            }
        };
        match reg.store.open(&hash) {
            Err(e) => rep.problems.push(format!("blob {h} ({used}): {e}")),
            Ok(b) => {
                if let Err(e) = b.verify() {
                    rep.problems
                        .push(format!("blob {h} ({used}): altered: {e}"));
                } else if b.dtype.name() != dtype || b.n as i64 != *n || b.d as i64 != *d {
                    rep.problems.push(format!(
                        "blob {h} ({used}): header disagrees with the catalog"
                    ));
                }
            }
        }
    }
    if let Ok(dirs) = fs::read_dir(reg.root.join("blobs")) {
        for d in dirs.flatten() {
            if let Ok(files) = fs::read_dir(d.path()) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if !known.contains(&name) {
                        rep.unreferenced_files.push(name);
                    }
                }
            }
        }
    }
    if recompute > 0 {
        recompute_cells(reg, recompute, seed, &mut rep)?;
    }
    Ok(rep)
}

/// Parses a cache row back into the metric that produced it.
pub fn spec_from_key(metric: &str, params: &str) -> Option<MetricSpec> {
    let m: Metric = metric.parse().ok()?;
    let mut s = MetricSpec::new(m);
    let mut kernel_rbf = false;
    for kv in params.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = kv.split_once('=')?;
        match k {
            "k" => s.k = v.parse().ok()?,
            "kernel" => kernel_rbf = v == "rbf",
            "sigma" => {
                s.kernel = Kernel::Rbf {
                    sigma: v.parse().ok()?,
                }
            }
            "cca_dim" => s.cca_dim = v.parse().ok()?,
            "ridge" => s.ridge = v.parse().ok()?,
            "emulate_pymp" => s.emulate_pymp = v == "1",
            "ties" if v == "expected" => s.ties = crate::metrics::TieBreak::Expected,
            _ => return None,
        }
    }
    if !kernel_rbf {
        s.kernel = Kernel::Linear;
    }
    (s.params_key() == params).then_some(s)
}

/// Parses a prep key (`clamp(q=0.95,t=0x…);l2`, `l2`, `raw`) into (threshold, normalise).
pub fn prep_from_key(key: &str) -> Option<(Option<f32>, bool)> {
    let mut threshold = None;
    let mut normalize = false;
    for part in key.split(';') {
        if part == "l2" {
            normalize = true;
        } else if part == "raw" {
        } else if let Some(inner) = part
            .strip_prefix("clamp(")
            .and_then(|p| p.strip_suffix(')'))
        {
            let t = inner.split(',').find_map(|kv| kv.strip_prefix("t=0x"))?;
            threshold = Some(f32::from_bits(u32::from_str_radix(t, 16).ok()?));
        } else {
            return None;
        }
    }
    Some((threshold, normalize))
}

/// Recomputes up to `count` cells: cells imported from bundles first (those that match move
/// into `cells` and are served from then on), then randomly chosen cells of the cache.
fn recompute_cells(reg: &Registry, count: usize, seed: u64, rep: &mut VerifyReport) -> Result<()> {
    let conn = reg.catalog.conn();
    let mut rng = Rng::new(seed);
    let open = |h: &BlobHash| reg.store.open(h);
    let mut left = count;
    for table in ["imported_cells", "cells"] {
        for c in sample(cell_rows(conn, table)?, left, &mut rng) {
            let (hx, hy) = (
                &c.hash_x[..12.min(c.hash_x.len())],
                &c.hash_y[..12.min(c.hash_y.len())],
            );
            let what = format!(
                "{}cell {}({}) {hx}…×{hy}…",
                if table == "cells" { "" } else { "imported " },
                c.metric,
                c.params
            );
            match recompute_cell(&open, &c) {
                Ok(None) => continue, // a metric or version this prh does not compute
                Err(e) => rep.problems.push(format!("{what}: cannot recompute: {e}")),
                Ok(Some(v)) if !same_value(c.value, v) => rep
                    .problems
                    .push(format!("{what}: cached {}, recomputed {v}", c.value)),
                Ok(Some(_)) if table == "imported_cells" => {
                    let cond = "m = ?1 AND x = ?2 AND y = ?3";
                    conn.execute(
                        &format!(
                            "INSERT OR IGNORE INTO cells (m, x, y, value, micros, computed_at)
                             SELECT m, x, y, value, micros, computed_at FROM imported_cells WHERE {cond}"
                        ),
                        c.ids,
                    )?;
                    conn.execute(&format!("DELETE FROM imported_cells WHERE {cond}"), c.ids)?;
                    rep.cells_promoted += 1;
                }
                Ok(Some(_)) => {}
            }
            rep.cells_recomputed += 1;
            left -= 1;
        }
    }
    Ok(())
}

/// True when a staging entry's name (`<what>-<pid>-…`) names a process that no longer runs on
/// this machine: what it left (a killed ingest's or import's files) is garbage now.
fn owner_is_gone(name: &str) -> bool {
    let Some(pid) = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub blobs: Vec<String>,
    pub blob_bytes: u64,
    pub cells: usize,
    pub null_samples: usize,
    pub tmp_entries: usize,
    pub dry_run: bool,
}

/// Removes blobs no representation references, blob files no catalog row names, cache rows of
/// metric versions this prh no longer computes or of blobs that are gone, and staging leftovers
/// of processes that are gone (or older than an hour). Holds the registry lock exclusively, so
/// an ingest that has published its blobs but not yet committed its rows is never disturbed.
pub fn gc(reg: &mut Registry, dry_run: bool) -> Result<GcReport> {
    let mut rep = GcReport {
        dry_run,
        ..Default::default()
    };
    // No writer is between publishing a blob and committing its rows while gc decides and
    // deletes (see `lock`).
    let _lock = RegistryLock::exclusive(&reg.root)?;
    let conn = reg.catalog.conn();
    let mut st = conn.prepare(
        "SELECT hash, bytes FROM blobs WHERE hash NOT IN (SELECT blob_hash FROM representations)",
    )?;
    let unref: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    drop(st);
    let known: HashSet<String> = {
        let mut st = conn.prepare("SELECT hash FROM blobs")?;
        st.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let hour = std::time::Duration::from_secs(3600);
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map(|e| e > hour).unwrap_or(false))
            .unwrap_or(false)
    };
    let mut orphan_files = Vec::new();
    if let Ok(dirs) = fs::read_dir(reg.root.join("blobs")) {
        for d in dirs.flatten() {
            if let Ok(files) = fs::read_dir(d.path()) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    // Under the exclusive lock no writer is between publishing a blob and
                    // committing its rows, so a file without rows is garbage at any age.
                    if !known.contains(&name) {
                        orphan_files.push((name, f.path()));
                    }
                }
            }
        }
    }
    let current: Vec<(String, i64)> = crate::metrics::ALL
        .iter()
        .map(|m| (m.name().to_string(), m.version() as i64))
        .collect();
    // Cells of a metric version this prh no longer computes, or of a blob no representation
    // names any more.
    let stale_cells_sql = "SELECT count(*) FROM cells c WHERE
            c.m IN (SELECT k.id FROM cell_metrics k WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) j
                    WHERE json_extract(j.value, '$[0]') = k.metric AND json_extract(j.value, '$[1]') = k.version))
            OR c.x IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))
            OR c.y IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))";
    let current_json = serde_json::to_string(&current).expect("json");
    rep.cells = conn.query_row(stale_cells_sql, [&current_json], |r| r.get::<_, i64>(0))? as usize;
    rep.null_samples = conn.query_row(
        "SELECT count(*) FROM null_samples n WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) j
            WHERE json_extract(j.value, '$[0]') = n.metric AND json_extract(j.value, '$[1]') = n.version)",
        [&current_json],
        |r| r.get::<_, i64>(0),
    )? as usize;
    for (h, b) in &unref {
        rep.blobs.push(h.clone());
        rep.blob_bytes += *b as u64;
    }
    for (h, p) in &orphan_files {
        rep.blobs.push(h.clone());
        rep.blob_bytes += fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    let mut tmp_old = Vec::new();
    if let Ok(entries) = fs::read_dir(reg.root.join("tmp")) {
        for e in entries.flatten() {
            if old(&e.path()) || owner_is_gone(&e.file_name().to_string_lossy()) {
                tmp_old.push(e.path());
            }
        }
    }
    rep.tmp_entries = tmp_old.len();
    if dry_run {
        return Ok(rep);
    }
    reg.catalog.write(|tx| {
        tx.execute(&stale_cells_sql.replace("SELECT count(*) FROM cells c WHERE", "DELETE FROM cells AS c WHERE"), [&current_json])?;
        tx.execute(
            "DELETE FROM null_samples AS n WHERE NOT EXISTS (SELECT 1 FROM json_each(?1) j
                WHERE json_extract(j.value, '$[0]') = n.metric AND json_extract(j.value, '$[1]') = n.version)",
            [&current_json],
        )?;
        for (h, _) in &unref {
            tx.execute("DELETE FROM blobs WHERE hash = ?1", params![h])?;
        }
        tx.execute(
            "DELETE FROM knn_ties WHERE hash NOT IN (SELECT blob_hash FROM representations)",
            [],
        )?;
        // Quarantined cells already served from `cells`, or of blobs that are gone; then the
        // key dictionaries' entries of those blobs.
        tx.execute_batch(
            "DELETE FROM imported_cells AS i WHERE
                 EXISTS (SELECT 1 FROM cells c WHERE c.m = i.m AND c.x = i.x AND c.y = i.y)
                 OR i.x IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations))
                 OR i.y IN (SELECT id FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations));
             DELETE FROM cell_sides WHERE hash NOT IN (SELECT blob_hash FROM representations);",
        )?;
        Ok(())
    })?;
    for (h, _) in &unref {
        if let Ok(hash) = h.parse::<BlobHash>() {
            let _ = reg.store.remove(&hash);
        }
    }
    for (_, p) in &orphan_files {
        let _ = fs::remove_file(p);
    }
    for p in &tmp_old {
        let _ = if p.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        };
    }
    Ok(rep)
}
