"""Exact inner-product kNN with faiss-cpu's IndexFlatIP, as a user would run it.

Usage: faiss_knn.py X.npy K THREADS OUT.npy
Prints one JSON line: {"seconds": search time, "faiss": version, "threads": THREADS}.
Writes the neighbour indices (n x K, self excluded by searching K + 1) to OUT.npy, as
float32 (exact below 2^24).
"""
import json
import sys
import time

import faiss
import numpy as np

x_path, k, threads, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
faiss.omp_set_num_threads(threads)
x = np.ascontiguousarray(np.load(x_path), dtype=np.float32)
t = time.perf_counter()
index = faiss.IndexFlatIP(x.shape[1])
index.add(x)
_, idx = index.search(x, k + 1)
seconds = time.perf_counter() - t
# Drop each row's self match (the official code excludes self); keep k others.
keep = np.empty((x.shape[0], k), dtype=np.int64)
for i in range(x.shape[0]):
    r = idx[i][idx[i] != i]
    keep[i] = r[:k]
np.save(out, keep.astype(np.float32))  # exact below 2^24
print(json.dumps({"seconds": seconds, "faiss": faiss.__version__, "threads": threads}))
