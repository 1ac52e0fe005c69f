#!/usr/bin/env python3
"""Tests tools/export_qkv.py on a tiny Llama-like causal LM written in plain torch, and checks that
spattn-compare reads what it writes (run by ctest as compare_export_qkv):

    /usr/bin/python3 tools/test_export_qkv.py path/to/spattn-compare

Checks, against values recomputed here independently of the hooks:
  - files, names, shapes, dtypes ('<f4' and '<f2') and meta.json;
  - q and k are after RoPE (equal to RoPE applied by hand to the projections, and different from
    the raw projections), v is the v projection, per layer, with GQA heads not repeated;
  - softmax(q k^T / sqrt(d)) v from the saved arrays equals the model's own attention output
    (so the files hold exactly what the model attended with);
  - --layers-like selection, and spattn-compare --input on the folder: exit 0, dense rows exact.
Exit code 77 (skipped) when torch or numpy is missing (Debian: python3-torch python3-numpy).
"""
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover
    print(f"test_export_qkv: skipped ({e})", file=sys.stderr)
    sys.exit(77)

sys.dont_write_bytecode = True  # no tools/__pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_qkv import attention_modules, export_qkv  # noqa: E402


# ---- a tiny Llama-like model (the shape of Hugging Face's modeling_llama, in plain torch) -------

