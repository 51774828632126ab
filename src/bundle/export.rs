//! `prh export`: a consistent snapshot of the catalog and the blobs it names, hashed as they
//! stream into one tar; nothing is left behind on failure.

use super::*;

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
    write(reg, out, models, &|_| Ok(false), None)
}

/// Writes a shard's bundle (crate::shard): the catalog of `models` and what they need, without
/// the blobs `leave_out` names (the ones the registry it is for holds), sealed by `prove`
/// (given the catalog's hash).
pub(crate) fn export_shard(
    reg: &Registry,
    out: &Path,
    models: &[String],
    leave_out: &dyn Fn(&BlobHash) -> Result<bool>,
    prove: &dyn Fn(&str) -> ShardProof,
) -> Result<ExportReport> {
    write(reg, out, Some(models), leave_out, Some(prove))
}

fn write(
    reg: &Registry,
    out: &Path,
    models: Option<&[String]>,
    leave_out: &dyn Fn(&BlobHash) -> Result<bool>,
    prove: Option<&dyn Fn(&str) -> ShardProof>,
) -> Result<ExportReport> {
    let staging = Staging::new(reg, "export")?;
    let snap = staging.0.join("catalog.db");
    let info = reg.catalog.export_snapshot(&snap, models)?;
    let mut blobs = Vec::with_capacity(info.blobs.len());
    for (h, bytes) in &info.blobs {
        if !leave_out(h)? {
            blobs.push(BlobEntry {
                hash: h.to_hex(),
                bytes: *bytes,
            });
        }
    }
    let cat_bytes = fs::read(&snap).map_err(|e| Error::io(&snap, e))?;
    let cat_hash = blake3::hash(&cat_bytes).to_hex().to_string();
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        prh_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: info.schema_version,
        shard: prove.map(|p| p(&cat_hash)),
        catalog: FileEntry {
            bytes: cat_bytes.len() as u64,
            blake3: cat_hash,
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
pub(super) struct RemoveOnDrop(pub(super) Option<PathBuf>);

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
pub(super) struct HashingReader<R>(pub(super) R, pub(super) blake3::Hasher);

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.0.read(buf)?;
        self.1.update(&buf[..k]);
        Ok(k)
    }
}

pub(super) fn append<W: Write>(
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

pub(super) struct CountingReader<R>(pub(super) R, pub(super) u64);

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.0.read(buf)?;
        self.1 += k as u64;
        Ok(k)
    }
}
