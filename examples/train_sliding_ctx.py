#!/usr/bin/env python3
"""Upstream's sliding-context curriculum on real text, with proteus attention or dense attention.

A small byte-level GPT (upstream's SimpleGPT: token + learned position embeddings, pre-norm blocks
of attention and a 4x GELU MLP, d 192, 3 layers, 8 heads) is trained on the CPython standard
library sources (examples/corpus.py) in phases of growing context: by default 70% of the steps at
512 tokens (batch 32), 20% at 4096 (batch 12), 10% at 16384 (batch 4), with AdamW (lr 3e-4, weight
decay 0.01) and gradient clipping at 1.0, as upstream's scripts/train_sliding_ctx.py.

    --attention proteus   proteus_kokkos.CausalGeneticMultiheadAttention (alpha ramps with the
                          context: 0 at 512, 1 at 16384; upstream's curriculum knobs)
    --attention dense     torch.nn.MultiheadAttention with the causal mask (the baseline)
    --attention dense-rope  the same with proteus' rotary embedding on q and k (the fair baseline)

Both train in float32. Every --eval-every steps (and at each phase's end) the validation bits per
byte are measured at every phase's context. Progress lines show tokens/s and an ETA. Checkpoints
(a PyTorch file, plus each proteus layer in proteus' HDF5 schema) are written atomically every
--checkpoint-every steps, at the end, when --max-minutes runs out and on SIGTERM/SIGINT; --resume
continues from the last one. With proteus, each layer's DNA is appended every --dna-every steps to
OUT/dna_layerN.h5 (the driver's DNA-dump format: proteus_inspect and tools/plot_dna.py --dump read
it). Under torchrun with more than one process: distributed data parallel (NCCL on GPUs).

    python3 examples/train_sliding_ctx.py --attention proteus --steps 20000 --out runs/proteus

Upstream's knobs (the defaults) drop to 2 of 8 heads per token and drop tokens at alpha 1, which
costs quality on this data; every head and every token kept at alpha 1 ends within 3% of dense-rope
at 4096 and 16384 tokens, and with 256 candidates per row steps at 16384 in 0.42x dense-rope's time
on an H200 (docs/training.md):
    --heads-active 8:8 --proteus linear_head_k=8 --token-sparse 0 --proteus linear_L=256
"""
import argparse
import ast
import contextlib
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402


