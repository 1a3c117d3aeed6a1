#!/usr/bin/env python3
"""Causal scaled_dot_product_attention of PyTorch on the same shapes as bench_module's
tinytoy configuration (32 heads of width 16, batch 1): median latency and peak memory.
Run on the device next to bench_module so that both are measured on one GPU.
    python3 perf/gpu/sdpa.py --tokens 4096 32768 131072 524288 1048576 --csv sdpa.csv
--backward times forward + backward (dq, dk, dv for a gradient of ones), as bench_module
--backward times a training step."""
import argparse
import csv

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768, 131072])
ap.add_argument("--heads", type=int, default=32)
ap.add_argument("--dim", type=int, default=16)
ap.add_argument("--fp32-max", type=int, default=131072, help="largest T run in FP32")
ap.add_argument("--backward", action="store_true", help="time forward + backward")
ap.add_argument("--csv")
args = ap.parse_args()
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
rows = []
print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}, {'forward + backward' if args.backward else 'forward'}")
print(f"{'T':>9} {'dtype':>9} {'median_ms':>11} {'peak_MB':>9}")
for dtype in (torch.bfloat16, torch.float32):
    for T in args.tokens:
        if dtype == torch.float32 and T > args.fp32_max:
            continue
        torch.cuda.empty_cache()
        q, k, v = (torch.randn(1, args.heads, T, args.dim, device="cuda", dtype=dtype,
                               requires_grad=args.backward) for _ in range(3))
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        repeat = 5 if T <= 131072 else 2
        times = []
        for i in range(1 + repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if args.backward:
                out.backward(torch.ones_like(out))
                q.grad = k.grad = v.grad = None
            end.record()
            torch.cuda.synchronize()
            if i > 0:
                times.append(start.elapsed_time(end))
            del out
        times.sort()
        ms = times[len(times) // 2]
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 + 3 * q.numel() * q.element_size() / 2**20
        name = str(dtype).replace("torch.", "")
        print(f"{T:>9} {name:>9} {ms:>11.3f} {peak:>9.1f}", flush=True)
        rows.append({"tokens": T, "dtype": name, "median_ms": ms, "peak_mb": peak})
        del q, k, v
if args.csv:
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["tokens", "dtype", "median_ms", "peak_mb"])
        w.writeheader()
        w.writerows(rows)
