"""Times the official platonic-rep per-layer-pair loop on one model pair, with the official
code itself: `measure_alignment.compute_score` (every layer pair, both neighbour sets or
kernels recomputed for each, `metrics.AlignmentMetrics.measure`) after the official
preparation (`metrics.remove_outliers(exact=True)`, what `prepare_features` does before moving
the tensor to CUDA; this runs on the CPU).

    python loop.py CHECKOUT X.npy Y.npy METRIC [TOPK]

CHECKOUT is a clone of github.com/minyoungg/platonic-rep; X.npy and Y.npy are n × L × d
float32. Prints one JSON line: seconds, cells, the best score and its layers, the versions.
Run by benches/paper.rs when PRH_PLATONIC_REP names a checkout."""

import json
import sys
import time

import numpy as np
import torch

checkout, xp, yp, metric = sys.argv[1:5]
topk = int(sys.argv[5]) if len(sys.argv) > 5 else 10
sys.path.insert(0, checkout)
import measure_alignment  # noqa: E402  (the checkout's code)
import metrics  # noqa: E402

torch.set_num_threads(torch.get_num_threads())
x = metrics.remove_outliers(torch.from_numpy(np.load(xp)).float(), q=0.95, exact=True)
y = metrics.remove_outliers(torch.from_numpy(np.load(yp)).float(), q=0.95, exact=True)
t = time.perf_counter()
best, layers = measure_alignment.compute_score(x, y, metric=metric, topk=topk)
secs = time.perf_counter() - t
print(json.dumps({
    "seconds": secs,
    "cells": x.shape[1] * y.shape[1],
    "best": float(best),
    "best_layers": list(layers) if layers is not None else None,
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
}))
