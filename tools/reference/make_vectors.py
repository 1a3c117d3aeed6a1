#!/usr/bin/env python3
"""Record reference vectors from the upstream PyTorch Proteus (ASPA) module for the parity test.

  make_vectors.py record UPSTREAM_SRC OUT_DIR   run upstream (needs torch; Triton on a GPU) and
                                                write one .npz per case into OUT_DIR
  make_vectors.py pack OUT_DIR H5_DIR           turn those .npz files into HDF5 (needs h5py)

UPSTREAM_SRC is the `src` folder of github:Zen-Sherbert/Proteus-Attention (the commit is stored in
every file). Each case builds upstream's AdaptiveSparseAttention from a ModelConfig with fixed
seeds, runs two warm-up forwards on other inputs (so the DNA prototypes, usage and confidence are
no longer at their initial values), then records one forward in eval mode: weights and DNA before
it, the input, every intermediate upstream computes (gate probabilities, DNA similarity, blend
strength, importance, token mask, head mask, head count, shortlist budget and candidate sets of
sampled rows), the output and the DNA after its EMA update.

HDF5 layout (tests/data/parity/README.md): /weights and /dna in proteus' checkpoint schema
(docs/hdf5_schema.md), /gate_to_head, /dna_after, and /parity/* with the case's settings as
attributes on /parity.
"""
import os
import subprocess
import sys

import numpy as np

# name, E, H, G, T, B, alpha, dna, token_sparse (keep ratio or 0)
CASES = [
    ("e64_t64_b2_a0_dna", 64, 4, 16, 64, 2, 0.0, True, 0.0),
    ("e64_t257_a03_dna_sparse", 64, 4, 16, 257, 1, 0.3, True, 0.5),
    ("e64_t1024_b2_a03_sparse", 64, 4, 16, 1024, 2, 0.3, False, 0.5),
    ("e64_t1024_a0_dna_sparse", 64, 4, 16, 1024, 1, 0.0, True, 0.5),
    ("e64_t1024_a1_dna_sparse", 64, 8, 32, 1024, 1, 1.0, True, 0.5),
    ("e32_t4096_a1", 32, 4, 8, 4096, 1, 1.0, False, 0.0),
    ("e32_t4096_a03_dna", 32, 4, 8, 4096, 1, 0.3, True, 0.0),
    ("tinytoy_t257_a03_dna", 512, 32, 64, 257, 1, 0.3, True, 0.0),
]
SAMPLED_ROWS = 96  # candidate sets recorded per case (evenly spread over the active rows)
# Upstream state_dict entries -> proteus checkpoint datasets (docs/hdf5_schema.md).
STATE_NAMES = {"state/qkv.weight": "weights/qkv_weight", "state/qkv.bias": "weights/qkv_bias",
               "state/proj.weight": "weights/out_weight", "state/proj.bias": "weights/out_bias",
               "state/head_router.linear.weight": "weights/router_weight",
               "state/routing_prototypes": "dna/prototypes", "state/routing_usage_ema": "dna/usage",
               "state/routing_confidence": "dna/confidence"}


