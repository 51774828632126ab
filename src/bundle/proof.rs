//! How a shard's bundle proves it came from this registry (docs/design.md, "Shards"): every
//! registry holds a secret key in `<root>/shard.key` (32 random bytes, readable by its owner
//! only, created by the first shard run; never exported). A shard seals its bundle with a keyed
//! BLAKE3 hash of the bundle's catalog hash, its sweep and its index under that key; `import`
//! recomputes the seal with its own key. Equal: the cells were computed by prh reading this
//! registry and are served as they are. A bundle naming another registry is any foreign
//! bundle (its cells sampled and held apart); one naming this registry with a wrong seal was
//! altered after it was written and is refused.

use std::io::{Read, Write};

use super::*;

/// The key's file in the registry's directory.
pub const KEY_FILE: &str = "shard.key";

/// What a shard's manifest says of where it came from, sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardProof {
    /// The registry's public id (derived from its key; tells whose shard this is).
    pub registry: String,
    /// The sweep's digest: its selection, metrics and preparation.
    pub sweep: String,
    pub index: usize,
    pub of: usize,
    /// Keyed BLAKE3 of the above and the catalog's hash.
    pub seal: String,
}

/// A registry's shard key.
pub struct Key([u8; 32]);

impl Key {
    /// The registry's public id.
    fn id(&self) -> String {
        blake3::keyed_hash(&self.0, b"prh registry id").to_hex()[..32].to_string()
    }

    fn seal(&self, catalog_blake3: &str, sweep: &str, index: usize, of: usize) -> String {
        let registry = self.id();
        let msg = format!("prh-shard-v1\n{registry}\n{sweep}\n{index}/{of}\n{catalog_blake3}");
        blake3::keyed_hash(&self.0, msg.as_bytes())
            .to_hex()
            .to_string()
    }

    /// The proof for a shard bundle whose catalog hashes to `catalog_blake3`.
    pub fn prove(&self, catalog_blake3: &str, sweep: &str, index: usize, of: usize) -> ShardProof {
        ShardProof {
            seal: self.seal(catalog_blake3, sweep, index, of),
            registry: self.id(),
            sweep: sweep.to_string(),
            index,
            of,
        }
    }

    /// The registry's key, created when it has none yet (a shard run).
    pub fn get_or_create(reg: &Registry) -> Result<Key> {
        if let Some(k) = Key::read(reg)? {
            return Ok(k);
        }
        let path = reg.root.join(KEY_FILE);
        let mut bytes = [0u8; 32];
        let urandom = Path::new("/dev/urandom");
        File::open(urandom)
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| Error::io(urandom, e))?;
        // Written aside and linked into place: two shards starting at once agree on one key.
        let tmp = reg
            .root
            .join("tmp")
            .join(format!("shard.key-{}", std::process::id()));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io(&tmp, e))?;
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Key(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Key::read(reg)?.ok_or_else(|| Error::io(&path, e))
            }
            Err(e) => Err(Error::io(&path, e).hint(format!(
                "a shard needs the registry's key; run one shard (or `prh align … --shard 0/1`) where {} is writable first",
                reg.root.display()
            ))),
        }
    }

    /// The registry's key, if it has one.
    pub fn read(reg: &Registry) -> Result<Option<Key>> {
        let path = reg.root.join(KEY_FILE);
        match fs::read(&path) {
            Ok(b) => {
                let bytes: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                    Error::Corrupt(format!(
                        "{} holds {} bytes, not a 32-byte key; remove it (shards written under it are then foreign bundles)",
                        path.display(),
                        b.len()
                    ))
                })?;
                Ok(Some(Key(bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

/// Whether this registry's key sealed the bundle (a shard of this registry); false for an
/// export or another registry's shard, an error when it names this registry but its seal does
/// not match (altered after it was written).
pub fn sealed_here(reg: &Registry, bundle: &Path, m: &Manifest) -> Result<bool> {
    let Some(p) = &m.shard else {
        return Ok(false);
    };
    let Some(key) = Key::read(reg)? else {
        return Ok(false);
    };
    if p.registry != key.id() {
        return Ok(false);
    }
    if key.seal(&m.catalog.blake3, &p.sweep, p.index, p.of) != p.seal || p.index >= p.of {
        return Err(Error::format(
            bundle,
            format!(
                "it says it is shard {}/{} of this registry, but its seal does not match its content: it was altered after the shard wrote it; nothing imported",
                p.index, p.of
            ),
        )
        .hint("run that shard again"));
    }
    Ok(true)
}
