"""Reads a legacy (pre-zip, PyTorch < 1.6) `torch.save` state dict into numpy arrays, without
PyTorch: three small pickles (magic, protocol, system info), the state dict pickle whose tensors
point at storages by key, the list of storage keys, then each storage as an int64 element count
followed by its raw little-endian data."""

import pickle, struct, numpy as np, sys, collections
DT = {'FloatStorage': np.float32, 'HalfStorage': np.float16, 'LongStorage': np.int64, 'IntStorage': np.int32, 'DoubleStorage': np.float64}
def load_pth(path):
    """Reads a legacy (pre-zip) torch.save state dict into numpy arrays, without torch."""
    f = open(path, 'rb')
    views = []
    storages = {}
    class U(pickle.Unpickler):
        def find_class(self, mod, name):
            if mod == 'torch._utils' and name == '_rebuild_tensor_v2':
                def rebuild(storage, offset, size, stride, *a):
                    views.append((storage, offset, tuple(size), tuple(stride)))
                    return len(views) - 1
                return rebuild
            if mod == 'collections' and name == 'OrderedDict':
                return collections.OrderedDict
            if mod == 'torch' and name.endswith('Storage'):
                return name
            return super().find_class(mod, name)
        def persistent_load(self, pid):
            _, kind, key, loc, numel, view = pid
            storages[key] = (kind, numel)
            return key
    for _ in range(3):
        pickle.load(f)  # magic, protocol, sys info
    sd = U(f).load()
    keys = pickle.load(f)
    data = {}
    for k in keys:
        kind, _ = storages[k]
        (numel,) = struct.unpack('<q', f.read(8))
        dt = np.dtype(DT[kind])
        data[k] = np.frombuffer(f.read(numel * dt.itemsize), dtype=dt)
    out = collections.OrderedDict()
    for name, vi in sd.items():
        st, off, size, stride = views[vi]
        arr = data[st]
        isz = arr.itemsize
        out[name] = np.lib.stride_tricks.as_strided(arr[off:], shape=size, strides=[s * isz for s in stride]).copy() if size else arr[off:off + 1].reshape(())
    return out

if __name__ == '__main__':
    sd = load_pth(sys.argv[1])
    for k, v in list(sd.items()):
        print(k, v.shape)
