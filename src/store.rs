//! Content-addressed, immutable blob storage (docs/design.md §1–2), behind one interface.
//!
//! A blob is the canonical encoding of one matrix: the 32-byte header of
//! [`crate::matrix::canonical_header`] followed by the row-major little-endian elements.
//! Its name is the BLAKE3 hash of exactly those bytes, so `b3sum blobs/ab/<hash>` prints
//! `<hash>`. [`BlobStore`] is shaped for object stores: a blob is streamed in and hashed as it
//! comes ([`BlobStore::stage`]), sealed, and only then published under its name in one atomic
//! step, so no reader ever sees part of one; [`BlobStore::put`] does all three and checks the
//! hash it expects. Blobs are never rewritten. Implementations: [`FsBlobStore`] (files under
//! `blobs/`, staged in `tmp/`, fsynced and renamed into place; read through a memory map) and
//! [`MemoryBlobStore`].

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use memmap2::Mmap;
use ndarray::Array2;

use crate::error::{Error, Result};
use crate::matrix::{self, DType, HEADER_LEN};

mod memory;
mod object;
mod overlay;
pub use memory::MemoryBlobStore;
pub use object::ObjectBlobStore;
pub use overlay::OverlayBlobStore;

/// BLAKE3 hash of a blob's bytes: the identity of a representation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl serde::Serialize for BlobHash {
    /// As lower-case hex, the way every listing and file names it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", &self.to_hex()[..12])
    }
}

impl FromStr for BlobHash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        blake3::Hash::from_hex(s)
            .map(|h| BlobHash(*h.as_bytes()))
            .map_err(|_| Error::Invalid(format!("not a blob hash (64 hex digits): {s:?}")))
    }
}

/// How long gc leaves an unnamed blob in a shared object store alone by default
/// ([`BlobStore::age`]).
pub const ORPHAN_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where blobs live. See the module documentation.
pub trait BlobStore: Send + Sync {
    /// Starts a new blob: bytes written to the sink are hashed as they come; nothing is
    /// visible under a name until the sealed blob is published. Dropped, it leaves nothing.
    fn stage(&self) -> Result<Box<dyn BlobSink>>;
    /// Reads a stored blob (the local store maps the file; its header is checked, its content
    /// hash by [`Blob::verify`]).
    fn get(&self, hash: &BlobHash) -> Result<Blob>;
    /// Whether a blob is stored; an error when the store cannot tell.
    fn exists(&self, hash: &BlobHash) -> Result<bool>;
    /// Every stored blob.
    fn list(&self) -> Result<Vec<BlobHash>>;
    /// Removes a blob (garbage collection and the undoing of a failed write only).
    fn delete(&self, hash: &BlobHash) -> Result<()>;
    /// How long ago a stored blob was written, where gc must ask: in a shared object store a
    /// writer elsewhere that does not take the catalog's blob guard (an older prh) may be
    /// between uploading a blob and naming it, so gc leaves unnamed blobs younger than its
    /// `min_age` alone. `None` for the local store, whose writers all take the guard.
    fn age(&self, _hash: &BlobHash) -> Result<Option<std::time::Duration>> {
        Ok(None)
    }
    /// Where a blob lives, for people: a path, or a URL.
    fn location(&self, hash: &BlobHash) -> String;
    /// Stores the file at `path`, whose bytes were already hashed to `hash` as it was written,
    /// and removes it. The local store renames it into place; the default copies it through
    /// [`BlobStore::put`], checking the hash again. Returns whether the blob is new.
    /// Streams a blob in from `r` and publishes it, all or nothing. With `expect`, bytes that
    /// hash to anything else are refused and nothing is stored. Returns the hash and whether
    /// the blob is new.
    fn put(&self, r: &mut dyn Read, expect: Option<&BlobHash>) -> Result<(BlobHash, bool)> {
        let mut sink = self.stage()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = r
                .read(&mut buf)
                .map_err(|e| Error::Failed(format!("reading a blob to store: {e}")))?;
            if k == 0 {
                break;
            }
            sink.write(&buf[..k])?;
        }
        let sealed = sink.seal()?;
        let hash = sealed.hash();
        if let Some(want) = expect
            && *want != hash
        {
            return Err(Error::CorruptBlob {
                hash: want.to_hex(),
                msg: format!("content hashes to {hash}; nothing stored"),
            });
        }
        Ok((hash, sealed.publish()?))
    }

    fn put_file(&self, path: &Path, hash: &BlobHash) -> Result<bool> {
        copy_in(self, path, hash)
    }
}

