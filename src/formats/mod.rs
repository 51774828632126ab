//! Readers for the feature files researchers already have, without Python:
//! `.npy`, `.npz`, `.safetensors` and platonic-rep's `.pt` (zip + pickle, parsed, never run).
//!
//! Every reader produces a [`FeatureFile`]: a list of layers, each a strided 2-D view (n × d)
//! over bytes that stay in the file's own encoding until ingest writes the canonical blob.
//! Layer order is the file's order: the leading axis of an n × L × d tensor, or the natural
//! sort of the tensor names (`layer2` before `layer10`) in `.npz` and `.safetensors`.

pub mod npy;
pub mod npz;
pub mod pickle;
pub mod pt;
pub mod safetensors;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::matrix::{DType, LayerView};
use crate::metrics::Layout;

/// Most layers one file may hold. Real checkpoints have at most a few hundred; the cap keeps a
/// tiny file that declares billions of (empty or overlapping) layers from exhausting memory.
pub const MAX_LAYERS: usize = 16_384;

/// Refuses more than [`MAX_LAYERS`] layers (`what` names what was counted).
pub(crate) fn check_layer_count(path: &Path, count: usize, what: &str) -> Result<()> {
    if count > MAX_LAYERS {
        return Err(Error::format(
            path,
            format!("{count} {what}, more than the {MAX_LAYERS} layers prh accepts"),
        ));
    }
    Ok(())
}

/// Bytes backing a file's tensors: read into memory, or memory lent by the caller (an array
/// handed over from Python, read in place). Files are never memory-mapped: a file truncated by
/// someone else while prh reads it is then an ordinary "truncated" error, not a SIGBUS.
pub struct Buffer(Bytes);

enum Bytes {
    Owned(Vec<u8>),
    Lent {
        ptr: *const u8,
        len: usize,
        _owner: Box<dyn Send + Sync>,
    },
}

// SAFETY: lent bytes are only read, and `Buffer::lent`'s contract keeps them valid and unchanged
// for the buffer's life; the owner that guarantees it is itself Send + Sync.
unsafe impl Send for Bytes {}
unsafe impl Sync for Bytes {}

impl Buffer {
    /// Wraps bytes read from a file or an archive member.
    pub fn new(bytes: Vec<u8>) -> Self {
        Buffer(Bytes::Owned(bytes))
    }

