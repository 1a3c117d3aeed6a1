#!/usr/bin/env python3
"""Converts an upstream Proteus/ASPA state dict into proteus' HDF5 weights schema
(docs/hdf5_schema.md), so that `[checkpoint] weights = FILE` runs a model trained upstream.

    torch_to_h5.py STATE (.pt/.pth via torch, or .npz) OUT.h5 [--prefix attn.]

Name mapping (upstream AdaptiveSparseAttention / CausalASPAMultiheadAttention -> proteus):
    <p>qkv.weight [3E, E]              -> /weights/qkv_weight   (same torch Linear layout)
    <p>qkv.bias [3E] (zeros if absent)  -> /weights/qkv_bias
    <p>proj.weight [E, E]              -> /weights/out_weight
    <p>proj.bias [E] (zeros if absent)  -> /weights/out_bias
    <p>head_router.linear.weight [G,E]  -> /weights/router_weight
    <p>routing_prototypes [G, E]        -> /dna/prototypes   (older name: dna_proto)
    <p>routing_usage_ema [G]            -> /dna/usage        (older name: dna_usage_ema)
    <p>routing_confidence [G]           -> /dna/confidence   (older name: dna_confidence)
    <p>gate_to_head [G]                 -> /gate_to_head (default floor(g H / G) if absent)
The prefix <p> is found automatically when exactly one key ends in "qkv.weight".
--heads is needed only when gate_to_head is absent.
"""
import argparse
import os
import sys

import h5py
import numpy as np

FORMAT_VERSION = 1


def fail(msg):
    print(f"torch_to_h5.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def load(path):
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    try:
        import torch
    except ImportError:
        fail(f"{path}: reading a torch file needs PyTorch (or pass an .npz of the same names)")
    state = torch.load(path, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("state")
    ap.add_argument("out")
    ap.add_argument("--prefix", help="key prefix of the attention module (default: found)")
    ap.add_argument("--heads", type=int, help="number of heads (only when gate_to_head is absent)")
    args = ap.parse_args()
    if not os.path.exists(args.state):
        fail(f"{args.state}: file does not exist")
    sd = load(args.state)
    prefix = args.prefix
    if prefix is None:
        hits = [k[: -len("qkv.weight")] for k in sd if k.endswith("qkv.weight")]
        if len(hits) != 1:
            fail(f"{args.state}: found {len(hits)} keys ending in qkv.weight; give --prefix")
        prefix = hits[0]

    def get(*names, required=True):
        for n in names:
            if prefix + n in sd:
                return np.asarray(sd[prefix + n])
        if required:
            fail(f"{args.state}: missing {prefix}{names[0]}")
        return None

    qkv_w = get("qkv.weight").astype(np.float32)
    e = qkv_w.shape[1]
    if qkv_w.shape != (3 * e, e):
        fail(f"{args.state}: {prefix}qkv.weight has shape {qkv_w.shape}, expected [3E, E]")
    qkv_b = get("qkv.bias", required=False)
    out_w = get("proj.weight").astype(np.float32)
    out_b = get("proj.bias", required=False)
    router = get("head_router.linear.weight").astype(np.float32)
    g = router.shape[0]
    protos = get("routing_prototypes", "dna_proto").astype(np.float32)
    usage = get("routing_usage_ema", "dna_usage_ema").astype(np.float32)
    conf = get("routing_confidence", "dna_confidence").astype(np.float32)
    g2h = get("gate_to_head", required=False)
    if g2h is None:
        if not args.heads:
            fail(f"{args.state}: no gate_to_head; give --heads")
        g2h = np.minimum(np.arange(g) * args.heads // g, args.heads - 1)
    g2h = np.asarray(g2h, dtype=np.int32)
    heads = args.heads or int(g2h.max()) + 1
    checks = [(out_w.shape, (e, e), "proj.weight"), (router.shape, (g, e), "head_router.linear.weight"),
              (protos.shape, (g, e), "routing_prototypes"), (usage.shape, (g,), "routing_usage_ema"),
              (conf.shape, (g,), "routing_confidence"), (g2h.shape, (g,), "gate_to_head")]
    for got, want, name in checks:
        if got != want:
            fail(f"{args.state}: {prefix}{name} has shape {got}, expected {want}")
    tmp = args.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["converted_from"] = os.path.basename(args.state)
        c = f.create_group("config")
        c.attrs["embed_dim"] = np.int64(e)
        c.attrs["num_heads"] = np.int64(heads)
        c.attrs["num_gates"] = np.int64(g)
        w = f.create_group("weights")
        w.attrs["layout"] = "torch.nn.Linear: weight [out x in], y = x W^T + b"
        w["qkv_weight"] = qkv_w
        w["qkv_bias"] = (np.zeros(3 * e) if qkv_b is None else qkv_b).astype(np.float32)
        w["out_weight"] = out_w
        w["out_bias"] = (np.zeros(e) if out_b is None else out_b).astype(np.float32)
        w["router_weight"] = router
        d = f.create_group("dna")
        d["prototypes"], d["usage"], d["confidence"] = protos, usage, conf
        f["gate_to_head"] = g2h
    os.replace(tmp, args.out)
    print(f"{args.out}: E={e}, heads={heads}, gates={g} (prefix '{prefix}')")


if __name__ == "__main__":
    main()
