//! NumPy `.npz`: a zip of `.npy` arrays (stored or deflated), one array per layer, or a single
//! n × L × d array. Layers are ordered by the natural sort of the array names.
//!
//! Members are read as streams and never beyond what their own header promises: a member that
//! inflates to more than its `.npy` header declares is refused ("trailing data"), so a small
//! archive cannot make prh inflate gigabytes behind a tiny array.

use std::io::Read;
use std::path::Path;

use super::{Buffer, FeatureFile, FileMeta, npy, open_regular, reserve, tensors_to_layers};
use crate::error::{Error, Result};

/// Refuse archive members that declare more than this many bytes: 64 GiB.
pub const MAX_MEMBER_BYTES: u64 = 64 << 30;

/// Memory is reserved in steps of this size as a member's bytes actually arrive, so a header
/// that lies about its size costs no more than the bytes really present.
const STEP: u64 = 64 << 20;

/// Reads exactly `want` bytes of an archive member, then checks that nothing follows.
pub(crate) fn read_exact_member(
    path: &Path,
    entry: &mut dyn Read,
    name: &str,
    want: u64,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read_more(path, entry, name, want, &mut out)?;
    expect_end(path, entry, name, want)?;
    Ok(out)
}

/// Appends exactly `want` bytes of `entry` to `out`.
fn read_more(
    path: &Path,
    entry: &mut dyn Read,
    name: &str,
    want: u64,
    out: &mut Vec<u8>,
) -> Result<()> {
    if want > MAX_MEMBER_BYTES {
        return Err(Error::format(
            path,
            format!("member {name} declares {want} bytes, over the 64 GiB limit"),
        ));
    }
    let mut left = want;
    while left > 0 {
        let step = left.min(STEP);
        reserve(path, out, step, &format!("member {name}"))?;
        let got = (&mut *entry)
            .take(step)
            .read_to_end(out)
            .map_err(|e| corrupt(path, name, e))? as u64;
        if got == 0 {
            return Err(Error::format(
                path,
                format!(
                    "truncated: member {name} ends {left} bytes short of the {want} its header declares"
                ),
            ));
        }
        left -= got;
    }
    Ok(())
}

/// Fails when `entry` holds more than the bytes already read (and lets the zip reader check the
/// member's CRC, which it does on reaching the end).
fn expect_end(path: &Path, entry: &mut dyn Read, name: &str, want: u64) -> Result<()> {
    let mut one = [0u8; 1];
    match entry.read(&mut one) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::format(
            path,
            format!(
                "member {name} holds trailing data beyond the {want} bytes its header declares"
            ),
        )),
        Err(e) => Err(corrupt(path, name, e)),
    }
}

/// Reads a member of unknown length, refusing one longer than `cap` bytes.
pub(crate) fn read_capped_member(
    path: &Path,
    entry: &mut dyn Read,
    name: &str,
    cap: u64,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    (&mut *entry)
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(path, name, e))?;
    if out.len() as u64 > cap {
        return Err(Error::format(
            path,
            format!("member {name} is larger than the {cap} bytes prh accepts for it"),
        ));
    }
    Ok(out)
}

fn corrupt(path: &Path, name: &str, e: std::io::Error) -> Error {
    Error::format(path, format!("truncated or corrupt member {name}: {e}"))
}

/// Reads one `.npy` member: its header first, then exactly the bytes the header declares.
fn read_npy_member(path: &Path, entry: &mut dyn Read, name: &str) -> Result<Vec<u8>> {
    let mut head = read_capped_member(path, &mut (&mut *entry).take(12), name, 12)?;
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(Error::format(
            path,
            format!("member {name} is not an .npy array (bad magic)"),
        ));
    }
    let hlen = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as u64).saturating_sub(head.len() as u64 - 10),
        _ if head.len() == 12 => u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64,
        _ => 0,
    };
    read_more(path, entry, name, hlen, &mut head)?;
    let h = npy::parse_header(path, &head)?;
    let data = h
        .shape
        .iter()
        .try_fold(h.dtype.size() as u64, |a, &b| a.checked_mul(b as u64))
        .ok_or_else(|| Error::format(path, format!("member {name}: shape overflows")))?;
    // A version-1 header can end inside the 12 bytes read first: those are data already.
    let have = head.len() as u64 - h.data_offset as u64;
    let rest = data.checked_sub(have).ok_or_else(|| {
        Error::format(
            path,
            format!("member {name} holds trailing data beyond its declared shape"),
        )
    })?;
    read_more(path, entry, name, rest, &mut head)?;
    expect_end(path, entry, name, data)?;
    Ok(head)
}

/// Opens an `.npz` archive.
pub fn open(path: &Path) -> Result<FeatureFile> {
    let (file, _) = open_regular(path)?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::format(path, format!("not a valid .npz (zip) archive: {e}")))?;
    super::check_layer_count(path, zip.len(), "archive members")?;
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
        let bytes = read_npy_member(path, &mut entry, &name)?;
        let spec = npy::tensor_spec(path, stem, &bytes, buffers.len())?;
        buffers.push(Buffer::new(bytes));
        tensors.push(spec);
    }
    let layers = tensors_to_layers(path, tensors)?;
    FeatureFile::new(path, buffers, layers, FileMeta::default())
}
