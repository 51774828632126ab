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

use serde::{Deserialize, Serialize};

use crate::catalog::sqlite::snapshot;
use crate::catalog::{CellRow, CellTable, GuardMode, MIGRATIONS, MergeCounts, MergeOptions};
use crate::error::{Error, Result};
use crate::matrix;
use crate::metrics::{Derived, MetricSpec, Scope, prep};
use crate::registry::Registry;
use crate::rng::Rng;
use crate::store::{Blob, BlobHash};

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
    let info = reg.catalog.export_snapshot(&snap, models)?;
    let blobs = info
        .blobs
        .iter()
        .map(|(h, bytes)| BlobEntry {
            hash: h.to_hex(),
            bytes: *bytes,
        })
        .collect();
    let cat_bytes = fs::read(&snap).map_err(|e| Error::io(&snap, e))?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        prh_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: info.schema_version,
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
        for (name, bytes) in [("manifest.json", &mjson), ("catalog.db", &cat_bytes)] {
            append(
                &mut tar,
                name,
                &mut bytes.as_slice(),
                bytes.len() as u64,
                &tmp_out,
            )?;
        }
        for b in &manifest.blobs {
            let h: BlobHash = b.hash.parse()?;
            let blob = reg.store.get(&h).map_err(|e| match e {
                Error::CorruptBlob { msg, .. } => Error::CorruptBlob {
                    hash: b.hash.clone(),
                    msg: format!(
                        "{msg}, and the catalog says {} bytes; run `prh verify`, nothing exported",
                        b.bytes
                    ),
                },
                e if e.kind() == crate::error::ErrorKind::Unavailable => e,
                e => Error::Corrupt(format!(
                    "blob {} is missing ({e}); run `prh verify`",
                    b.hash
                )),
            })?;
            let len = blob.bytes().len() as u64;
            if len != b.bytes {
                return Err(Error::CorruptBlob {
                    hash: b.hash.clone(),
                    msg: format!(
                        "{len} bytes stored, and the catalog says {} bytes; run `prh verify`, nothing exported",
                        b.bytes
                    ),
                });
            }
            // Hashed while it streams into the tar: a blob altered on disk is never exported.
            let mut r = HashingReader(blob.bytes(), blake3::Hasher::new());
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
        models: info.models,
        representations: info.representations,
        blobs: manifest.blobs.len(),
        cells: info.cells,
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
        return Err(Error::Conflict(format!(
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

/// What an import added: the merge's counts, and what was checked and computed here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    #[serde(flatten)]
    pub merged: MergeCounts,
    /// Cells recomputed at import and found equal.
    pub cells_checked: usize,
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
    let guard = reg.catalog.blob_guard(GuardMode::Writer)?;
    let mut rep = merge(
        reg, &staged, &staging.0, bundle, opts, &origin, &verified, deadline,
    )?;
    rep.cells_checked = verified.len();
    drop(guard);
    rep.thresholds_computed = recompute_thresholds(reg, &staged)?;
    Ok(rep)
}

/// Unpacks a bundle's entries into `dir`, checking each against the manifest (which must come
/// first) as it streams: names, kinds, sizes, hashes, blob headers. Returns the manifest and
/// its blobs' declared sizes by hash.
fn unpack(bundle: &Path, f: File, dir: &Path) -> Result<(Manifest, HashMap<String, u64>)> {
    let bad = |m: String| Error::format(bundle, m);
    let mut ar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut u = Unpacking {
        dir,
        manifest: None,
        declared: HashMap::new(),
        got_blobs: HashSet::new(),
        got_catalog: false,
    };
    for entry in ar
        .entries()
        .map_err(|e| bad(format!("not a tar bundle: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar entry: {e}")))?;
        let Some((slot, size)) = entry_slot(&entry).map_err(bad)? else {
            continue; // a directory
        };
        match slot {
            Slot::Manifest => u.manifest(&mut entry, size),
            Slot::Catalog => u.catalog(&mut entry, size),
            Slot::Blob(h) => u.blob(&mut entry, size, h),
            Slot::Dir => unreachable!("directories are skipped"),
        }
        .map_err(bad)?;
    }
    u.finish().map_err(bad)
}

/// Where a tar entry goes and its size; `None` for a directory. Anything but directories
/// and regular files (links, devices) is refused.
fn entry_slot<R: Read>(entry: &tar::Entry<R>) -> std::result::Result<Option<(Slot, u64)>, String> {
    let path = entry
        .path()
        .map_err(|e| format!("bad entry name: {e}"))?
        .to_path_buf();
    let kind = entry.header().entry_type();
    let slot = classify(&path)?;
    if matches!(slot, Slot::Dir) {
        if !kind.is_dir() {
            return Err(format!("entry {} should be a directory", path.display()));
        }
        return Ok(None);
    }
    if !matches!(kind, tar::EntryType::Regular) {
        return Err(format!(
            "entry {} is a {:?}, not a regular file (links are refused)",
            path.display(),
            kind
        ));
    }
    let size = entry
        .header()
        .size()
        .map_err(|e| format!("bad size: {e}"))?;
    Ok(Some((slot, size)))
}

/// A bundle being unpacked: what has arrived so far, checked against the manifest.
struct Unpacking<'d> {
    dir: &'d Path,
    manifest: Option<Manifest>,
    declared: HashMap<String, u64>,
    got_blobs: HashSet<String>,
    got_catalog: bool,
}

type Checked = std::result::Result<(), String>;

impl Unpacking<'_> {
    /// `manifest.json`: once, within the size limit, of our format and a schema we know, each
    /// blob listed once under a valid hash.
    fn manifest(&mut self, entry: &mut impl Read, size: u64) -> Checked {
        if self.manifest.is_some() {
            return Err("two manifests".into());
        }
        if size > MAX_MANIFEST {
            return Err(format!("manifest declares {size} bytes, over the limit"));
        }
        let mut buf = Vec::new();
        entry
            .take(size)
            .read_to_end(&mut buf)
            .map_err(|e| format!("truncated manifest: {e}"))?;
        let m: Manifest = serde_json::from_slice(&buf).map_err(|e| format!("bad manifest: {e}"))?;
        if m.format != FORMAT || m.format_version != FORMAT_VERSION {
            return Err(format!(
                "not a prh bundle of format version {FORMAT_VERSION}"
            ));
        }
        if m.schema_version > MIGRATIONS.len() {
            return Err(format!(
                "bundle schema version {} is newer than this prh understands ({}); upgrade prh",
                m.schema_version,
                MIGRATIONS.len()
            ));
        }
        for b in &m.blobs {
            b.hash
                .parse::<BlobHash>()
                .map_err(|_| format!("manifest lists a bad hash {:?}", b.hash))?;
            if self.declared.insert(b.hash.clone(), b.bytes).is_some() {
                return Err(format!("manifest lists blob {} twice", b.hash));
            }
        }
        self.manifest = Some(m);
        Ok(())
    }

    /// `catalog.db`: after the manifest, with its size and hash.
    fn catalog(&mut self, entry: &mut impl Read, size: u64) -> Checked {
        let m = self
            .manifest
            .as_ref()
            .ok_or("manifest.json must come first")?;
        if size != m.catalog.bytes {
            return Err(format!(
                "catalog.db is {size} bytes but the manifest says {}",
                m.catalog.bytes
            ));
        }
        let dest = self.dir.join("catalog.db");
        let hash = copy_hashed(entry, size, &dest).map_err(|e| format!("catalog.db: {e}"))?;
        if hash != m.catalog.blake3 {
            return Err("catalog.db does not match the manifest's hash".into());
        }
        self.got_catalog = true;
        Ok(())
    }

    /// `blobs/ab/<hash>`: listed in the manifest with this size, once, hashing to its name,
    /// with a matrix header.
    fn blob(&mut self, entry: &mut impl Read, size: u64, h: String) -> Checked {
        let want = *self.declared.get(&h).ok_or_else(|| {
            format!("blob {h} is not listed in the manifest (or the manifest is not first)")
        })?;
        if size != want {
            return Err(format!(
                "blob {h} declares {size} bytes but the manifest says {want}"
            ));
        }
        if !self.got_blobs.insert(h.clone()) {
            return Err(format!("blob {h} appears twice"));
        }
        let dest = self.dir.join(&h);
        let got = copy_hashed(entry, size, &dest).map_err(|e| format!("blob {h}: {e}"))?;
        if got != h {
            return Err(format!(
                "blob {h} does not match its hash (content hashes to {got})"
            ));
        }
        let mut head = [0u8; matrix::HEADER_LEN];
        File::open(&dest)
            .and_then(|mut f| f.read_exact(&mut head))
            .map_err(|_| format!("blob {h} is too short to be a matrix"))?;
        matrix::parse_header(&head).ok_or_else(|| format!("blob {h} has no valid header"))?;
        Ok(())
    }

    /// Everything the manifest promised arrived.
    fn finish(self) -> std::result::Result<(Manifest, HashMap<String, u64>), String> {
        let manifest = self.manifest.ok_or("no manifest.json")?;
        if !self.got_catalog {
            return Err("no catalog.db".into());
        }
        let missing: Vec<&String> = self
            .declared
            .keys()
            .filter(|h| !self.got_blobs.contains(*h))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the manifest lists {} blobs the bundle does not hold (e.g. {})",
                missing.len(),
                missing[0]
            ));
        }
        Ok((manifest, self.declared))
    }
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
    snapshot::check(staged).map_err(|m| bad(format!("catalog.db: {m}")))?;
    {
        for (h, bytes) in snapshot::blobs(staged)? {
            let in_bundle = declared.get(&h).copied();
            let here = h
                .parse::<BlobHash>()
                .map(|hh| reg.store.exists(&hh))
                .unwrap_or(Ok(false))?;
            match in_bundle {
                Some(b) if b != bytes => {
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
    let mut qs: Vec<(f64, Scope)> = Vec::new();
    for k in snapshot::preps(staged)? {
        if let Some((q, _, scope)) = prep::clamp_of_key(&k)
            && !qs.contains(&(q, scope))
        {
            qs.push((q, scope));
        }
    }
    if qs.is_empty() {
        return Ok(0);
    }
    let sets = snapshot::layer_sets(staged)?;
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
    let Some(spec) = MetricSpec::from_key(&c.metric, &c.params) else {
        return Ok(None);
    };
    if spec.metric.version() as i64 != c.version {
        return Ok(None);
    }
    let load = |h: &str, p: &str| -> Result<Derived> {
        let (t, norm) = prep::from_key(p)
            .ok_or_else(|| Error::Corrupt(format!("unreadable prep key {p:?}")))?;
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
    let rows = snapshot::cell_rows(staged).map_err(|e| e.to_string())?;
    let sample = sample(rows, opts.check_cells, &mut Rng::new(opts.seed));
    let open = |h: &BlobHash| -> Result<Blob> {
        let p = staged_blobs.join(h.to_hex());
        if p.is_file() {
            Blob::open_path(&p, h)
        } else {
            reg.store.get(h)
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

/// Merges the checked snapshot in one transaction: blob files are moved into the store before
/// any row naming them is written.
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
    let ids: Vec<[i64; 3]> = verified.iter().map(|c| c.ids).collect();
    let store = &reg.store;
    let mut publish = |hashes: &[BlobHash]| -> Result<usize> {
        let mut placed = 0;
        for hash in hashes {
            if store.exists(hash)? {
                continue;
            }
            let h = hash.to_hex();
            let src = staged_blobs.join(&h);
            if !src.is_file() {
                return Err(Error::format(
                    bundle,
                    format!("blob {h} is missing from the bundle"),
                ));
            }
            // Hashed against its name while it was unpacked.
            placed += store.put_file(&src, hash)? as usize;
        }
        Ok(placed)
    };
    let merge = MergeOptions {
        trust_cells: opts.trust_cells,
        verified: &ids,
        origin,
        deadline,
        publish: &mut publish,
    };
    let c = reg
        .catalog
        .merge_snapshot(staged, merge)
        .map_err(|e| match e {
            Error::Interrupted => Error::format(
                bundle,
                format!(
                    "import took longer than {} s and was rolled back; nothing imported",
                    opts.max_seconds
                ),
            ),
            e => e.prefixed(&bundle.display().to_string()),
        })?;
    Ok(ImportReport {
        merged: c,
        ..Default::default()
    })
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Blobs re-hashed and their headers compared with the catalog.
    pub blobs_checked: usize,
    /// Cached cells recomputed from their blobs.
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
pub fn verify(reg: &mut Registry, recompute: usize, seed: u64) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    if let Some(found) = reg.catalog.integrity_check()? {
        rep.problems
            .push(format!("catalog.db: integrity check: {found}"));
    }
    let rows = reg.catalog.blobs()?;
    for b in &rows {
        rep.blobs_checked += 1;
        let used = b.used_by.as_deref().unwrap_or("no representation");
        let (hash, h) = (&b.row.hash, b.row.hash.to_hex());
        match reg.store.get(hash) {
            Err(e) => rep.problems.push(format!("blob {h} ({used}): {e}")),
            Ok(blob) => {
                if let Err(e) = blob.verify() {
                    rep.problems
                        .push(format!("blob {h} ({used}): altered: {e}"));
                } else if blob.dtype.name() != b.row.dtype || blob.n != b.row.n || blob.d != b.row.d
                {
                    rep.problems.push(format!(
                        "blob {h} ({used}): header disagrees with the catalog"
                    ));
                }
            }
        }
    }
    let known = rows.iter().map(|b| b.row.hash).collect();
    rep.unreferenced_files = stray_blobs(reg, &known)?
        .iter()
        .map(BlobHash::to_hex)
        .collect();
    if recompute > 0 {
        recompute_cells(reg, recompute, seed, &mut rep)?;
    }
    Ok(rep)
}

/// Recomputes up to `count` cells: cells imported from bundles first (those that match move
/// into `cells` and are served from then on), then randomly chosen cells of the cache.
fn recompute_cells(
    reg: &mut Registry,
    count: usize,
    seed: u64,
    rep: &mut VerifyReport,
) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut left = count;
    for table in [CellTable::Imported, CellTable::Served] {
        for c in sample(reg.catalog.cell_rows(table)?, left, &mut rng) {
            let (hx, hy) = (
                &c.hash_x[..12.min(c.hash_x.len())],
                &c.hash_y[..12.min(c.hash_y.len())],
            );
            let what = format!(
                "{}cell {}({}) {hx}…×{hy}…",
                if table == CellTable::Served {
                    ""
                } else {
                    "imported "
                },
                c.metric,
                c.params
            );
            let open = |h: &BlobHash| reg.store.get(h);
            match recompute_cell(&open, &c) {
                Ok(None) => continue, // a metric or version this prh does not compute
                Err(e) => rep.problems.push(format!("{what}: cannot recompute: {e}")),
                Ok(Some(v)) if !same_value(c.value, v) => rep
                    .problems
                    .push(format!("{what}: cached {}, recomputed {v}", c.value)),
                Ok(Some(_)) if table == CellTable::Imported => {
                    reg.catalog.promote_cell(c.ids)?;
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

/// Stored blobs that no catalog row (of the hashes `known`) names.
fn stray_blobs(reg: &Registry, known: &HashSet<BlobHash>) -> Result<Vec<BlobHash>> {
    Ok(reg
        .store
        .list()?
        .into_iter()
        .filter(|h| !known.contains(h))
        .collect())
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

/// How `gc` runs.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Report only; remove nothing.
    pub dry_run: bool,
    /// Unnamed blobs in a shared object store younger than this are kept
    /// ([`crate::store::BlobStore::age`]).
    pub min_age: std::time::Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            min_age: crate::store::ORPHAN_MIN_AGE,
        }
    }
}

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Blobs removed: rows no representation references, and files no row names.
    pub blobs: Vec<String>,
    /// Their size.
    pub blob_bytes: u64,
    /// Cached cells of metric versions this prh no longer computes, or of removed blobs.
    pub cells: usize,
    /// Cached null and bootstrap draws of such metric versions.
    pub null_samples: usize,
    /// Staging leftovers of processes that are gone, or older than an hour.
    pub tmp_entries: usize,
    /// Blobs no row names that a shared object store has held for less than `min_age`: kept
    /// (a writer elsewhere may be about to name them); a later gc takes them.
    pub young_blobs_kept: usize,
    /// Nothing was removed; the report says what would have been.
    pub dry_run: bool,
}

/// Removes blobs no representation references, blob files no catalog row names, cache rows of
/// metric versions this prh no longer computes or of blobs that are gone, and staging leftovers
/// of processes that are gone (or older than an hour). Holds the catalog's blob guard
/// exclusively ([`crate::catalog::Catalog::blob_guard`]: a file lock for SQLite, an advisory
/// lock for PostgreSQL, so every machine sharing the catalog takes part), so an ingest that has
/// published its blobs but not yet committed its rows is never disturbed.
pub fn gc(reg: &mut Registry, opts: GcOptions) -> Result<GcReport> {
    let dry_run = opts.dry_run;
    let mut rep = GcReport {
        dry_run,
        ..Default::default()
    };
    // No writer is between publishing a blob and committing its rows while gc decides and
    // deletes (see `lock`).
    let _guard = reg.catalog.blob_guard(GuardMode::Collector)?;
    let current: Vec<(&str, u32)> = crate::metrics::ALL
        .iter()
        .map(|m| (m.name(), m.version()))
        .collect();
    let plan = reg.catalog.gc_plan(&current)?;
    let known = reg.catalog.blob_hashes()?.into_iter().collect();
    let hour = std::time::Duration::from_secs(3600);
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map(|e| e > hour).unwrap_or(false))
            .unwrap_or(false)
    };
    // Under the exclusive blob guard no writer (on any machine sharing the catalog) is
    // between publishing a blob and committing its rows, so a stored blob without rows is
    // garbage — except, in a shared object store, one written within the last hour, which a
    // writer that does not take the guard (an older prh) may still be about to name.
    let mut orphan_files = Vec::new();
    for h in stray_blobs(reg, &known)? {
        if reg.store.age(&h)?.is_some_and(|a| a < opts.min_age) {
            rep.young_blobs_kept += 1;
        } else {
            orphan_files.push(h);
        }
    }
    rep.cells = plan.stale_cells;
    rep.null_samples = plan.stale_draws;
    for (h, b) in &plan.unreferenced {
        rep.blobs.push(h.to_hex());
        rep.blob_bytes += *b;
    }
    for h in &orphan_files {
        rep.blobs.push(h.to_hex());
        rep.blob_bytes += reg.store.get(h).map_or(0, |b| b.bytes().len() as u64);
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
    let unreferenced: Vec<BlobHash> = plan.unreferenced.iter().map(|(h, _)| *h).collect();
    reg.catalog.gc_apply(&current, &unreferenced)?;
    for h in unreferenced.iter().chain(&orphan_files) {
        let _ = reg.store.delete(h);
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
