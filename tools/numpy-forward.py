#!/usr/bin/env python3
"""A plain numpy Llama forward pass on weights dequantized by the `gguf` package.

Independent of both quantd and llama.cpp: float64 activations, exact dequantized weights,
no activation quantization.  Used to see which engine a disagreement comes from.

usage: python3 tools/numpy-forward.py MODEL OUT.npy TOKEN_ID...
writes the logits of every position, shape [n_tokens, n_vocab], float32.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main():
    path, out = sys.argv[1], sys.argv[2]
    toks = [int(t) for t in sys.argv[3:]]
    r = GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim == 1 and len(t.shape) > 1 else a
    n_layer = kv["llama.block_count"]
    d = kv["llama.embedding_length"]
    nh = kv["llama.attention.head_count"]
    nkv = kv["llama.attention.head_count_kv"]
    hd = d // nh
    base = kv.get("llama.rope.freq_base", 10000.0)
    eps = kv["llama.attention.layer_norm_rms_epsilon"]
    n = len(toks)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, nheads):
        x = x.reshape(n, nheads, hd // 2, 2)
        pos = np.arange(n)[:, None]
        theta = pos * base ** (-np.arange(hd // 2) * 2.0 / hd)
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        x0, x1 = x[..., 0], x[..., 1]
        return np.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).reshape(n, nheads * hd)

    x = W["token_embd.weight"][toks]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for il in range(n_layer):
        p = f"blk.{il}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = rope(h @ W[p + "attn_q.weight"].T, nh)
        k = rope(h @ W[p + "attn_k.weight"].T, nkv)
        v = h @ W[p + "attn_v.weight"].T
        att = np.zeros((n, nh * hd))
        for hh in range(nh):
            kh = hh // (nh // nkv)
            qs, ks, vs = q[:, hh * hd:(hh + 1) * hd], k[:, kh * hd:(kh + 1) * hd], v[:, kh * hd:(kh + 1) * hd]
            s = qs @ ks.T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, hh * hd:(hh + 1) * hd] = s @ vs
        x = x + att @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    out_w = W.get("output.weight", W["token_embd.weight"])
    logits = rms(x, W["output_norm.weight"]) @ out_w.T
    np.save(out, logits.astype(np.float32))


if __name__ == "__main__":
    main()