/// Streams the file at `path` into `store` through [`BlobStore::put`] (the hash checked
/// again), then removes it. Returns whether the blob is new.
fn copy_in<S: BlobStore + ?Sized>(store: &S, path: &Path, hash: &BlobHash) -> Result<bool> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let (_, new) = store.put(&mut f, Some(hash))?;
    drop(f);
    fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    Ok(new)
}

/// A blob being written. See [`BlobStore::stage`].
pub trait BlobSink: Send {
    /// Appends bytes.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn len(&self) -> u64;
    /// True when nothing has been written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Finishes writing and computes the hash; the blob is not visible yet.
    fn seal(self: Box<Self>) -> Result<Box<dyn SealedBlob>>;
}

/// A blob fully written and hashed, not yet visible. Dropped unpublished, it leaves nothing.
pub trait SealedBlob: Send {
    fn hash(&self) -> BlobHash;
    /// Size in bytes, header included.
    fn len(&self) -> u64;
    /// True for a blob of no bytes (never a valid matrix).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes the blob visible under its name in one atomic step; false (and the copy is
    /// discarded) when that blob was already stored.
    fn publish(self: Box<Self>) -> Result<bool>;
}

/// Blobs as files under `<root>/blobs/ab/<hash>`, staged in `<root>/tmp/`.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store rooted at a registry directory (which holds `blobs/` and `tmp/`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsBlobStore { root: root.into() }
    }

    /// Path of the blob with this hash (whether or not it exists).
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Creates `blobs/` and `tmp/`.
    pub fn create_dirs(&self) -> Result<()> {
        for d in ["blobs", "tmp"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

impl BlobStore for FsBlobStore {
    fn stage(&self) -> Result<Box<dyn BlobSink>> {
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        let tmp_path = tmp_dir.join(format!(
            "blob-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        Ok(Box::new(BlobWriter {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
            tmp_path,
            blobs_dir: self.root.join("blobs"),
            len: 0,
            finished: false,
        }))
    }

    fn get(&self, hash: &BlobHash) -> Result<Blob> {
        Blob::open_path(&self.path(hash), hash)
    }

    fn exists(&self, hash: &BlobHash) -> Result<bool> {
        let p = self.path(hash);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    fn list(&self) -> Result<Vec<BlobHash>> {
        let dir = self.root.join("blobs");
        let mut out = Vec::new();
        for d in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let d = d.map_err(|e| Error::io(&dir, e))?.path();
            if !d.is_dir() {
                continue;
            }
            for f in fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
                let f = f.map_err(|e| Error::io(&d, e))?;
                // Only names prh writes: anything else in blobs/ is not a blob.
                if let Some(h) = f
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<BlobHash>().ok().filter(|h| h.to_hex() == n))
                {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, hash: &BlobHash) -> Result<()> {
        let p = self.path(hash);
        fs::remove_file(&p).map_err(|e| Error::io(&p, e))
    }

    fn location(&self, hash: &BlobHash) -> String {
        self.path(hash).display().to_string()
    }

    fn put_file(&self, path: &Path, hash: &BlobHash) -> Result<bool> {
        let dest = self.path(hash);
        if dest.is_file() {
            fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            return Ok(false);
        }
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(path, e))?;
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match fs::rename(path, &dest) {
            Ok(()) => Ok(true),
            // Blobs on another file system: copied through the store, hash checked again.
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => copy_in(self, path, hash),
            Err(e) => Err(Error::io(&dest, e)),
        }
    }
}

impl Blob {
    /// Opens the blob file at `path` that should hold `hash` (checked by [`Blob::verify`]).
    pub fn open_path(path: &Path, hash: &BlobHash) -> Result<Blob> {
        let path = path.to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: blobs are immutable once renamed into place; nobody writes to them.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Blob::parse(*hash, Bytes::Mapped(map))
    }

    /// A blob over bytes that should hold `hash`: its header checked against its size.
    pub fn parse(hash: BlobHash, map: Bytes) -> Result<Blob> {
        let hash = &hash;
        let (dtype, n, d) = matrix::parse_header(&map).ok_or_else(|| Error::CorruptBlob {
            hash: hash.to_hex(),
            msg: "bad header".into(),
        })?;
        let want = n
            .checked_mul(d)
            .and_then(|x| x.checked_mul(dtype.size()))
            .and_then(|x| x.checked_add(HEADER_LEN));
        if want != Some(map.len()) {
            return Err(Error::CorruptBlob {
                hash: hash.to_hex(),
                msg: format!(
                    "size {} does not match header ({} × {} {})",
                    map.len(),
                    n,
                    d,
                    dtype.name()
                ),
            });
        }
        Ok(Blob {
            hash: *hash,
            map,
            dtype,
            n,
            d,
        })
    }
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Streams a blob into `tmp/` while hashing it. Dropped unsealed, it deletes its temporary
/// file.
struct BlobWriter {
    file: Option<std::io::BufWriter<File>>,
    hasher: blake3::Hasher,
    tmp_path: PathBuf,
    blobs_dir: PathBuf,
    len: u64,
    finished: bool,
}

impl BlobSink for BlobWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() >= 1 << 20 {
            self.hasher.update_rayon(bytes);
        } else {
            self.hasher.update(bytes);
        }
        self.len += bytes.len() as u64;
        let file = self.file.as_mut().expect("writer used after finish");
        file.write_all(bytes)
            .map_err(|e| Error::io(&self.tmp_path, e))
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// Flushes the temporary file and computes the hash; the blob is not visible until
    /// [`SealedBlob::publish`] (which fsyncs it first, so several blobs sealed in a row are
    /// written back by the kernel concurrently). Dropping the sealed blob deletes the
    /// temporary file.
    fn seal(mut self: Box<Self>) -> Result<Box<dyn SealedBlob>> {
        let file = self.file.take().expect("writer sealed once");
        // On failure `self` drops unfinished and removes the temporary file.
        file.into_inner()
            .map_err(|e| Error::io(&self.tmp_path, e.into_error()))?;
        self.finished = true;
        let hash = BlobHash(*self.hasher.finalize().as_bytes());
        let hex = hash.to_hex();
        // The descriptor is closed here (publish reopens the file to fsync it), so a file with
        // thousands of layers never holds thousands of descriptors.
        Ok(Box::new(FsSealed {
            hash,
            len: self.len,
            tmp_path: std::mem::take(&mut self.tmp_path),
            dest: self.blobs_dir.join(&hex[..2]).join(&hex),
            published: false,
        }))
    }
}

/// A fully written blob still in `tmp/`, not yet fsynced. Dropped unpublished (or after a
/// failed publish), it deletes its temporary file.
struct FsSealed {
    hash: BlobHash,
    len: u64,
    tmp_path: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl SealedBlob for FsSealed {
    fn hash(&self) -> BlobHash {
        self.hash
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// Renames the blob into `blobs/ab/<hash>` (fsynced first, and the rename made durable).
    fn publish(mut self: Box<Self>) -> Result<bool> {
        if self.dest.is_file() {
            return Ok(false); // Drop removes the temporary copy
        }
        File::open(&self.tmp_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&self.tmp_path, e))?;
        let dir = self.dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        fs::rename(&self.tmp_path, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.published = true;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    }
}

impl Drop for FsSealed {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// A blob's bytes: a memory-mapped file, or bytes held in memory.
pub enum Bytes {
    Mapped(Mmap),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Shared(b) => b,
        }
    }
}

/// A stored blob, readable in place.
pub struct Blob {
    pub hash: BlobHash,
    map: Bytes,
    pub dtype: DType,
    pub n: usize,
    pub d: usize,
}

impl Blob {
    /// The element bytes (without header).
    pub fn elements(&self) -> &[u8] {
        &self.map[HEADER_LEN..]
    }

    /// Every byte of the blob, header included.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Re-hashes the bytes and fails when they do not match the name.
    pub fn verify(&self) -> Result<()> {
        let mut h = blake3::Hasher::new();
        h.update_rayon(&self.map);
        let got = BlobHash(*h.finalize().as_bytes());
        if got != self.hash {
            return Err(Error::CorruptBlob {
                hash: self.hash.to_hex(),
                msg: format!("content hashes to {got}"),
            });
        }
        Ok(())
    }

    /// The matrix as f32 (n × d), after checking the content hash.
    pub fn to_f32_verified(&self) -> Result<Array2<f32>> {
        self.verify()?;
        Ok(matrix::decode_contiguous(
            self.dtype,
            self.n,
            self.d,
            self.elements(),
        ))
    }
}

/// Path helper used by tests and bundles.
pub fn blob_rel_path(hash: &BlobHash) -> PathBuf {
    let hex = hash.to_hex();
    Path::new("blobs").join(&hex[..2]).join(hex)
}

/// The [`BlobStore`] contract as a check every implementation is run through (the unit tests
/// run it on the local and in-memory stores, tests/s3.rs on an S3 server). Needs an empty store.
#[doc(hidden)]
pub mod conformance {
    use super::{BlobStore, DType, matrix};

    fn matrix_bytes(vals: &[f32]) -> Vec<u8> {
        let mut b = matrix::canonical_header(DType::F32, 1, vals.len()).to_vec();
        b.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        b
    }

    /// Panics unless `store` keeps the [`BlobStore`] contract; leaves it empty.
    pub fn check(store: &dyn BlobStore) {
        let bytes = matrix_bytes(&[1.0, 2.0]);
        let (h, new) = store.put(&mut bytes.as_slice(), None).unwrap();
        assert!(new);
        assert_eq!(blake3::hash(&bytes).as_bytes(), &h.0);
        assert_eq!(store.get(&h).unwrap().bytes(), &bytes[..]);
        // Put again: the same name, not new.
        let (h2, new2) = store.put(&mut bytes.as_slice(), Some(&h)).unwrap();
        assert_eq!((h2, new2), (h, false));
        // A blob that does not hash to what was expected is refused, nothing stored.
        let other = matrix_bytes(&[3.0, 4.0]);
        let e = store.put(&mut other.as_slice(), Some(&h)).unwrap_err();
        assert!(e.to_string().contains("nothing stored"), "{e}");
        assert_eq!(store.list().unwrap(), vec![h]);
        // Staged and sealed but never published: invisible, and gone when dropped.
        let mut sink = store.stage().unwrap();
        sink.write(&other).unwrap();
        let sealed = sink.seal().unwrap();
        let oh = sealed.hash();
        assert!(!store.exists(&oh).unwrap());
        drop(sealed);
        assert!(!store.exists(&oh).unwrap());
        assert_eq!(
            store
                .get(&h)
                .unwrap()
                .to_f32_verified()
                .unwrap()
                .row(0)
                .to_vec(),
            vec![1.0, 2.0]
        );
        store.delete(&h).unwrap();
        assert!(!store.exists(&h).unwrap());
        assert!(store.list().unwrap().is_empty());
        assert!(store.get(&h).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix_bytes(vals: &[f32]) -> Vec<u8> {
        let mut b = matrix::canonical_header(DType::F32, 1, vals.len()).to_vec();
        b.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        b
    }

    #[test]
    fn both_stores_keep_the_blob_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let fs_store = FsBlobStore::new(dir.path());
        fs_store.create_dirs().unwrap();
        crate::store::conformance::check(&fs_store);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        crate::store::conformance::check(&MemoryBlobStore::new());
    }

    #[test]
    fn a_local_blob_is_its_hash_on_disk_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path());
        store.create_dirs().unwrap();
        {
            let mut w = store.stage().unwrap();
            w.write(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let bytes = matrix_bytes(&[1.5]);
        let dynstore: &dyn BlobStore = &store;
        let (h, _) = dynstore.put(&mut bytes.as_slice(), None).unwrap();
        let p = store.path(&h);
        assert_eq!(fs::read(&p).unwrap(), bytes);
        let mut altered = bytes.clone();
        altered[HEADER_LEN] ^= 1;
        fs::write(&p, &altered).unwrap();
        let err = store.get(&h).unwrap().verify().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