def parse_phases(text):
    """'512:0.7:32,4096:0.2:12' -> [(context, share, batch), ...]; shares must add up to 1."""
    phases = []
    for item in text.split(","):
        try:
            context, share, batch = item.split(":")
            phases.append((int(context), float(share), int(batch)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--phases: '{item}' is not CONTEXT:SHARE:BATCH")
    if abs(sum(p[1] for p in phases) - 1.0) > 1e-6 or any(p[0] < 2 or p[1] <= 0 or p[2] < 1 for p in phases):
        raise argparse.ArgumentTypeError("--phases: contexts >= 2, batches >= 1, shares > 0 adding up to 1")
    return phases


def arguments(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attention", choices=["proteus", "dense", "dense-rope"], required=True,
                    help="dense-rope: the dense baseline with proteus' rotary embedding on q and k")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--phases", type=parse_phases, default=parse_phases("512:0.70:32,4096:0.20:12,16384:0.10:4"))
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--router-gradient", action="store_true", help="proteus: the opt-in differentiable routing")
    ap.add_argument("--token-sparse", type=int, default=1, help="proteus: token sparsity (upstream: keep 0.85)")
    ap.add_argument("--heads-active", default="2:6", metavar="MIN:MAX",
                    help="proteus: range of active heads per token (upstream's curriculum: 2:6)")
    ap.add_argument("--head-controller", type=float, default=0.0, metavar="DENSITY",
                    help="proteus: the sparse-head controller with this target density (0 = off; upstream's "
                         "example uses 0.28), tolerance 0.03, cooldown 4 steps, heads 2..6")
    ap.add_argument("--proteus", action="append", default=[], metavar="KEY=VALUE",
                    help="proteus: set a field of proteus::Config (repeatable; it overrides the curriculum's "
                         "knobs), e.g. --proteus linear_head_k=8")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-windows", type=int, default=8, help="validation windows per context")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--dna-every", type=int, default=500)
    ap.add_argument("--checkpoint-every", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop (with a checkpoint) after this long")
    ap.add_argument("--corpus-pack", help="an .npz from `examples/corpus.py pack` instead of /usr/lib/python3.11")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    for name in ("steps", "eval_every", "log_every", "dna_every", "checkpoint_every", "eval_windows"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        args.heads_min, args.heads_max = (int(v) for v in args.heads_active.split(":"))
    except ValueError:
        ap.error(f"--heads-active {args.heads_active!r}: expected MIN:MAX, e.g. 2:6")
    if not 1 <= args.heads_min <= args.heads_max:
        ap.error(f"--heads-active {args.heads_active}: needs 1 <= MIN <= MAX (MAX above --heads means every head)")
    args.proteus_config = {}
    for item in args.proteus:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            ap.error(f"--proteus {item!r}: expected KEY=VALUE, e.g. linear_head_k=8")
        try:
            args.proteus_config[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            args.proteus_config[key] = text  # a word, e.g. mode=fixed
    return args


# ---- the model -------------------------------------------------------------------------------------

class DenseAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameters, causal, computed with scaled_dot_product_attention
    (is_causal: a memory-efficient kernel). nn.MultiheadAttention's own forward with a causal mask
    materialises the [B*H, T, T] scores in eval mode (32 GiB at T 16384, batch 4): that is not the
    baseline a user would train. PyTorch before 2.0 (no SDPA) uses the masked softmax instead."""

    def __init__(self, d_model, heads, rope=False):
        super().__init__()
        self.mha = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.heads = heads
        self.rope = rope

    def forward(self, x):
        b, t, e = x.shape
        m = self.mha
        q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(b, t, 3, self.heads, e // self.heads) \
            .permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rotary(q), rotary(k)
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(e // self.heads)
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
            y = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
        return m.out_proj(y.transpose(1, 2).reshape(b, t, e))


def rotary(x, base=10000.0):
    """proteus' RoPE on [B, H, T, D]: pair (2i, 2i+1) of each head turned by t * base^(-2i/D)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    angle = torch.arange(t, dtype=torch.float64, device=x.device)[:, None] * inv[None, :]
    cs, sn = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cs - odd * sn, odd * cs + even * sn), dim=-1).flatten(-2)


class ProteusAttention(nn.Module):
    """proteus_kokkos with upstream's curriculum knobs (scripts/train_sliding_ctx.py)."""

    def __init__(self, d_model, heads, seed, args, contexts):
        super().__init__()
        import proteus_kokkos as pk
        low, high = min(contexts), max(contexts)
        knobs = dict(num_gates=16, heads_active_min=args.heads_min, heads_active_max=args.heads_max,
                     seq_low=low, seq_high=max(high, low + 1), switch_ctx=max(high, low + 1), force_dense_threshold=0.25,
                     token_sparse=bool(args.token_sparse), token_keep_ratio=0.85, token_keep_min=16,
                     token_keep_guard=8, router_gradient=args.router_gradient, head_controller=args.head_controller > 0,
                     head_target_density=args.head_controller or 0.28, head_controller_min=2, head_controller_max=6)
        try:
            self.attn = pk.CausalGeneticMultiheadAttention(d_model, heads, batch_first=True, seed=seed,
                                                           **(knobs | args.proteus_config))
        except (TypeError, ValueError) as e:
            sys.exit(f"train_sliding_ctx.py: error: --proteus: {e}")

    def forward(self, x):
        return self.attn(x, need_weights=False)[0]


class Block(nn.Module):
    def __init__(self, d_model, attention):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = attention
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ByteGPT(nn.Module):
    def __init__(self, args, contexts):
        super().__init__()
        d = args.d_model
        self.token_emb = nn.Embedding(256, d)
        self.pos_emb = nn.Embedding(max(contexts), d)
        make = (lambda i: ProteusAttention(d, args.heads, args.seed * 1000 + i, args, contexts)) \
            if args.attention == "proteus" else (lambda i: DenseAttention(d, args.heads, args.attention == "dense-rope"))
        self.blocks = nn.ModuleList(Block(d, make(i)) for i in range(args.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256, bias=False)

    def forward(self, idx):
        x = self.token_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def proteus_layers(self):
        return [b.attention.attn for b in self.blocks if isinstance(b.attention, ProteusAttention)]


# ---- data, evaluation, checkpoints ----------------------------------------------------------------------

def batch(data, context, size, seed, step, rank, device):
    """Windows of context + 1 bytes at offsets drawn from (seed, step, rank): resumable exactly."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 131 + rank) % 2**63)
    starts = torch.randint(0, data.shape[0] - context - 1, (size,), generator=g)
    rows = torch.stack([data[s:s + context + 1] for s in starts.tolist()]).long()
    return rows[:, :-1].to(device), rows[:, 1:].to(device)


def bits_per_byte(model, data, context, windows, batch_size, device):
    """Mean cross-entropy in bits over `windows` evenly spaced validation windows (DNA frozen)."""
    was_training = model.training
    model.eval()
    starts = np.linspace(0, data.shape[0] - context - 1, windows).astype(np.int64)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, windows, batch_size):
            rows = torch.stack([data[s:s + context + 1] for s in starts[i:i + batch_size]]).long().to(device)
            logits = model(rows[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, 256), rows[:, 1:].reshape(-1), reduction="sum"))
            count += rows[:, 1:].numel()
    model.train(was_training)
    return total / count / math.log(2)


def save_atomically(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def device_memory_mb(device, peak=None):
    """Device memory in use by every allocator (PyTorch's and Kokkos's), from the CUDA driver, or
    None on the CPU; with `peak`, the larger of the two."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return max((total - free) / 2**20, peak or 0.0)


class Progress:
    """ETA: each phase's remaining steps times its measured step time; a phase not reached yet is
    estimated from the last measured phase, scaled by tokens per step."""

    def __init__(self):
        self.seconds = {}  # context -> (seconds, steps)

    def record(self, context, seconds):
        s, n = self.seconds.get(context, (0.0, 0))
        self.seconds[context] = (s + seconds, n + 1)

    def eta(self, step, plan):
        measured = {c: s / n for c, (s, n) in self.seconds.items() if n}
        if not measured:
            return 0.0
        last = list(measured)[-1]
        last_tokens = next(p[0] * p[2] for _, _, p in plan if p[0] == last)
        left = 0.0
        for first, end, (context, _, size) in plan:
            remaining = max(0, end - max(first, step))
            per_step = measured.get(context, measured[last] * context * size / last_tokens)
            left += remaining * per_step
        return left


def phase_plan(steps, phases):
    """[(first_step, end_step, phase)] with the phases' shares of `steps` (the last takes the rest)."""
    plan, first = [], 0
    for i, phase in enumerate(phases):
        end = steps if i == len(phases) - 1 else first + int(round(phase[1] * steps))
        plan.append((first, end, phase))
        first = end
    return plan


# ---- training -------------------------------------------------------------------------------------------

def main(argv=None):
    args = arguments(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if args.attention == "proteus":
        import proteus_kokkos as pk
        use_cuda = pk.device() == "cuda"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl" if use_cuda else "gloo")
    lead = rank == 0
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    try:
        train, validation = corpus.load_pack(args.corpus_pack) if args.corpus_pack else corpus.load()
    except corpus.CorpusError as e:
        sys.exit(f"train_sliding_ctx.py: error: {e}")
    train, validation = torch.from_numpy(train), torch.from_numpy(validation)
    contexts = [p[0] for p in args.phases]
    model = ByteGPT(args, contexts).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    step, tokens, log = 0, 0, []
    if args.resume and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location=device)
        if state["args"]["attention"] != args.attention or state["args"]["d_model"] != args.d_model:
            sys.exit(f"train_sliding_ctx.py: error: {checkpoint}: written by another configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens, log = state["step"], state["tokens"], state["log"]
        if lead:
            print(f"resumed from {checkpoint} at step {step}", flush=True)
    trained = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[local] if use_cuda else None)

    plan = phase_plan(args.steps, args.phases)
    progress = Progress()
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, request_stop)

    def write_checkpoint():
        if not lead:
            return
        save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                         "tokens": tokens, "log": log, "args": vars(args) | {"phases": args.phases}}, checkpoint)
        for i, layer in enumerate(model.proteus_layers()):
            layer.save_hdf5(os.path.join(args.out, f"attention_layer{i}.h5"))

    def evaluate(context_now):
        if not lead:
            return
        record = {"kind": "eval", "step": step, "tokens": tokens, "context": context_now}
        for context, _, size in args.phases:
            record[f"val_bpb_{context}"] = bits_per_byte(model, validation, context, args.eval_windows, size, device)
        log.append(record)
        print("  eval step {}: {}".format(step, ", ".join(f"{k[8:]} {v:.4f}" for k, v in record.items()
                                                          if k.startswith("val_bpb_"))), flush=True)

    started = time.time()
    peak_mb = device_memory_mb(device)
    model.train()
    for first, end, (context, _, size) in plan:
        per_rank = max(1, math.ceil(size / world))
        phase_t0, phase_tokens = time.time(), 0
        while first <= step < end:
            t0 = time.time()
            x, y = batch(train, context, per_rank, args.seed, step, rank, device)
            loss = F.cross_entropy(trained(x).reshape(-1, 256), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            step += 1
            tokens += per_rank * context * world
            phase_tokens += per_rank * context * world
            if use_cuda:
                torch.cuda.synchronize(device)
            progress.record(context, time.time() - t0)
            peak_mb = device_memory_mb(device, peak_mb)
            if lead and (step % args.log_every == 0 or step == end):
                rate = phase_tokens / max(1e-9, time.time() - phase_t0)
                eta = progress.eta(step, plan)
                log.append({"kind": "train", "step": step, "tokens": tokens, "context": context,
                            "loss": loss.item(), "tokens_per_s": rate, "device_mb": peak_mb})
                print(f"step {step}/{args.steps} ctx {context} batch {per_rank * world} loss {loss.item():.4f} "
                      f"({loss.item() / math.log(2):.3f} bits/byte) {rate:,.0f} tokens/s ETA {eta / 60:.1f} min",
                      flush=True)
            if lead and args.attention == "proteus" and step % args.dna_every == 0:
                for i, layer in enumerate(model.proteus_layers()):
                    layer.dump_dna(os.path.join(args.out, f"dna_layer{i}.h5"), tokens)
            if step % args.eval_every == 0 or step == end:
                evaluate(context)
            out_of_time = args.max_minutes > 0 and (time.time() - started) / 60 > args.max_minutes
            if step % args.checkpoint_every == 0 or out_of_time or stop["signal"]:
                write_checkpoint()
            if out_of_time or stop["signal"]:
                why = stop["signal"] or f"--max-minutes {args.max_minutes}"
                if lead:
                    print(f"stopped at step {step} ({why}); resume with --resume", flush=True)
                return finish(args, log, step, tokens, started, peak_mb, lead, stopped=why)
        if lead and step == end:
            log.append({"kind": "phase", "step": step, "context": context, "seconds": time.time() - phase_t0,
                        "tokens_per_s": phase_tokens / max(1e-9, time.time() - phase_t0), "device_mb": peak_mb})
    write_checkpoint()
    return finish(args, log, step, tokens, started, peak_mb, lead)


def finish(args, log, step, tokens, started, peak_mb, lead, stopped=None):
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if not lead:
        return 0
    summary = {"attention": args.attention, "steps": step, "tokens": tokens, "seconds": time.time() - started,
               "device_mb_peak": peak_mb, "stopped": stopped, "log": log}
    with open(os.path.join(args.out, "summary.json.tmp"), "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    os.replace(os.path.join(args.out, "summary.json.tmp"), os.path.join(args.out, "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
