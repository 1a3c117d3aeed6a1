#!/usr/bin/env python3
"""Record upstream's chunked shortlist pipeline (tools/chunked_shortlist.py) for the parity test.

  record_chunked.py record UPSTREAM_SRC OUT.npz   run upstream's ChunkedShortlistRunner on a CUDA
                                                 GPU (needs torch and Triton) and save everything
  record_chunked.py pack OUT.npz OUT.h5           write the HDF5 file the test reads (needs h5py)

Upstream scores chunks on the GPU only: on a CPU its runner ignores the router and ranks tokens by
their norm (`_select_top_tokens` returns None off CUDA), so this runs on the device machine, with
TF32 off (the scores come from FP32 cuBLAS GEMMs and elementwise kernels).

The run: T = 65,536 tokens of width E = 32 in chunks of 8,192, upstream's chunk model built by its
own `_build_model_config` (linear mode, token keep ratio 0.05, DNA threshold 0.2 / blend 0.5 /
temperature 0.3, bias off), 2 heads (head width 16 for its Triton kernels) and 8 gates, nucleus
top-p 0.9, at most 4,096 candidates per chunk, a buffer of 1,024 tokens, no final pass. Weights
(torch.manual_seed(1234), rounded to float16 values) and the initial DNA are chosen here and are the
same in both runs:
  frozen    the DNA's EMA decay set to 1: every chunk is scored with the same DNA, which is our
            pipeline's rule (chunks scored with the DNA of the run start), so buffers must agree;
  evolving  upstream's decay 0.97: one module instance carries its DNA from chunk to chunk (the
            warm-up call on random data included), so chunk c is scored with the DNA after c + 1
            updates. The DNA before every call is recorded.
Tokens: N(0, 1), 8% of them 0.75 m_k + 0.66 n (a motif m_k of norm sqrt(E), four motifs), rounded
to multiples of 1/4 (exact in float16). Gates 0-3 start with the motifs as prototypes.
"""
import os
import subprocess
import sys

import numpy as np

T, CHUNK, E, H, G = 65536, 8192, 32, 2, 8
BUFFER, BUDGET, TOP_P, KEEP = 1024, 4096, 0.9, 0.05
MOTIFS, MOTIF_SHARE = 4, 0.08


def tokens_and_dna():
    rng = np.random.default_rng(2026)
    motifs = rng.standard_normal((MOTIFS, E))
    motifs *= np.sqrt(E) / np.linalg.norm(motifs, axis=1, keepdims=True)
    noise = rng.standard_normal((T, E))
    which = rng.integers(0, MOTIFS, T)
    planted = rng.random(T) < MOTIF_SHARE
    x = np.where(planted[:, None], 0.75 * motifs[which] + 0.66 * noise, noise)
    x = (np.round(4 * x) / 4).astype(np.float32)
    prototypes = (0.02 * rng.standard_normal((G, E))).astype(np.float32)  # upstream's init scale
    prototypes[:MOTIFS] = motifs / np.sqrt(E)
    confidence = np.where(np.arange(G) < MOTIFS, 0.6, 0.1).astype(np.float32)
    usage = np.zeros(G, np.float32)
    return x, planted, prototypes, usage, confidence


