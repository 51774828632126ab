//! A store read through to another: what it writes goes to its own `top`, what it reads comes
//! from `top` or else from `base`, which it never writes or deletes from. A shard
//! (crate::shard) computes on a registry it only reads this way.

use super::{Blob, BlobHash, BlobSink, BlobStore};
use crate::error::Result;

/// Reads `top`, then `base`; writes and deletes `top` only.
pub struct OverlayBlobStore {
    pub base: std::sync::Arc<dyn BlobStore>,
    pub top: Box<dyn BlobStore>,
}

impl BlobStore for OverlayBlobStore {
    fn stage(&self) -> Result<Box<dyn BlobSink>> {
        self.top.stage()
    }

    fn get(&self, hash: &BlobHash) -> Result<Blob> {
        if self.top.exists(hash)? {
            self.top.get(hash)
        } else {
            self.base.get(hash)
        }
    }

    fn exists(&self, hash: &BlobHash) -> Result<bool> {
        Ok(self.top.exists(hash)? || self.base.exists(hash)?)
    }

    fn list(&self) -> Result<Vec<BlobHash>> {
        let mut all = self.base.list()?;
        all.extend(self.top.list()?);
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn delete(&self, hash: &BlobHash) -> Result<()> {
        self.top.delete(hash)
    }

    fn location(&self, hash: &BlobHash) -> String {
        match self.top.exists(hash) {
            Ok(true) => self.top.location(hash),
            _ => self.base.location(hash),
        }
    }

    fn put_file(&self, path: &std::path::Path, hash: &BlobHash) -> Result<bool> {
        self.top.put_file(path, hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryBlobStore, conformance};

    #[test]
    fn an_overlay_keeps_the_contract_and_never_writes_its_base() {
        let base = MemoryBlobStore::new();
        let overlay = OverlayBlobStore {
            base: std::sync::Arc::new(base.clone()),
            top: Box::new(MemoryBlobStore::new()),
        };
        conformance::check(&overlay);
        // A blob of the base is read through, and deleting it through the overlay leaves it.
        let bytes = {
            let mut b = crate::matrix::canonical_header(crate::matrix::DType::F32, 1, 1).to_vec();
            b.extend(7.0f32.to_le_bytes());
            b
        };
        let (h, _) = base.put(&mut bytes.as_slice(), None).unwrap();
        assert_eq!(overlay.get(&h).unwrap().bytes(), &bytes[..]);
        assert_eq!(overlay.list().unwrap(), vec![h]);
        let (_, new) = overlay.put(&mut bytes.as_slice(), None).unwrap();
        assert!(new, "the top did not hold it yet");
        overlay.delete(&h).unwrap();
        assert!(
            base.exists(&h).unwrap(),
            "the overlay deleted from its base"
        );
    }
}
