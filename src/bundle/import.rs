//! `prh import`: a bundle unpacked and checked in staging (paths, sizes, hashes, its catalog)
//! before anything is committed, then merged by hash with its cells quarantined.

use super::*;

/// What an import added: the merge's counts, and what was checked and computed here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    #[serde(flatten)]
    pub merged: MergeCounts,
    /// Cells recomputed at import and found equal.
    pub cells_checked: usize,
    /// Clamp thresholds computed here from the imported blobs (layer sets × q).
    pub thresholds_computed: usize,
    /// A shard's bundle: which shard, and whether this registry sealed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardOrigin>,
}

/// The shard a bundle says it is.
#[derive(Debug, Clone, Serialize)]
pub struct ShardOrigin {
    /// `I/N`.
    pub shard: String,
    /// The sweep's digest (equal across the shards of one sweep).
    pub sweep: String,
    /// Sealed by this registry's key: its cells are served as they are.
    pub own: bool,
}

/// Where a bundle entry may go: `manifest.json`, `catalog.db` or `blobs/ab/<hash>`.
pub(super) enum Slot {
    Manifest,
    Catalog,
    Blob(String),
    Dir,
}

pub(super) fn classify(path: &Path) -> std::result::Result<Slot, String> {
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
    // A shard this registry sealed brings cells prh computed from this registry's blobs:
    // served as they are, with nothing recomputed.
    let own = proof::sealed_here(reg, bundle, &manifest)?;
    let opts = &if own {
        ImportOptions {
            trust_cells: true,
            check_cells: 0,
            ..opts.clone()
        }
    } else {
        opts.clone()
    };
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
    rep.shard = manifest.shard.map(|p| ShardOrigin {
        shard: format!("{}/{}", p.index, p.of),
        sweep: p.sweep,
        own,
    });
    drop(guard);
    rep.thresholds_computed = recompute_thresholds(reg, &staged)?;
    Ok(rep)
}

/// Unpacks a bundle's entries into `dir`, checking each against the manifest (which must come
/// first) as it streams: names, kinds, sizes, hashes, blob headers. Returns the manifest and
/// its blobs' declared sizes by hash.
pub(super) fn unpack(
    bundle: &Path,
    f: File,
    dir: &Path,
) -> Result<(Manifest, HashMap<String, u64>)> {
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
pub(super) fn entry_slot<R: Read>(
    entry: &tar::Entry<R>,
) -> std::result::Result<Option<(Slot, u64)>, String> {
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
pub(super) struct Unpacking<'d> {
    pub(super) dir: &'d Path,
    pub(super) manifest: Option<Manifest>,
    pub(super) declared: HashMap<String, u64>,
    pub(super) got_blobs: HashSet<String>,
    pub(super) got_catalog: bool,
}

pub(super) type Checked = std::result::Result<(), String>;

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
pub(super) fn check_staged(
    reg: &Registry,
    bundle: &Path,
    staged: &Path,
    declared: &HashMap<String, u64>,
) -> Result<()> {
    let bad = |m: String| Error::format(bundle, m);
    snapshot::check(staged).map_err(|m| bad(format!("catalog.db: {m}")))?;
    snapshot::names_to_nfc(staged).map_err(|m| bad(format!("catalog.db: {m}")))?;
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
pub(super) fn recompute_thresholds(reg: &Registry, staged: &Path) -> Result<usize> {
    let mut qs: Vec<(f64, Scope, prep::ClampRule)> = Vec::new();
    for k in snapshot::preps(staged)? {
        if let Some((q, _, scope, rule)) = prep::clamp_of_key(&k)
            && !qs.contains(&(q, scope, rule))
        {
            qs.push((q, scope, rule));
        }
    }
    if qs.is_empty() {
        return Ok(0);
    }
    let sets = snapshot::layer_sets(staged)?;
    let mut computed = 0;
    for layers in &sets {
        for &(q, scope, rule) in &qs {
            match scope {
                Scope::Checkpoint => {
                    crate::sweep::clamp_threshold_cached(reg, layers, q, rule)?;
                    computed += 1;
                }
                Scope::Layer => {
                    for h in layers {
                        let one = std::slice::from_ref(h);
                        crate::sweep::clamp_threshold_cached(reg, one, q, rule)?;
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
pub(super) fn check_is_tar(f: &mut File) -> std::result::Result<(), String> {
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
pub(super) fn tar_checksum_ok(block: &[u8]) -> bool {
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

/// Recomputes a random sample of a staged bundle's cells from its blobs (or ours); returns the
/// sampled cells that matched, or an error naming the first that did not.
pub(super) fn check_cells(
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
pub(super) fn copy_hashed(r: &mut dyn Read, size: u64, dest: &Path) -> std::io::Result<String> {
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
pub(super) fn merge(
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
            Error::Interrupted => Error::TimedOut(format!(
                "{}: import took longer than {} s and was rolled back; nothing imported",
                bundle.display(),
                opts.max_seconds
            ))
            .hint("give a larger --max-seconds"),
            e => e.prefixed(&bundle.display().to_string()),
        })?;
    Ok(ImportReport {
        merged: c,
        ..Default::default()
    })
}
