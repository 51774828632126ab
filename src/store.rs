//! Content-addressed, immutable blob storage (DESIGN.md §1–2).
//!
//! A blob is the canonical encoding of one matrix: the 32-byte header of
//! [`crate::matrix::canonical_header`] followed by the row-major little-endian elements.
//! Its name is the BLAKE3 hash of exactly those bytes, so `b3sum blobs/ab/<hash>` prints
//! `<hash>`. Blobs are written to `tmp/`, fsynced and renamed into place; they are never
//! rewritten.

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use memmap2::Mmap;
use ndarray::Array2;

use crate::error::{Error, Result};
use crate::matrix::{self, DType, HEADER_LEN};

/// BLAKE3 hash of a blob's bytes: the identity of a representation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
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

/// The storage contract for blobs. The filesystem implementation is [`FsBlobStore`]; an
/// object store would be a second implementation.
pub trait BlobStore: Send + Sync {
    /// Starts writing a new blob.
    fn writer(&self) -> Result<BlobWriter>;
    /// True when a blob with this hash is stored.
    fn contains(&self, hash: &BlobHash) -> bool;
    /// Opens a stored blob for reading (memory-mapped).
    fn open(&self, hash: &BlobHash) -> Result<Blob>;
    /// Removes a blob (used by garbage collection only).
    fn remove(&self, hash: &BlobHash) -> Result<()>;
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
    fn writer(&self) -> Result<BlobWriter> {
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        let tmp_path = tmp_dir.join(format!(
            "blob-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        Ok(BlobWriter {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
            tmp_path,
            blobs_dir: self.root.join("blobs"),
            len: 0,
            finished: false,
        })
    }

    fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).is_file()
    }

    fn open(&self, hash: &BlobHash) -> Result<Blob> {
        Blob::open_path(&self.path(hash), hash)
    }

    fn remove(&self, hash: &BlobHash) -> Result<()> {
        let p = self.path(hash);
        fs::remove_file(&p).map_err(|e| Error::io(&p, e))
    }
}

impl Blob {
    /// Opens the blob file at `path` that should hold `hash` (checked by [`Blob::verify`]).
    pub fn open_path(path: &Path, hash: &BlobHash) -> Result<Blob> {
        let path = path.to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: blobs are immutable once renamed into place; nobody writes to them.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
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

/// Streams a blob into `tmp/` while hashing it; [`BlobWriter::finish`] fsyncs and renames it
/// into place. Dropped unfinished, it deletes its temporary file.
pub struct BlobWriter {
    file: Option<std::io::BufWriter<File>>,
    hasher: blake3::Hasher,
    tmp_path: PathBuf,
    blobs_dir: PathBuf,
    len: u64,
    finished: bool,
}

impl BlobWriter {
    /// Appends bytes to the blob.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
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

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes the temporary file and computes the hash; the blob is not visible until
    /// [`SealedBlob::publish`] (which fsyncs it first, so several blobs sealed in a row are
    /// written back by the kernel concurrently). Dropping the sealed blob deletes the
    /// temporary file.
    pub fn seal(mut self) -> Result<SealedBlob> {
        let file = self.file.take().expect("writer sealed once");
        // On failure `self` drops unfinished and removes the temporary file.
        file.into_inner()
            .map_err(|e| Error::io(&self.tmp_path, e.into_error()))?;
        self.finished = true;
        let hash = BlobHash(*self.hasher.finalize().as_bytes());
        let hex = hash.to_hex();
        // The descriptor is closed here (publish reopens the file to fsync it), so a file with
        // thousands of layers never holds thousands of descriptors.
        Ok(SealedBlob {
            hash,
            len: self.len,
            tmp_path: std::mem::take(&mut self.tmp_path),
            dest: self.blobs_dir.join(&hex[..2]).join(&hex),
            published: false,
        })
    }

    /// [`BlobWriter::seal`] then [`SealedBlob::publish`]: returns the hash and whether the blob
    /// is new.
    pub fn finish(self) -> Result<(BlobHash, bool)> {
        let s = self.seal()?;
        let h = s.hash;
        Ok((h, s.publish()?))
    }
}

/// A fully written blob still in `tmp/`, not yet fsynced. Dropped unpublished (or after a
/// failed publish), it deletes its temporary file.
pub struct SealedBlob {
    pub hash: BlobHash,
    /// Size in bytes, header included.
    pub len: u64,
    tmp_path: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl SealedBlob {
    /// Renames the blob into `blobs/ab/<hash>`; returns false (and discards the copy) when
    /// that blob already existed.
    pub fn publish(mut self) -> Result<bool> {
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

impl Drop for SealedBlob {
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

/// A memory-mapped blob.
pub struct Blob {
    pub hash: BlobHash,
    map: Mmap,
    pub dtype: DType,
    pub n: usize,
    pub d: usize,
}

impl Blob {
    /// The element bytes (without header).
    pub fn elements(&self) -> &[u8] {
        &self.map[HEADER_LEN..]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_name_is_blake3_of_its_bytes_and_reput_is_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path());
        store.create_dirs().unwrap();
        let header = matrix::canonical_header(DType::F32, 1, 2);
        let body: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut w = store.writer().unwrap();
        w.write(&header).unwrap();
        w.write(&body).unwrap();
        let (h, new) = w.finish().unwrap();
        assert!(new);
        let bytes = fs::read(store.path(&h)).unwrap();
        assert_eq!(blake3::hash(&bytes).as_bytes(), &h.0);
        let mut w = store.writer().unwrap();
        w.write(&header).unwrap();
        w.write(&body).unwrap();
        let (h2, new2) = w.finish().unwrap();
        assert_eq!(h, h2);
        assert!(!new2);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let blob = store.open(&h).unwrap();
        assert_eq!(
            blob.to_f32_verified().unwrap().row(0).to_vec(),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn dropped_writer_leaves_no_garbage_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path());
        store.create_dirs().unwrap();
        {
            let mut w = store.writer().unwrap();
            w.write(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let mut w = store.writer().unwrap();
        w.write(&matrix::canonical_header(DType::F32, 1, 1))
            .unwrap();
        w.write(&1.5f32.to_le_bytes()).unwrap();
        let (h, _) = w.finish().unwrap();
        let p = store.path(&h);
        let mut bytes = fs::read(&p).unwrap();
        bytes[HEADER_LEN] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let err = store.open(&h).unwrap().verify().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
