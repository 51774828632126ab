"""reg.log of a 1024 × 24 × 1024 f32 array (96 MiB) against np.save of the same array, side by
side, 5 rounds each (fresh registry each round; np.save to a file in the same directory).
Prints the medians and the ratio (target: ≤ 1.5×). Run by `cargo bench --bench python`."""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import prh

# PRH_BENCH_SMOKE (set by the bench's smoke run under `cargo test`): tiny sizes, one round.
SMOKE = bool(os.environ.get("PRH_BENCH_SMOKE"))
shape, rounds = ((64, 2, 32), 1) if SMOKE else ((1024, 24, 1024), 5)
x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
log_t, save_t, relog_t, durable_t = [], [], [], []
with tempfile.TemporaryDirectory() as d:
    for r in range(rounds):
        t = time.perf_counter()
        np.save(Path(d) / f"x{r}.npy", x)
        save_t.append(time.perf_counter() - t)
        # np.save made durable, as prh makes every blob (fsync of the file).
        t = time.perf_counter()
        with open(Path(d) / f"y{r}.npy", "wb") as f:
            np.save(f, x)
            f.flush()
            os.fsync(f.fileno())
        durable_t.append(time.perf_counter() - t)
        reg = prh.init(Path(d) / f"reg{r}")
        t = time.perf_counter()
        reg.log(x, model="m", dataset="ds", modality="language", progress=False)
        log_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        reg.log(x, model="m", dataset="ds", modality="language", progress=False)
        relog_t.append(time.perf_counter() - t)
m = statistics.median
print(f"array {x.nbytes / 2**20:.0f} MiB, median of {rounds} (min–max):")
print(f"  np.save          {m(save_t):.3f} s ({min(save_t):.3f}–{max(save_t):.3f})")
print(f"  np.save + fsync  {m(durable_t):.3f} s ({min(durable_t):.3f}–{max(durable_t):.3f})")
print(f"  reg.log          {m(log_t):.3f} s ({min(log_t):.3f}–{max(log_t):.3f})  = {m(log_t) / m(save_t):.2f}× np.save, {m(log_t) / m(durable_t):.2f}× np.save + fsync")
print(f"  reg.log again    {m(relog_t):.3f} s ({min(relog_t):.3f}–{max(relog_t):.3f})  (already stored: hashed, nothing written)")
sys.stdout.flush()
