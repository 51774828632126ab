//! Blobs held in memory: nothing on disk, gone when dropped. It keeps the contract of
//! [`BlobStore`] (streamed, hashed, invisible until published, never rewritten), so the tests
//! run ingest, sweeps and gc through the interface with a second store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{Blob, BlobHash, BlobSink, BlobStore, Bytes, SealedBlob};
use crate::error::{Error, Result};

type Map = Arc<RwLock<BTreeMap<BlobHash, Arc<[u8]>>>>;

/// A blob store in memory. See the module documentation.
#[derive(Default, Clone)]
pub struct MemoryBlobStore {
    blobs: Map,
}

impl MemoryBlobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BlobStore for MemoryBlobStore {
    fn stage(&self) -> Result<Box<dyn BlobSink>> {
        Ok(Box::new(Sink {
            bytes: Vec::new(),
            hasher: blake3::Hasher::new(),
            blobs: self.blobs.clone(),
        }))
    }

    fn get(&self, hash: &BlobHash) -> Result<Blob> {
        let bytes = self
            .blobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
            .ok_or_else(|| Error::CorruptBlob {
                hash: hash.to_hex(),
                msg: "not in the store".into(),
            })?;
        Blob::parse(*hash, Bytes::Shared(bytes))
    }

    fn exists(&self, hash: &BlobHash) -> Result<bool> {
        Ok(self
            .blobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(hash))
    }

    fn list(&self) -> Result<Vec<BlobHash>> {
        Ok(self
            .blobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect())
    }

    fn delete(&self, hash: &BlobHash) -> Result<()> {
        self.blobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash)
            .map(drop)
            .ok_or_else(|| Error::NotFound(format!("blob {hash} is not stored")))
    }

    fn location(&self, hash: &BlobHash) -> String {
        format!("memory:{hash}")
    }
}

struct Sink {
    bytes: Vec<u8>,
    hasher: blake3::Hasher,
    blobs: Map,
}

impl BlobSink for Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn seal(self: Box<Self>) -> Result<Box<dyn SealedBlob>> {
        Ok(Box::new(Sealed {
            hash: BlobHash(*self.hasher.finalize().as_bytes()),
            bytes: self.bytes.into(),
            blobs: self.blobs,
        }))
    }
}

struct Sealed {
    hash: BlobHash,
    bytes: Arc<[u8]>,
    blobs: Map,
}

impl SealedBlob for Sealed {
    fn hash(&self) -> BlobHash {
        self.hash
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn publish(self: Box<Self>) -> Result<bool> {
        let mut map = self.blobs.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&self.hash) {
            return Ok(false);
        }
        map.insert(self.hash, self.bytes);
        Ok(true)
    }
}