def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rope_cos_sin(tokens, dim, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(tokens, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[None, None], emb.sin()[None, None]


class TinyAttention(nn.Module):
    def __init__(self, hidden, heads, kv_heads, head_dim):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.last_attn = None  # [1, heads, tokens, head_dim], for the test

    def forward(self, hidden_states, cos, sin):
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)  # looked up at call time, like HF
        g = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        a = torch.softmax(s, dim=-1) @ v
        self.last_attn = a.detach()
        return self.o_proj(a.transpose(1, 2).reshape(b, t, -1))


class TinyLayer(nn.Module):
    def __init__(self, hidden, heads, kv_heads, head_dim):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(hidden)
        self.self_attn = TinyAttention(hidden, heads, kv_heads, head_dim)
        self.post_attention_layernorm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyCausalLM(nn.Module):
    def __init__(self, vocab=97, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16):
        super().__init__()
        self.head_dim = head_dim
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(TinyLayer(hidden, heads, kv_heads, head_dim) for _ in range(layers))
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(input_ids.shape[-1], self.head_dim)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(x)


# ---- checks --------------------------------------------------------------------------------------

def check(cond, what):
    if not cond:
        raise AssertionError(what)


def npy_descr(path):
    with open(path, "rb") as f:
        head = f.read(128).decode("latin1")
    return head[head.index("'descr': '") + 10:][:3]


def main():
    tool = sys.argv[1] if len(sys.argv) > 1 else None
    torch.manual_seed(0)
    tokens, heads, kv_heads, d = 160, 4, 2, 16
    model = TinyCausalLM(layers=3, heads=heads, kv_heads=kv_heads, head_dim=d)
    ids = torch.randint(0, 97, (1, tokens))
    check(len(attention_modules(model)) == 3, "three attention modules found")

    # Independent reference: run the layers by hand, keeping each layer's input and attention.
    refs = []
    with torch.no_grad():
        x = model.embed_tokens(ids)
        cos, sin = rope_cos_sin(tokens, d)
        for layer in model.layers:
            h = layer.input_layernorm(x)
            att = layer.self_attn
            q = att.q_proj(h).view(1, tokens, heads, d).transpose(1, 2)
            k = att.k_proj(h).view(1, tokens, kv_heads, d).transpose(1, 2)
            v = att.v_proj(h).view(1, tokens, kv_heads, d)
            qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
            refs.append({"q": qr[0].transpose(0, 1).numpy(), "k": kr[0].transpose(0, 1).numpy(),
                         "v": v[0].numpy(), "q_raw": q[0].transpose(0, 1).numpy()})
            x = layer(x, cos, sin)

    with tempfile.TemporaryDirectory() as tmp:
        out32, out16, part = (os.path.join(tmp, n) for n in ("fp32", "fp16", "part"))
        meta = export_qkv(model, ids, out32, dtype="fp32")
        # the model's own attention outputs of that forward pass, per layer
        model_attn = [m.self_attn.last_attn[0].numpy() for m in model.layers]
        check(meta["rope_applied"] is True, "RoPE captured")
        check(meta["layers"] == [0, 1, 2], f"layers in meta: {meta['layers']}")
        check((meta["heads"], meta["kv_heads"], meta["head_dim"]) == (heads, kv_heads, d), "meta shape")
        check(json.load(open(os.path.join(out32, "meta.json")))["tokens"] == tokens, "meta.json")
        for i in range(3):
            q, k, v = (np.load(os.path.join(out32, f"layer{i:02d}_{n}.npy")) for n in "qkv")
            check(q.shape == (tokens, heads, d), f"q shape {q.shape}")
            check(k.shape == (tokens, kv_heads, d) and v.shape == k.shape, f"k/v shape {k.shape}")
            check(npy_descr(os.path.join(out32, f"layer{i:02d}_q.npy")) == "<f4", "fp32 descr")
            check(np.allclose(q, refs[i]["q"], atol=1e-6), f"layer {i}: q is q_proj after RoPE")
            check(np.allclose(k, refs[i]["k"], atol=1e-6), f"layer {i}: k is k_proj after RoPE")
            check(np.allclose(v, refs[i]["v"], atol=1e-6), f"layer {i}: v is v_proj")
            check(not np.allclose(q[1:], refs[i]["q_raw"][1:], atol=1e-3), "q differs from pre-RoPE")
            # attention from the files == the model's attention
            g = heads // kv_heads
            s = np.einsum("thd,shd->hts", q, np.repeat(k, g, axis=1)) / math.sqrt(d)
            s = np.where(np.triu(np.ones((tokens, tokens), bool), 1)[None], -np.inf, s)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            a = np.einsum("hts,shd->htd", p, np.repeat(v, g, axis=1))
            check(np.allclose(a, model_attn[i], atol=1e-5), f"layer {i}: attention from the files")

        meta16 = export_qkv(model, ids, out16, dtype="fp16")
        check(meta16["dtype"] == "fp16", "fp16 meta")
        q16 = np.load(os.path.join(out16, "layer01_q.npy"))
        check(q16.dtype == np.float16 and npy_descr(os.path.join(out16, "layer01_q.npy")) == "<f2",
              "fp16 files are '<f2'")
        check(np.allclose(q16.astype(np.float32), refs[1]["q"], atol=2e-2), "fp16 values")

        export_qkv(model, ids, part, layers=[2])
        check(sorted(os.listdir(part)) == ["layer02_k.npy", "layer02_q.npy", "layer02_v.npy",
                                           "meta.json"], f"layer selection: {os.listdir(part)}")
        try:
            export_qkv(model, ids, part, layers=[5])
            check(False, "layer 5 must be rejected")
        except ValueError as e:
            check("out of range" in str(e), "layer range message")

        if tool:
            for folder in (out32, out16):
                res = os.path.join(tmp, "res-" + os.path.basename(folder))
                r = subprocess.run([tool, "--input", folder, "--reps", "1", "--eval-rows", "32",
                                    "--decode-queries", "8", "--out", res],
                                   capture_output=True, text=True)
                check(r.returncode == 0, f"spattn-compare failed on {folder}:\n{r.stderr}")
                with open(os.path.join(res, "results.csv"), newline="") as f:
                    rows = list(csv.reader(f))  # budget notes may hold quoted commas
                header = rows[0]
                col = {n: j for j, n in enumerate(header)}
                # a budget a method cannot meet on this short input is reported, not measured
                body = [b for b in rows[1:] if b[col["status"]] == "ok"]
                check({b[0] for b in body} == {"layer00", "layer01", "layer02"}, "all layers read")
                for b in body:
                    check(int(b[col["tokens"]]) == tokens and int(b[col["heads"]]) == heads
                          and int(b[col["kv_heads"]]) == kv_heads, "shapes seen by the tool")
                    if b[col["method"]] == "dense":
                        check(float(b[col["rel_error"]]) == 0 and float(b[col["mass_recall"]]) == 1,
                              "dense is exact")
                    # the kernels computed what the key sets say, on the exported data
                    check(float(b[col["kernel_vs_selection_error"]]) < 1e-4, "kernel check")
    print("test_export_qkv: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