def record(upstream_src, out):
    import torch

    sys.path.insert(0, upstream_src)
    os.environ["PROTEUS_TUNE_DISABLE"] = "1"  # no Triton autotune sweep (minutes per shape)
    import proteus_attention.tools.chunked_shortlist as cs

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    commit = os.environ.get("UPSTREAM_COMMIT") or subprocess.run(
        ["git", "-C", upstream_src, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    x, planted, prototypes, usage, confidence = tokens_and_dna()
    build = cs.AdaptiveSparseAttention
    torch.manual_seed(1234)
    cfg = cs._build_model_config(CHUNK, E, heads=H, sparse_ratio=KEEP, shortlist_alpha=1.0, router_top_p=TOP_P)
    cfg.attn_gates = G
    template = build(cfg)
    state = {}
    with torch.no_grad():
        for k, v in template.state_dict().items():
            state[k] = v.half().float() if v.is_floating_point() else v
    state["routing_prototypes"] = torch.from_numpy(prototypes)
    state["routing_usage_ema"] = torch.from_numpy(usage)
    state["routing_confidence"] = torch.from_numpy(confidence)
    rec = {"x": x, "planted": planted.astype(np.uint8),
           "gate_to_head": template.gate_to_head.numpy().astype(np.int32)}
    for k, v in state.items():
        rec["state/" + k] = v.numpy()

    for run, decay in (("frozen", 1.0), ("evolving", None)):
        log = {"dna": [], "importance": [], "mask": []}

        def make_model(config, log=log, decay=decay):
            config.attn_gates = G  # upstream's runner leaves gates = heads; 8 gates test more
            m = build(config)
            m.load_state_dict(state)
            if decay is not None:
                m.proto_decay = decay

            def before(mod, args):
                log["dna"].append([t.detach().cpu().numpy().copy() for t in (
                    mod.routing_prototypes, mod.routing_usage_ema, mod.routing_confidence)])

            def after(mod, args, output):
                log["importance"].append(mod._last_token_importance.squeeze(0).cpu().numpy())
                log["mask"].append(mod._last_token_mask.squeeze(0).cpu().numpy())

            m.register_forward_pre_hook(before)
            m.register_forward_hook(after)
            return m

        cs.AdaptiveSparseAttention = make_model
        runner = cs.ChunkedShortlistRunner(cs.ChunkedShortlistConfig(
            seq_len=T, d_model=E, chunk_len=CHUNK, buffer_tokens=BUFFER, per_chunk_budget=BUDGET,
            device=torch.device("cuda"), heads=H, nucleus_top_p=TOP_P, chunk_sparse_ratio=KEEP,
            seed=7, run_final_pass=False, shortlist_alpha=1.0, storage="cpu"))
        result = runner.run(sequence=torch.from_numpy(x).unsqueeze(0))
        cs.AdaptiveSparseAttention = build
        assert not result.metrics.used_fallback, "upstream fell back to norm scores (no CUDA?)"
        # Call 0 is the runner's warm-up on random data; calls 1..C are the chunks.
        dna = log["dna"][1:] + [None]
        rec[run + "/buffer_positions"] = result.keep_indices.numpy().astype(np.int64)
        rec[run + "/buffer_scores"] = result.keep_scores.numpy().astype(np.float32)
        rec[run + "/candidate_positions"] = np.concatenate([np.asarray(c.promoted, np.int64) for c in result.chunks])
        rec[run + "/candidate_scores"] = np.concatenate([np.asarray(c.scores, np.float32) for c in result.chunks])
        rec[run + "/candidate_counts"] = np.array([len(c.promoted) for c in result.chunks], np.int64)
        rec[run + "/importance"] = np.concatenate(log["importance"][1:]).astype(np.float32)
        rec[run + "/token_mask"] = np.concatenate(log["mask"][1:]).astype(np.uint8)
        for i, name in enumerate(("prototypes", "usage", "confidence")):
            rec[run + "/dna_before/" + name] = np.stack([d[i] for d in dna[:-1]])
        print(f"{run}: {len(result.chunks)} chunks, candidates {rec[run + '/candidate_counts'].tolist()},"
              f" buffer {result.keep_indices.numel()}, kept {int(rec[run + '/token_mask'].sum())}", flush=True)
    rec["meta"] = np.array(repr({
        "upstream_commit": commit, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
        "tokens": T, "chunk_tokens": CHUNK, "embed_dim": E, "num_heads": H, "num_gates": G,
        "buffer_tokens": BUFFER, "chunk_budget": BUDGET, "top_p": TOP_P, "chunk_keep_ratio": KEEP,
        "dna_threshold": cfg.attn_proto_threshold, "dna_blend": cfg.attn_proto_blend,
        "dna_temperature": cfg.attn_proto_temp, "token_keep_guard": cfg.attn_token_keep_guard,
        "token_keep_min": cfg.attn_token_keep_min}))
    np.savez_compressed(out, **rec)


def pack(npz, out):
    import ast

    import h5py

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_vectors import STATE_NAMES

    rec = np.load(npz)
    meta = ast.literal_eval(str(rec["meta"]))
    gz = {"compression": "gzip", "compression_opts": 9, "shuffle": True}
    with h5py.File(out + ".tmp", "w") as f:
        f.attrs["format_version"] = np.int64(1)
        for key, path in STATE_NAMES.items():
            if key in rec:
                data = rec[key].astype(np.float16 if path.startswith("weights/") else np.float32)
                assert np.array_equal(data.astype(np.float32), rec[key])
                f.create_dataset(path, data=data, **gz)
        f["weights/qkv_bias"] = np.zeros(3 * meta["embed_dim"], np.float32)  # upstream: bias off
        f["weights/out_bias"] = np.zeros(meta["embed_dim"], np.float32)
        f["gate_to_head"] = rec["gate_to_head"]
        c = f.create_group("chunked")
        for key, value in meta.items():
            c.attrs[key] = value
        x16 = rec["x"].astype(np.float16)
        assert np.array_equal(x16.astype(np.float32), rec["x"])
        c.create_dataset("x", data=x16, chunks=(4096, meta["embed_dim"]), **gz)
        c.create_dataset("planted", data=rec["planted"], **gz)
        for key in rec.files:
            if "/" in key and not key.startswith("state/"):
                c.create_dataset(key, data=rec[key], **gz)
    os.replace(out + ".tmp", out)
    print(out, os.path.getsize(out) // 1024, "KiB")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "pack":
        pack(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
