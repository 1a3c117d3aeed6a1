"""Upstream's only trainable path, timed: its AdaptiveSparseAttention at the tinytoy shape (built by
its own kernels/tinytoy.py, E 512, 32 heads, 64 gates, token sparsity on) with the Triton and CUDA
shortlist kernels switched off, so that attention runs in its PyTorch fallback, which autograd can
differentiate. Forward + backward of the module on x [1, T, 512] (dy = 1e-3), median of the repeats
after a warm-up; rows predicted to take longer than --budget seconds are skipped. Also reports
whether the Q/K/V weights received a gradient (the fast path gives them none).

    python3 perf/gpu/upstream_training.py --upstream .gpu/upstream/src --tokens 4096 32768 131072
"""
import argparse
import csv
import sys
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="upstream's src/ folder (holds proteus_attention)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768, 131072, 524288])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=60.0, help="skip rows predicted to take longer (s)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--csv")
    args = ap.parse_args()
    sys.path.insert(0, args.upstream)
    from proteus_attention.kernels import sparse_attn, tinytoy

    sparse_attn.TRITON_AVAILABLE = False  # the PyTorch fallback: differentiable, as upstream trains
    sparse_attn.CUDA_BACKEND = None
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows, last = [], None
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# upstream fallback, torch {torch.__version__}, {name}, forward + backward")
    print(f"{'T':>9} {'median_ms':>11} {'peak_MB':>9} {'qkv_grad':>9}")
    for T in args.tokens:
        if last is not None and last[1] * T / last[0] > args.budget:
            print(f"{T:>9} skipped (predicted {last[1] * T / last[0]:.0f} s per step, linear growth)")
            continue
        model, _, _ = tinytoy._instantiate_aspa_model(T, max(args.tokens), d_model=512, quantize=False,
                                                      memory_guard=False, allow_sdpa_fastpath=True, device=device)
        model = model.to(device).train()
        x = torch.randn(1, T, 512, device=device, requires_grad=True)
        dy = torch.full((1, T, 512), 1e-3, device=device)
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for i in range(1 + args.repeat):
            model.zero_grad(set_to_none=True)
            x.grad = None
            sync()
            t0 = time.perf_counter()
            y = model(x)
            y = y[0] if isinstance(y, tuple) else y
            y.backward(dy)
            sync()
            if i > 0:
                times.append(time.perf_counter() - t0)
        median = sorted(times)[len(times) // 2]
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
        grads = [p.grad for n, p in model.named_parameters() if "qkv" in n or "q_proj" in n or "k_proj" in n]
        has_grad = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
        print(f"{T:>9} {median * 1e3:>11.2f} {peak:>9.0f} {str(has_grad):>9}", flush=True)
        rows.append({"tokens": T, "median_ms": median * 1e3, "peak_mb": peak, "qkv_grad": has_grad})
        last = (T, median)
        del model, x, dy, y
        if cuda:
            torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["tokens", "median_ms", "peak_mb", "qkv_grad"])
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
