//! Blobs in an S3-compatible object store (the `object_store` crate), for a registry shared by
//! many machines: `s3://BUCKET/PREFIX` keeps each blob at `PREFIX/blobs/ab/<hash>`, the local
//! layout. Credentials and endpoint come only from the standard environment
//! (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT,
//! AWS_ALLOW_HTTP …), never from the URL or a file of prh's.
//!
//! A blob is staged in a local file while it is hashed; publishing uploads it in one PUT (or a
//! multipart upload for large blobs), which S3 makes visible all at once, only when no object
//! of that name exists yet. The async client runs on a small runtime owned by the store.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{Blob, BlobHash, BlobSink, BlobStore, Bytes, SealedBlob, TMP_COUNTER};
use crate::error::{Error, Result};

/// Above this size a blob is uploaded in parts.
const PART: usize = 16 << 20;

/// Blobs in an object store. See the module documentation.
pub struct ObjectBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn ObjectStore>,
    /// `PREFIX/blobs`.
    base: ObjectPath,
    url: String,
    /// Where blobs are staged before upload (the registry's tmp/).
    staging: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// An object-store error as one line: the client's message without the server's XML body,
/// whose code and message are kept (`NoSuchBucket: The specified bucket does not exist`).
fn err(what: &str, e: impl std::fmt::Display) -> Error {
    let full = e.to_string();
    let (head, xml) = full.split_once("<?xml").unwrap_or((&full, ""));
    let tag = |t: &str| {
        xml.split_once(&format!("<{t}>"))
            .and_then(|(_, r)| r.split_once(&format!("</{t}>")))
            .map(|(v, _)| v.to_string())
    };
    let mut msg = head.split_whitespace().collect::<Vec<_>>().join(" ");
    if let (Some(code), Some(text)) = (tag("Code"), tag("Message")) {
        msg = format!("{} ({code}: {text})", msg.trim_end_matches(':'));
    }
    let msg = format!("{what}: {msg}");
    // The client has already retried with backoff; what is left is the server being down or
    // unreachable (transient), or a refusal that will not change (a missing bucket, a denied
    // key, a bad configuration).
    const REFUSALS: [&str; 6] = [
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "configure",
        "runtime",
    ];
    if REFUSALS.iter().any(|r| msg.contains(r)) {
        Error::Storage(msg)
    } else {
        Error::Unavailable(format!("blob store: {msg}"))
    }
}

impl ObjectBlobStore {
    /// Opens `s3://BUCKET[/PREFIX]`, staging uploads in `staging`, configured from the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, ...). Nothing is contacted yet.
    pub fn open_s3(url: &str, staging: PathBuf) -> Result<Self> {
        Self::open_s3_with(url, staging, &[])
    }

    /// [`ObjectBlobStore::open_s3`] with `config` (environment-variable names and values, as
    /// `AWS_ENDPOINT`) taking precedence over the environment: for a process that serves
    /// several stores, or tests that must not touch the process environment.
    pub fn open_s3_with(url: &str, staging: PathBuf, config: &[(&str, String)]) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("not an s3:// URL: {url:?}")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Invalid(format!(
                "blobs URL {url:?} names no bucket: give s3://BUCKET/PREFIX"
            )));
        }
        let mut builder = AmazonS3Builder::from_env();
        for (k, v) in config {
            let key = k
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| Error::Invalid(format!("S3 configuration {k}: {e}")))?;
            builder = builder.with_config(key, v);
        }
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| err("cannot configure the S3 client", e))?;
        let prefix = prefix.trim_matches('/');
        let base = if prefix.is_empty() {
            ObjectPath::from("blobs")
        } else {
            ObjectPath::from(format!("{prefix}/blobs"))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err("cannot start its runtime", e))?;
        Ok(ObjectBlobStore {
            inner: Arc::new(Inner {
                store: Box::new(store),
                base,
                url: url.trim_end_matches('/').to_string(),
                staging,
                rt,
            }),
        })
    }
}

impl Inner {
    fn path(&self, hash: &BlobHash) -> ObjectPath {
        let hex = hash.to_hex();
        ObjectPath::from(format!("{}/{}/{hex}", self.base, &hex[..2]))
    }

    fn exists(&self, hash: &BlobHash) -> Result<bool> {
        match self.rt.block_on(self.store.head(&self.path(hash))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(err(&format!("cannot look up blob {hash}"), e)),
        }
    }

