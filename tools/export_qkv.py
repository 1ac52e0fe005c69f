#!/usr/bin/env python3
"""Dump per-layer Q/K/V (after RoPE) of a PyTorch causal LM for spattn-compare.

    python3 tools/export_qkv.py --model meta-llama/Llama-3.2-1B --text prompt.txt \\
        --tokens 8192 --out qkv/ [--dtype fp16] [--layers 0,8,15]
    spattn-compare --input qkv/ --plot

Output folder (what spattn-compare --input reads):
    layerNN_q.npy   [tokens, heads, head_dim]     queries after RoPE
    layerNN_k.npy   [tokens, kv_heads, head_dim]  keys after RoPE (not repeated for GQA)
    layerNN_v.npy   [tokens, kv_heads, head_dim]  values
    meta.json       model, tokens, heads, kv_heads, head_dim, dtype, layers, rope_applied
NN is the layer index, zero-padded to two digits (more when the model has >= 100 layers). Arrays
are little-endian float32 ('<f4') or float16 ('<f2'), C order, batch 1.

How it captures them, with forward hooks and no change to the model's code:
  - attention modules are the modules with q_proj, k_proj and v_proj children (Hugging Face
    LlamaAttention, MistralAttention, Qwen2Attention, ... and any module built the same way);
    a forward pre-hook on each records which layer is running;
  - v comes from a forward hook on v_proj (V gets no position encoding);
  - q and k after RoPE come from wrapping the function the attention module's Python module calls
    to apply RoPE (`apply_rotary_pos_emb` in Hugging Face models; --rope-fn to name another): its
    outputs, [batch, heads, tokens, head_dim], are the rotated q and k of the running layer.
    If the module has no such function, q and k are taken from q_proj/k_proj (before RoPE) and
    meta.json says rope_applied: false (a warning is printed).

From Python, with any model object (this is what tools/test_export_qkv.py does):
    from export_qkv import export_qkv
    export_qkv(model, input_ids, "qkv/", dtype="fp16")

Needs torch and numpy (Debian: python3-torch, python3-numpy); --model needs `transformers`.
"""
import argparse
import json
import os
import sys
from contextlib import contextmanager

import numpy as np
import torch


def attention_modules(model):
    """(name, module) of every module with q_proj, k_proj and v_proj, in model order."""
    found = []
    for name, mod in model.named_modules():
        if all(isinstance(getattr(mod, p, None), torch.nn.Module)
               for p in ("q_proj", "k_proj", "v_proj")):
            found.append((name, mod))
    return found


def _heads_of(mod, which):
    """Head counts from the usual attribute names (used when RoPE is not captured)."""
    cfg = getattr(mod, "config", None)
    names = {"q": ("num_heads", "num_attention_heads"),
             "kv": ("num_key_value_heads", "num_kv_heads", "num_heads", "num_attention_heads")}
    for n in names[which]:
        for src in (mod, cfg):
            v = getattr(src, n, None) if src is not None else None
            if isinstance(v, int) and v > 0:
                return v
    raise ValueError(f"export_qkv: cannot tell the number of {which} heads of {type(mod).__name__}")


@contextmanager
def _hooks(model, mods, rope_fn):
    state = {"layer": None, "q": {}, "k": {}, "v": {}, "q_raw": {}, "k_raw": {}, "rope_seen": set()}
    handles, patched = [], []

    def pre(i):
        def f(_mod, _args, *_):
            state["layer"] = i
        return f

    def post(_mod, _args, _out):
        state["layer"] = None

    def proj(kind, i):
        def f(_mod, _args, out):
            state[kind][i] = out.detach()
        return f

    for i, (_name, mod) in enumerate(mods):
        handles.append(mod.register_forward_pre_hook(pre(i)))
        handles.append(mod.register_forward_hook(post))
        handles.append(mod.q_proj.register_forward_hook(proj("q_raw", i)))
        handles.append(mod.k_proj.register_forward_hook(proj("k_raw", i)))
        handles.append(mod.v_proj.register_forward_hook(proj("v", i)))

    # Wrap the RoPE function in each attention module's Python module (once per module).
    for pymod_name in sorted({type(m).__module__ for _, m in mods}):
        pymod = sys.modules.get(pymod_name)
        fn = getattr(pymod, rope_fn, None) if pymod is not None else None
        if not callable(fn):
            continue

        def wrapper(*args, __fn=fn, **kwargs):
            out = __fn(*args, **kwargs)
            i = state["layer"]
            if i is not None and isinstance(out, (tuple, list)) and len(out) >= 2:
                state["q"][i], state["k"][i] = out[0].detach(), out[1].detach()
                state["rope_seen"].add(i)
            return out

        setattr(pymod, rope_fn, wrapper)
        patched.append((pymod, fn))
    try:
        yield state
    finally:
        for h in handles:
            h.remove()
        for pymod, fn in patched:
            setattr(pymod, rope_fn, fn)


