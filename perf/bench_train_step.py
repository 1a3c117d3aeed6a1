#!/usr/bin/env python3
"""Step time of examples/train_sliding_ctx.py's model (ByteGPT: d 192, 3 layers, 8 heads) at each
curriculum phase's context and batch, for several attention configurations in one process: a full
training step (forward, loss, backward, clipping, AdamW), and the attention layers alone (forward +
backward of one layer on the same shape). Each configuration is the script's own command line, so
what is timed is what the curriculum trains.

    PYTHONPATH=<build>/python python3 perf/bench_train_step.py \\
        --config "dense-rope=--attention dense-rope" \\
        --config "k8=--attention proteus --heads-active 8:8 --proteus linear_head_k=8 --token-sparse 0" \\
        --csv steps.csv
"""
import argparse
import csv
import os
import shlex
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import train_sliding_ctx as script  # noqa: E402
from timing import median_ms  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--config", action="append", required=True, metavar="NAME=ARGS",
                help="a name and train_sliding_ctx.py arguments (without --out); repeatable")
ap.add_argument("--phases", default="512:0.70:32,4096:0.20:12,16384:0.10:4",
                help="CONTEXT:SHARE:BATCH list, as the script's --phases (the shares are ignored)")
ap.add_argument("--repeat", type=int, default=10)
ap.add_argument("--csv")
args = ap.parse_args()
cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")


phases = script.parse_phases(args.phases)
contexts = [p[0] for p in phases]
rows = []
print(f"# torch {torch.__version__} on {torch.cuda.get_device_name() if cuda else 'cpu'}; ByteGPT, FP32, "
      f"median of {args.repeat}")
print(f"{'config':>14} {'context':>8} {'batch':>6} {'step_ms':>9} {'attn_fb_ms':>11} {'tokens_per_s':>13} {'peak_MB':>9}")
for spec in args.config:
    name, sep, text = spec.partition("=")
    if not sep:
        sys.exit(f"bench_train_step.py: error: --config {spec!r}: expected NAME=ARGS")
    options = script.arguments(shlex.split(text) + ["--out", os.devnull])
    for context, _, size in phases:
        torch.manual_seed(options.seed)
        model = script.ByteGPT(options, contexts).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        g = torch.Generator().manual_seed(7)
        x = torch.randint(0, 256, (size, context), generator=g).to(device)
        y = torch.randint(0, 256, (size, context), generator=g).to(device)

        def train_step():
            loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip)
            optimizer.step()

        attention = model.blocks[0].attention
        h = torch.randn(size, context, options.d_model, generator=g).to(device).requires_grad_()

        def attention_step():
            h.grad = None
            attention(h).backward(torch.ones_like(h))

        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step_ms = median_ms(train_step, args.repeat, warmup=2)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
        attn_ms = median_ms(attention_step, args.repeat, warmup=2)
        rate = size * context / step_ms * 1e3
        print(f"{name:>14} {context:>8} {size:>6} {step_ms:>9.2f} {attn_ms:>11.2f} {rate:>13,.0f} {peak:>9.0f}",
              flush=True)
        rows.append({"config": name, "context": context, "batch": size, "step_ms": step_ms,
                     "attention_fb_ms": attn_ms, "tokens_per_s": rate, "peak_mb": peak, "args": text})
        del model, optimizer, attention, h
if args.csv:
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