    /// Reads `len` bytes at `ptr` in place, without copying them.
    ///
    /// # Safety
    /// The bytes must stay allocated and unchanged while the buffer lives; `owner` (dropped with
    /// the buffer) is what keeps them so, e.g. a reference to the array that holds them.
    pub unsafe fn lent(ptr: *const u8, len: usize, owner: Box<dyn Send + Sync>) -> Self {
        Buffer(Bytes::Lent {
            ptr,
            len,
            _owner: owner,
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Bytes::Owned(v) => v,
            Bytes::Lent { len: 0, .. } => &[],
            // SAFETY: valid for `len` bytes while `self` lives (`Buffer::lent`'s contract).
            Bytes::Lent { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

/// A feature file from tensors in memory (`label` names it in messages): one n × L × d or
/// n × d tensor (layout `stacked`), or several n × d tensors in name order (`layers`).
pub fn from_memory(
    label: &str,
    buffers: Vec<Buffer>,
    tensors: Vec<TensorSpec>,
) -> Result<FeatureFile> {
    let path = Path::new(label);
    let layers = tensors_to_layers(path, tensors)?;
    FeatureFile::new(path, buffers, layers, FileMeta::default())
}

/// Where one layer's elements live inside a [`FeatureFile`]'s buffers.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Tensor name in the file (with `[l]` for a slice of an n × L × d tensor).
    pub name: String,
    pub buffer: usize,
    /// Byte offset of element (0, 0) in the buffer.
    pub offset: usize,
    pub dtype: DType,
    pub n: usize,
    pub d: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Scalars that came with the features (platonic-rep's `.pt` carries `num_params`, `loss`, `bpb`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileMeta {
    pub num_params: Option<i64>,
    /// (name, value) pairs to store as the checkpoint's scores.
    pub scores: Vec<(String, f64)>,
}

/// A parsed feature file: all layers of one checkpoint on one dataset.
pub struct FeatureFile {
    pub path: PathBuf,
    buffers: Vec<Buffer>,
    pub layers: Vec<LayerSpec>,
    /// One tensor, or one array per layer (decides the official clamp scope).
    pub layout: Layout,
    pub meta: FileMeta,
}

impl FeatureFile {
    /// Builds a file from buffers and layer specs, checking every view stays inside its buffer
    /// and that all layers share n.
    pub fn new(
        path: &Path,
        buffers: Vec<Buffer>,
        (layers, layout): (Vec<LayerSpec>, Layout),
        meta: FileMeta,
    ) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::format(path, "no feature tensors found"));
        }
        check_layer_count(path, layers.len(), "layers")?;
        let n0 = layers[0].n;
        // Bytes the layers claim from each buffer: views may not overlap (an expanded or repeated
        // view would turn a few stored bytes into an unbounded blob).
        let mut claimed = vec![0usize; buffers.len()];
        for l in &layers {
            if l.n != n0 {
                return Err(Error::format(
                    path,
                    format!(
                        "layers disagree on n: {} has {} rows, {} has {}",
                        layers[0].name, n0, l.name, l.n
                    ),
                ));
            }
            if l.n == 0 || l.d == 0 {
                return Err(Error::format(
                    path,
                    format!("{} is empty ({} × {})", l.name, l.n, l.d),
                ));
            }
            let buf = buffers
                .get(l.buffer)
                .ok_or_else(|| Error::format(path, "internal: bad buffer index"))?;
            let view = LayerView {
                dtype: l.dtype,
                n: l.n,
                d: l.d,
                data: &[],
                row_stride: l.row_stride,
                col_stride: l.col_stride,
            };
            let need = view
                .required_bytes()
                .and_then(|b| b.checked_add(l.offset))
                .ok_or_else(|| Error::format(path, format!("{}: shape overflows", l.name)))?;
            if need > buf.bytes().len() {
                return Err(Error::format(
                    path,
                    format!(
                        "truncated: {} needs {} bytes, the file holds {}",
                        l.name,
                        need,
                        buf.bytes().len()
                    ),
                ));
            }
            let logical = l.n * l.d * l.dtype.size();
            claimed[l.buffer] = claimed[l.buffer].saturating_add(logical);
            if claimed[l.buffer] > buf.bytes().len() {
                return Err(Error::format(
                    path,
                    format!(
                        "{}: layers overlap in storage (expanded or repeated views): their elements need more bytes than the {} stored",
                        l.name,
                        buf.bytes().len()
                    ),
                ));
            }
        }
        Ok(FeatureFile {
            path: path.to_path_buf(),
            buffers,
            layers,
            layout,
            meta,
        })
    }

    /// Number of samples (rows), shared by all layers.
    pub fn n(&self) -> usize {
        self.layers[0].n
    }

    /// Layer `i` as a view.
    /// Every layer as f32, refusing NaN and Inf (named by layer, row and column).
    pub fn finite_layers(&self) -> Result<Vec<ndarray::Array2<f32>>> {
        (0..self.layers.len())
            .map(|i| {
                let l = self.layer(i).to_f32();
                match l.iter().position(|v| !v.is_finite()) {
                    None => Ok(l),
                    Some(pos) => Err(Error::format(
                        &self.path,
                        format!(
                            "NaN or Inf present in layer {i} at row {}, column {}",
                            pos / l.ncols(),
                            pos % l.ncols()
                        ),
                    )),
                }
            })
            .collect()
    }

    pub fn layer(&self, i: usize) -> LayerView<'_> {
        let l = &self.layers[i];
        LayerView {
            dtype: l.dtype,
            n: l.n,
            d: l.d,
            data: &self.buffers[l.buffer].bytes()[l.offset..],
            row_stride: l.row_stride,
            col_stride: l.col_stride,
        }
    }
}

/// One tensor found in a file before it is cut into layers.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub buffer: usize,
    pub offset: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub strides: Vec<usize>,
}

impl TensorSpec {
    /// Row-major strides for a shape.
    pub fn c_strides(shape: &[usize]) -> Vec<usize> {
        let mut s = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1].saturating_mul(shape[i + 1]);
        }
        s
    }

    /// Cuts the tensor into layers: n × d is one layer, n × L × d is L layers.
    pub fn into_layers(self, path: &Path) -> Result<Vec<LayerSpec>> {
        match self.shape.len() {
            2 => Ok(vec![LayerSpec {
                name: self.name,
                buffer: self.buffer,
                offset: self.offset,
                dtype: self.dtype,
                n: self.shape[0],
                d: self.shape[1],
                row_stride: self.strides[0],
                col_stride: self.strides[1],
            }]),
            3 if self.shape[1] > MAX_LAYERS => {
                check_layer_count(path, self.shape[1], &format!("layers in {}", self.name))
                    .map(|()| Vec::new())
            }
            3 if self.shape[0] == 0 || self.shape[1] == 0 || self.shape[2] == 0 => {
                Err(Error::format(
                    path,
                    format!("{} is empty (shape {:?})", self.name, self.shape),
                ))
            }
            3 => (0..self.shape[1])
                .map(|l| {
                    let off = l
                        .checked_mul(self.strides[1])
                        .and_then(|e| e.checked_mul(self.dtype.size()))
                        .and_then(|b| b.checked_add(self.offset))
                        .ok_or_else(|| Error::format(path, "tensor offsets overflow"))?;
                    Ok(LayerSpec {
                        name: format!("{}[{l}]", self.name),
                        buffer: self.buffer,
                        offset: off,
                        dtype: self.dtype,
                        n: self.shape[0],
                        d: self.shape[2],
                        row_stride: self.strides[0],
                        col_stride: self.strides[2],
                    })
                })
                .collect(),
            _ => Err(Error::format(
                path,
                format!(
                    "wrong rank: {} has shape {:?}; expected n × d or n × L × d",
                    self.name, self.shape
                ),
            )),
        }
    }
}

