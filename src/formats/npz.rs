//! NumPy `.npz`: a zip of `.npy` arrays (stored or deflated), one array per layer, or a single
//! n × L × d array. Layers are ordered by the natural sort of the array names.

use std::io::Read;
use std::path::Path;

use super::{Buffer, FeatureFile, FileMeta, npy, tensors_to_layers};
use crate::error::{Error, Result};

/// Refuse archive members that declare more than this many bytes (a zip bomb guard): 64 GiB.
pub const MAX_MEMBER_BYTES: u64 = 64 << 30;

/// Reads one archive member whose header declares `size` bytes, refusing absurd sizes before
/// allocating (the capacity reserved up front is capped; the real length comes from reading).
pub(crate) fn read_member(
    path: &Path,
    entry: &mut dyn Read,
    size: u64,
    name: &str,
) -> Result<Vec<u8>> {
    if size > MAX_MEMBER_BYTES {
        return Err(Error::format(
            path,
            format!("member {name} declares {size} bytes, over the limit"),
        ));
    }
    let mut out = Vec::with_capacity((size as usize).min(1 << 26));
    entry
        .read_to_end(&mut out)
        .map_err(|e| Error::format(path, format!("truncated or corrupt member {name}: {e}")))?;
    Ok(out)
}

/// Opens an `.npz` archive.
pub fn open(path: &Path) -> Result<FeatureFile> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::format(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut buffers = Vec::new();
    let mut tensors = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::format(path, format!("corrupt archive member {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .map_err(|e| Error::format(path, format!("bad member name: {e}")))?
            .to_string();
        let Some(stem) = name.strip_suffix(".npy") else {
            return Err(Error::format(
                path,
                format!("archive member {name:?} is not an .npy array"),
            ));
        };
        let size = entry.size();
        let bytes = read_member(path, &mut entry, size, &name)?;
        let spec = npy::tensor_spec(path, stem, &bytes, buffers.len())?;
        buffers.push(Buffer::Owned(bytes));
        tensors.push(spec);
    }
    let layers = tensors_to_layers(path, tensors)?;
    FeatureFile::new(path, buffers, layers, FileMeta::default())
}