def _to_thd(x, heads):
    """[1, H, T, D] (rotated) or [1, T, H*D] (projection) -> [T, H, D] float32 numpy."""
    x = x.float().cpu()
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError("export_qkv: batch must be 1")
        return x[0].transpose(0, 1).contiguous().numpy()
    if x.dim() == 3:
        if x.shape[0] != 1:
            raise ValueError("export_qkv: batch must be 1")
        t, hd = x.shape[1], x.shape[2]
        if hd % heads:
            raise ValueError(f"export_qkv: projection width {hd} not divisible by {heads} heads")
        return x[0].reshape(t, heads, hd // heads).contiguous().numpy()
    raise ValueError(f"export_qkv: unexpected tensor shape {tuple(x.shape)}")


def export_qkv(model, input_ids, out_dir, dtype="fp32", layers=None, rope_fn="apply_rotary_pos_emb",
               forward_kwargs=None):
    """Runs model(input_ids) once and writes layerNN_{q,k,v}.npy + meta.json into out_dir.

    input_ids: LongTensor [1, tokens]. dtype: "fp32" or "fp16" (storage of the files).
    layers: iterable of layer indices to keep (default: all). Returns the meta dict.
    """
    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"export_qkv: dtype must be fp32 or fp16, got {dtype!r}")
    mods = attention_modules(model)
    if not mods:
        raise ValueError("export_qkv: no attention module with q_proj/k_proj/v_proj found")
    keep = set(range(len(mods))) if layers is None else set(layers)
    bad = sorted(i for i in keep if not 0 <= i < len(mods))
    if bad:
        raise ValueError(f"export_qkv: layers {bad} out of range (model has {len(mods)})")
    os.makedirs(out_dir, exist_ok=True)
    width = max(2, len(str(len(mods) - 1)))
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    with _hooks(model, mods, rope_fn) as st, torch.no_grad():
        model.eval()
        model(input_ids, **(forward_kwargs or {}))
    meta = {"model": type(model).__name__, "tokens": int(input_ids.shape[-1]), "dtype": dtype,
            "layers": [], "files": "layerNN_{q,k,v}.npy [tokens, heads, head_dim]",
            "rope_applied": True}
    for i in sorted(keep):
        _name, mod = mods[i]
        if i in st["rope_seen"]:
            q, k = _to_thd(st["q"][i], 0), _to_thd(st["k"][i], 0)
        else:
            print(f"export_qkv: warning: layer {i}: no '{rope_fn}' call seen; q and k are "
                  "the projections before RoPE", file=sys.stderr)
            meta["rope_applied"] = False
            q = _to_thd(st["q_raw"][i], _heads_of(mod, "q"))
            k = _to_thd(st["k_raw"][i], _heads_of(mod, "kv"))
        v = _to_thd(st["v"][i], k.shape[1])
        if v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
            raise ValueError(f"export_qkv: layer {i}: inconsistent shapes q {q.shape} "
                             f"k {k.shape} v {v.shape}")
        stem = os.path.join(out_dir, f"layer{i:0{width}d}")
        for name, x in (("q", q), ("k", k), ("v", v)):
            # np.save writes format 1.0, '<f4'/'<f2', C order: what spattn's reader expects.
            np.save(f"{stem}_{name}.npy", np.ascontiguousarray(x.astype(np_dtype)))
        meta["layers"].append(i)
        meta.update({"heads": int(q.shape[1]), "kv_heads": int(k.shape[1]),
                     "head_dim": int(q.shape[2])})
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model name or local path")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text file to tokenize (repeated to reach --tokens)")
    src.add_argument("--prompt", help="prompt string (repeated to reach --tokens)")
    ap.add_argument("--tokens", type=int, default=4096, help="sequence length")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default="fp16")
    ap.add_argument("--layers", help="comma-separated layer indices (default: all)")
    ap.add_argument("--rope-fn", default="apply_rotary_pos_emb",
                    help="name of the RoPE function in the attention module's Python module")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        print("export_qkv: --model needs the `transformers` package; from Python, call "
              "export_qkv(model, input_ids, out_dir) with any torch model", file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32,
                                                 attn_implementation="eager").to(a.device)
    text = open(a.text).read() if a.text else a.prompt
    ids = tok(text, return_tensors="pt").input_ids
    if ids.shape[-1] == 0:
        print("export_qkv: empty text", file=sys.stderr)
        return 2
    ids = ids.repeat(1, (a.tokens + ids.shape[-1] - 1) // ids.shape[-1])[:, : a.tokens]
    layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    meta = export_qkv(model, ids.to(a.device), a.out, a.dtype, layers, a.rope_fn)
    print(f"export_qkv: wrote {len(meta['layers'])} layers to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
