"""Turns extract.py's output into the compact fixture prh ships (fixtures/real_zoo/): every
array as float16, and, where all layers would not fit the byte budget, evenly spaced layers of
each model (always its last), dropping a layer from the model holding the most bytes until the
whole fits. Layer arrays keep their names (`layer_07` is the eighth tapped layer), so depth is
still legible; manifest.json lists which were kept."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def spaced(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices, evenly spaced and ending at the last."""
    return sorted({round((j + 1) * total / keep) - 1 for j in range(keep)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="extract.py's --out directory")
    ap.add_argument("dst", type=Path, help="the fixture directory to write")
    ap.add_argument("--budget-mb", type=float, default=14.5, help="bytes of feature data, in MB (10^6)")
    args = ap.parse_args()
    manifest = json.loads((args.src / "manifest.json").read_text())
    n = manifest["dataset"]["n"]
    widths = {m: spec["widths"] for m, spec in manifest["models"].items()}
    keep = {m: len(w) for m, w in widths.items()}

    def size(m: str) -> int:
        return sum(widths[m][i] for i in spaced(len(widths[m]), keep[m])) * n * 2

    while sum(size(m) for m in keep) > args.budget_mb * 1e6:
        m = max((m for m in keep if keep[m] > 1), key=size)
        keep[m] -= 1
    args.dst.mkdir(parents=True, exist_ok=True)
    for m, spec in manifest["models"].items():
        src = np.load(args.src / f"{m}.npz")
        idx = spaced(len(widths[m]), keep[m])
        np.savez(args.dst / f"{m}.npz", **{f"layer_{i:02d}": src[f"layer_{i:02d}"].astype(np.float16) for i in idx})
        spec["kept_layers"] = [spec["layers"][i] for i in idx]
        spec["meta"]["precision"] = "float16 (extracted in float32)"
        spec["meta"]["layers_kept"] = f"{len(idx)} of {len(widths[m])}: " + ",".join(str(i) for i in idx)
        print(f"{m}: {len(idx)} of {len(widths[m])} layers, {size(m) / 1e6:.2f} MB")
    manifest["higher_is_better"] = {"category_knn10": True, "imagenet_top1": True, "bpb": False}
    (args.dst / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copy(args.src / "dataset.json", args.dst / "dataset.json")
    total = sum(p.stat().st_size for p in args.dst.iterdir() if p.is_file())
    print(f"{args.dst}: {total / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