def record(upstream_src, out_dir):
    import torch

    sys.path.insert(0, upstream_src)
    import proteus_attention.models.aspa as aspa

    commit = "unknown"
    try:
        commit = subprocess.run(["git", "-C", upstream_src, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or commit
    except OSError:
        pass
    commit = os.environ.get("UPSTREAM_COMMIT", commit)
    # The CPU path of upstream computes in plain FP32; on a GPU its Triton dense kernel multiplies
    # in TF32 (errors near 1e-3), which no FP32 implementation can match to 1e-4.
    device = os.environ.get("PARITY_DEVICE", "cpu")
    os.makedirs(out_dir, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    for name, E, H, G, T, B, alpha, dna, keep in CASES:
        torch.manual_seed(1234)
        cfg = aspa.ModelConfig(
            d_model=E, n_head=H, attn_h_total=H, attn_gates=G, bias=True, p_dropout=0.0,
            attn_h_active_max=min(16, H), attn_h_active_min=min(2, H),
            attn_proto_enable=dna, attn_token_sparse=keep > 0, attn_token_keep_ratio=keep if keep > 0 else 1.0,
            attn_token_keep_guard=4, attn_small_seq_dense=0, attn_force_dense_threshold=None,
            attn_track_latency=False, attn_router_top_p=0.9)
        m = aspa.AdaptiveSparseAttention(cfg).eval()
        with torch.no_grad():  # weights on the float16 grid: stored exactly in half the bytes
            for p in m.parameters():
                p.copy_(p.half().float())
        m = m.to(device)
        m.set_shortlist_alpha(alpha)
        captured = {}
        route = m._route_tokens

        def capture_route(x, route=route):
            p = route(x)
            captured["gate_probs"] = p.detach().clone()
            return p

        m._route_tokens = capture_route
        pack = aspa._pack_active_rows

        def capture_pack(mask, pack=pack):
            packed = pack(mask)
            captured["packed"] = packed
            return packed

        aspa._pack_active_rows = capture_pack
        build = aspa.build_packed_shortlist_candidates

        def capture_build(*args, build=build, **kwargs):
            cand, lengths = build(*args, **kwargs)
            captured["candidates"] = (cand.detach().clone(), lengths.detach().clone())
            return cand, lengths

        aspa.build_packed_shortlist_candidates = capture_build
        gen = torch.Generator(device="cpu").manual_seed(99)
        with torch.no_grad():
            for _ in range(2):  # warm-up: the DNA learns from other inputs first
                m(torch.randn(B, T, E, generator=gen).to(device))
            state = {k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()}
            captured.clear()
            m._cached_active_mask = None
            m._cached_packing = None
            x = torch.randn(B, T, E, generator=gen).half().float().to(device)
            y = m(x)
        aspa._pack_active_rows = pack
        aspa.build_packed_shortlist_candidates = build

        rec = {"x": x.cpu().numpy(), "y": y.cpu().numpy()}
        for k, v in state.items():
            rec["state/" + k] = v
        rec["gate_to_head"] = m.gate_to_head.cpu().numpy().astype(np.int32)
        gp = captured["gate_probs"]
        rec["gate_probs"] = gp.cpu().numpy()
        rec["importance"] = m._last_token_importance.cpu().numpy()
        if dna:
            rec["salience"] = m._last_token_similarity.cpu().numpy()
            rec["beta"] = m._last_token_blend.cpu().numpy()
            rec["dna_after/prototypes"] = m.routing_prototypes.cpu().numpy()
            rec["dna_after/usage"] = m.routing_usage_ema.cpu().numpy()
            rec["dna_after/confidence"] = m.routing_confidence.cpu().numpy()
        token_mask = m._last_token_mask
        if token_mask is None:
            token_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        rec["token_mask"] = token_mask.cpu().numpy().astype(np.uint8)
        stats = m.last_head_stats
        k = int(stats["top_k"])
        head_probs = gp @ m.gate_to_head_onehot.to(gp.dtype)
        top = torch.topk(head_probs, k, dim=-1).indices
        head_mask = torch.zeros(B, T, H, dtype=torch.bool, device=device)
        head_mask.scatter_(2, top, True)
        head_mask &= token_mask.unsqueeze(-1)
        rec["head_mask"] = head_mask.cpu().numpy().astype(np.uint8)
        meta = {"upstream_commit": commit, "alpha": float(m._current_alpha), "top_k": k,
                "nucleus_k": int(stats["nucleus_k"]), "mode": str(stats["mode"]), "embed_dim": E,
                "num_heads": H, "num_gates": G, "tokens": T, "batch": B, "dna": int(dna),
                "token_keep_ratio": float(keep), "device": device,
                "torch": torch.__version__}
        if "candidates" in captured:
            rt = m._linear_runtime
            for key in ("effective_L", "local_cap", "anchor_cap", "proto_cap", "window", "anchor_stride"):
                meta["shortlist_" + key] = int(rt[key])
            head_idx, token_idx, row_offsets, _ = captured["packed"]
            active_bh = head_mask.permute(0, 2, 1).reshape(B * H, T).any(dim=1).nonzero().squeeze(1)
            row_bh = active_bh[head_idx]
            cand, lengths = captured["candidates"]
            n = token_idx.numel()
            pick = torch.unique(torch.linspace(0, n - 1, min(SAMPLED_ROWS, n)).round().long())
            rec["candidates/bh"] = row_bh[pick].cpu().numpy().astype(np.int64)
            rec["candidates/row"] = token_idx[pick].cpu().numpy().astype(np.int64)
            rec["candidates/length"] = lengths[pick].cpu().numpy().astype(np.int64)
            rec["candidates/index"] = cand[pick].cpu().numpy().astype(np.int64)
        rec["meta"] = np.array(repr(meta))
        np.savez_compressed(os.path.join(out_dir, name + ".npz"), **rec)
        print(f"{name}: mode {meta['mode']} K {k} alpha {meta['alpha']:.2f}"
              f" kept {int(rec['token_mask'].sum())}/{B * T}"
              f" L {meta.get('shortlist_effective_L', '-')}", flush=True)


def pack(npz_dir, h5_dir):
    import ast

    import h5py

    os.makedirs(h5_dir, exist_ok=True)
    for file in sorted(os.listdir(npz_dir)):
        if not file.endswith(".npz"):
            continue
        rec = np.load(os.path.join(npz_dir, file))
        meta = ast.literal_eval(str(rec["meta"]))
        out = os.path.join(h5_dir, file[:-4] + ".h5")
        with h5py.File(out + ".tmp", "w") as f:
            f.attrs["format_version"] = np.int64(1)
            E, G = meta["embed_dim"], meta["num_gates"]
            for key, path in STATE_NAMES.items():
                if key in rec:  # weights are float16 values (record() rounds them): stored exactly
                    half = key.startswith("state/qkv") or key.startswith("state/proj") or "router" in key
                    data = rec[key].astype(np.float16 if half else np.float32)
                    assert not half or np.array_equal(data.astype(np.float32), rec[key])
                    f.create_dataset(path, data=data, compression="gzip", shuffle=True)
            if "state/routing_prototypes" not in rec:  # DNA off: zeros keep the schema complete
                f["dna/prototypes"] = np.zeros((G, E), np.float32)
                f["dna/usage"] = np.zeros(G, np.float32)
                f["dna/confidence"] = np.zeros(G, np.float32)
            f["gate_to_head"] = rec["gate_to_head"].astype(np.int32)
            p = f.create_group("parity")
            for key, value in meta.items():
                p.attrs[key] = value
            for key in rec.files:
                if key.startswith("state/") or key in ("meta", "gate_to_head"):
                    continue
                data = rec[key]
                if data.dtype == np.float64:
                    data = data.astype(np.float32)
                if key == "x":  # float16 values (record() rounds them)
                    assert np.array_equal(data.astype(np.float16).astype(np.float32), data)
                    data = data.astype(np.float16)
                target = key if key.startswith("dna_after/") else "parity/" + key
                f.create_dataset(target, data=data, compression="gzip", shuffle=True)
        os.replace(out + ".tmp", out)
        print(out, os.path.getsize(out) // 1024, "KiB")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "pack":
        pack(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