/// Natural order of names: digit runs compare as numbers (`layer2` < `layer10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let dig = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, buf)) if *d == dig => buf.push(c),
                _ => out.push((dig, c.to_string())),
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = if x.0 && y.0 {
            let xs = x.1.trim_start_matches('0');
            let ys = y.1.trim_start_matches('0');
            xs.len().cmp(&ys.len()).then_with(|| xs.cmp(ys))
        } else {
            x.1.cmp(&y.1)
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// Turns named tensors (one per layer, or a single n × L × d one) into ordered layers, with
/// the layout they were given in.
pub fn tensors_to_layers(
    path: &Path,
    mut tensors: Vec<TensorSpec>,
) -> Result<(Vec<LayerSpec>, Layout)> {
    if tensors.is_empty() {
        return Err(Error::format(path, "no feature tensors found"));
    }
    if tensors.len() == 1 {
        return Ok((tensors.remove(0).into_layers(path)?, Layout::Stacked));
    }
    check_layer_count(path, tensors.len(), "tensors")?;
    tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.shape.len() != 2 {
            return Err(Error::format(
                path,
                format!(
                    "wrong rank: {} has shape {:?}; with several tensors each must be one layer (n × d)",
                    t.name, t.shape
                ),
            ));
        }
        out.extend(t.into_layers(path)?);
    }
    Ok((out, Layout::Layers))
}

/// Opens a feature file by its extension (`.npy`, `.npz`, `.safetensors`, `.pt`/`.pth`/`.bin`).
pub fn open(path: &Path) -> Result<FeatureFile> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "npy" => npy::open(path),
        "npz" => npz::open(path),
        "safetensors" => safetensors::open(path),
        "pt" | "pth" => pt::open(path),
        _ => Err(Error::format(
            path,
            "unknown file type; prh reads .npy, .npz, .safetensors and .pt",
        )),
    }
}

/// Opens an input for reading, refusing anything but a regular file: a FIFO or a device would
/// block or never end. The open itself does not block (O_NONBLOCK, which regular files ignore).
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let md = f.metadata().map_err(|e| Error::io(path, e))?;
    if !md.is_file() {
        return Err(Error::format(
            path,
            "not a regular file (a directory, FIFO or device); give a feature file",
        ));
    }
    Ok((f, md.len()))
}

/// Reads a whole regular file into memory (see [`Buffer`] for why it is not mapped).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    let mut buf = Vec::new();
    reserve(path, &mut buf, len, "the file")?;
    f.take(len)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Reserves `extra` more bytes in `buf`, as an error (not an abort) when memory is short.
pub(crate) fn reserve(path: &Path, buf: &mut Vec<u8>, extra: u64, what: &str) -> Result<()> {
    usize::try_from(extra)
        .ok()
        .and_then(|x| buf.try_reserve_exact(x).ok())
        .ok_or_else(|| {
            Error::format(
                path,
                format!("cannot allocate {extra} bytes of memory to read {what}"),
            )
        })?;
    advise_huge_pages(buf);
    Ok(())
}

/// Asks the kernel to back a large buffer's spare capacity with transparent huge pages: reading
/// a 1 GiB file into 4 KiB pages spends most of its time in page faults. Only advice; ignored
/// where THP is off.
fn advise_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let spare = buf.spare_capacity_mut();
    if spare.len() < 16 * HUGE {
        return;
    }
    let start = spare.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE);
    let end = (start + spare.len()) / HUGE * HUGE;
    if end > aligned {
        // SAFETY: the range lies inside this Vec's own allocation; MADV_HUGEPAGE changes no
        // contents, only how the pages are backed.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_sort_orders_layer_numbers() {
        let mut v = vec!["layer10", "layer2", "layer1", "layer02x"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["layer1", "layer2", "layer02x", "layer10"]);
    }
}