    /// Uploads the staged file as the blob `hash`.
    fn upload(&self, file: &std::path::Path, hash: &BlobHash, len: u64) -> Result<()> {
        let path = self.path(hash);
        let mut f = File::open(file).map_err(|e| Error::io(file, e))?;
        if len as usize <= PART {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).map_err(|e| Error::io(file, e))?;
            self.rt
                .block_on(self.store.put(&path, PutPayload::from(buf)))
                .map_err(|e| err(&format!("cannot upload blob {hash}"), e))?;
            return Ok(());
        }
        self.rt.block_on(async {
            let mut up = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| err(&format!("cannot start uploading blob {hash}"), e))?;
            loop {
                let mut part = vec![0u8; PART];
                let mut k = 0;
                while k < PART {
                    let r = f.read(&mut part[k..]).map_err(|e| Error::io(file, e))?;
                    if r == 0 {
                        break;
                    }
                    k += r;
                }
                if k == 0 {
                    break;
                }
                part.truncate(k);
                if let Err(e) = up.put_part(PutPayload::from(part)).await {
                    let _ = up.abort().await;
                    return Err(err(&format!("cannot upload blob {hash}"), e));
                }
            }
            up.complete()
                .await
                .map(drop)
                .map_err(|e| err(&format!("cannot finish uploading blob {hash}"), e))
        })
    }
}

impl BlobStore for ObjectBlobStore {
    fn stage(&self) -> Result<Box<dyn BlobSink>> {
        let dir = &self.inner.staging;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = dir.join(format!(
            "upload-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Box::new(Staged {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
            tmp,
            len: 0,
            inner: self.inner.clone(),
        }))
    }

    fn get(&self, hash: &BlobHash) -> Result<Blob> {
        let i = &self.inner;
        let bytes =
            i.rt.block_on(async {
                let r = i.store.get(&i.path(hash)).await?;
                r.bytes().await
            })
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::CorruptBlob {
                    hash: hash.to_hex(),
                    msg: format!("not in the object store ({})", self.location(hash)),
                },
                e => err(&format!("cannot read blob {hash}"), e),
            })?;
        Blob::parse(*hash, Bytes::Shared(Arc::from(&bytes[..])))
    }

    fn exists(&self, hash: &BlobHash) -> Result<bool> {
        self.inner.exists(hash)
    }

    fn list(&self) -> Result<Vec<BlobHash>> {
        use futures::TryStreamExt;
        let i = &self.inner;
        let metas: Vec<object_store::ObjectMeta> =
            i.rt.block_on(i.store.list(Some(&i.base)).try_collect())
                .map_err(|e| err("cannot list blobs", e))?;
        let mut out: Vec<BlobHash> = metas
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                name.parse::<BlobHash>()
                    .ok()
                    .filter(|h| h.to_hex() == name && m.location == i.path(h))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn age(&self, hash: &BlobHash) -> Result<Option<std::time::Duration>> {
        let i = &self.inner;
        let meta =
            i.rt.block_on(i.store.head(&i.path(hash)))
                .map_err(|e| err(&format!("cannot read blob {hash}"), e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let secs = (now - meta.last_modified.timestamp()).max(0) as u64;
        Ok(Some(std::time::Duration::from_secs(secs)))
    }

    fn delete(&self, hash: &BlobHash) -> Result<()> {
        let i = &self.inner;
        if !i.exists(hash)? {
            return Err(Error::NotFound(format!("blob {hash} is not stored")));
        }
        i.rt.block_on(i.store.delete(&i.path(hash)))
            .map_err(|e| err(&format!("cannot delete blob {hash}"), e))
    }

    fn location(&self, hash: &BlobHash) -> String {
        let hex = hash.to_hex();
        let base = self.inner.url.as_str();
        format!("{base}/blobs/{}/{hex}", &hex[..2])
    }
}

struct Staged {
    file: Option<std::io::BufWriter<File>>,
    hasher: blake3::Hasher,
    tmp: PathBuf,
    len: u64,
    inner: Arc<Inner>,
}

impl BlobSink for Staged {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        let f = self.file.as_mut().expect("open until sealed");
        f.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn seal(mut self: Box<Self>) -> Result<Box<dyn SealedBlob>> {
        let f = self.file.take().expect("sealed once");
        f.into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        Ok(Box::new(Ready {
            hash: BlobHash(*self.hasher.finalize().as_bytes()),
            len: self.len,
            tmp: std::mem::take(&mut self.tmp),
            inner: self.inner.clone(),
        }))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

struct Ready {
    hash: BlobHash,
    len: u64,
    tmp: PathBuf,
    inner: Arc<Inner>,
}

impl SealedBlob for Ready {
    fn hash(&self) -> BlobHash {
        self.hash
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn publish(self: Box<Self>) -> Result<bool> {
        if self.inner.exists(&self.hash)? {
            return Ok(false);
        }
        self.inner.upload(&self.tmp, &self.hash, self.len)?;
        Ok(true)
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}
