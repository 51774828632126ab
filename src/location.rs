//! Where a registry's parts live. By default both are inside the registry directory
//! (`catalog.db`, `blobs/`); `prh init --catalog URL --blobs URL` puts them elsewhere and writes
//! the choice to `config.json` in the registry directory, so every later command finds them
//! the usual way. `PRH_CATALOG` and `PRH_BLOBS` override the file.
//!
//! URLs this build opens: `sqlite:///path/to/catalog.db`, `postgres://USER@HOST/DB`,
//! `file:///path/to/dir` (the directory that holds `blobs/`) and `s3://BUCKET/PREFIX`.
//! Credentials are never written to the config: a URL with a password in it is refused.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file in a registry directory that names its catalog and blob store.
pub const CONFIG: &str = "config.json";

/// The catalog and blob store of a registry, as URLs; `None` is the default inside the
/// registry directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs: Option<String>,
}

/// Where the catalog is.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogAt {
    Sqlite(PathBuf),
    /// `postgres://USER@HOST[:PORT]/DB` (password from PGPASSWORD or ~/.pgpass).
    Postgres(String),
}

/// Where the blobs are.
#[derive(Debug, Clone, PartialEq)]
pub enum BlobsAt {
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX` (credentials and endpoint from the AWS_* environment).
    S3(String),
}

impl Locations {
    /// The registry's config (the defaults when it has none), with `PRH_CATALOG` / `PRH_BLOBS`
    /// taking precedence.
    pub fn of(root: &Path) -> Result<Locations> {
        let mut loc = Locations::read(root)?;
        for (var, slot) in [
            ("PRH_CATALOG", &mut loc.catalog),
            ("PRH_BLOBS", &mut loc.blobs),
        ] {
            if let Some(v) = std::env::var_os(var) {
                let v = v
                    .into_string()
                    .map_err(|_| Error::Invalid(format!("{var} is not valid UTF-8")))?;
                *slot = Some(v);
            }
        }
        Ok(loc)
    }

    /// The config file of a registry directory, if it has one.
    pub fn read(root: &Path) -> Result<Locations> {
        let p = root.join(CONFIG);
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::format(&p, format!("not a prh registry config: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Locations::default()),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// Writes the config (nothing when both parts are the defaults), atomically.
    pub fn write(&self, root: &Path) -> Result<()> {
        if *self == Locations::default() {
            return Ok(());
        }
        let p = root.join(CONFIG);
        let tmp = root.join(format!("{CONFIG}.partial"));
        let json = serde_json::to_vec_pretty(self).expect("config serialises");
        fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))
    }

    /// Checks both URLs: a kind this build opens, no credentials.
    pub fn check(&self) -> Result<()> {
        if let Some(c) = &self.catalog {
            catalog_at(c)?;
        }
        if let Some(b) = &self.blobs {
            blobs_at(b)?;
        }
        Ok(())
    }

    /// Where the catalog of the registry at `root` is.
    pub fn catalog(&self, root: &Path) -> Result<CatalogAt> {
        match &self.catalog {
            None => Ok(CatalogAt::Sqlite(root.join("catalog.db"))),
            Some(url) => catalog_at(url),
        }
    }

    /// Where the blobs of the registry at `root` are.
    pub fn blobs(&self, root: &Path) -> Result<BlobsAt> {
        match &self.blobs {
            None => Ok(BlobsAt::Dir(root.to_path_buf())),
            Some(url) => blobs_at(url),
        }
    }
}

/// Refuses a URL that carries a password (`scheme://user:secret@host`), without repeating it.
fn no_credentials(url: &str) -> Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    if authority
        .split_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
    {
        return Err(Error::Invalid(
            "a registry URL may not carry a password (it would be written to config.json); give it through the environment (PGPASSWORD, AWS_SECRET_ACCESS_KEY, ...)".into(),
        ));
    }
    Ok(())
}

/// The scheme of a URL, lower-case.
fn scheme(url: &str) -> String {
    url.split_once("://")
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase()
}

/// The local path of a `scheme:///abs/path` URL (percent-escapes are not decoded).
fn local_path(url: &str, what: &str) -> Result<PathBuf> {
    let path = url.split_once("://").map_or("", |(_, r)| r);
    if !path.starts_with('/') {
        return Err(Error::Invalid(format!(
            "{what} URL {url:?} must name an absolute path, as in {}:///srv/prh/{}",
            scheme(url),
            if what == "catalog" {
                "catalog.db"
            } else {
                "blobs"
            }
        )));
    }
    Ok(PathBuf::from(path))
}

fn catalog_at(url: &str) -> Result<CatalogAt> {
    no_credentials(url)?;
    match scheme(url).as_str() {
        "sqlite" => Ok(CatalogAt::Sqlite(local_path(url, "catalog")?)),
        "postgres" | "postgresql" => Ok(CatalogAt::Postgres(url.to_string())),
        _ => Err(Error::Invalid(format!(
            "catalog URL {url:?}: give sqlite:///path/to/catalog.db or postgres://USER@HOST/DB"
        ))),
    }
}

fn blobs_at(url: &str) -> Result<BlobsAt> {
    no_credentials(url)?;
    match scheme(url).as_str() {
        "file" => Ok(BlobsAt::Dir(local_path(url, "blobs")?)),
        "s3" => Ok(BlobsAt::S3(url.to_string())),
        "gs" | "az" | "azure" => Err(Error::Unsupported(
            "this build of prh has S3-compatible object stores only (s3://BUCKET/PREFIX); use file:///path/to/dir otherwise".into(),
        )),
        _ => Err(Error::Invalid(format!(
            "blobs URL {url:?}: give file:///path/to/dir or s3://BUCKET/PREFIX"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_credentials_refused_without_echoing_them() {
        let loc = Locations {
            catalog: Some("sqlite:///srv/prh/catalog.db".into()),
            blobs: Some("file:///mnt/big".into()),
        };
        let root = Path::new("/r");
        assert_eq!(
            loc.catalog(root).unwrap(),
            CatalogAt::Sqlite("/srv/prh/catalog.db".into())
        );
        assert_eq!(loc.blobs(root).unwrap(), BlobsAt::Dir("/mnt/big".into()));
        let d = Locations::default();
        assert_eq!(
            d.catalog(root).unwrap(),
            CatalogAt::Sqlite("/r/catalog.db".into())
        );
        assert_eq!(d.blobs(root).unwrap(), BlobsAt::Dir("/r".into()));
        let e = catalog_at("postgres://ann:hunter2@db/prh")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        assert_eq!(
            catalog_at("postgres://ann@db/prh").unwrap(),
            CatalogAt::Postgres("postgres://ann@db/prh".into())
        );
        assert!(catalog_at("mysql://ann@db/prh").is_err());
        assert!(blobs_at("file://relative/dir").is_err());
        assert_eq!(
            blobs_at("s3://bucket/prefix").unwrap(),
            BlobsAt::S3("s3://bucket/prefix".into())
        );
        assert!(blobs_at("s3://key:secret@bucket/prefix").is_err());
        assert!(blobs_at("gs://bucket").is_err());
        assert!(blobs_at("http://x").is_err());
    }
}
