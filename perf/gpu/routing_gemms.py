#!/usr/bin/env python3
"""The routing's two FP32 GEMMs (router logits x W_r^T and DNA dots x P^T, each [N x E] by [G x E]^T)
against one GEMM over the two weights stacked ([2G x E]), timed with PyTorch's cuBLAS in FP32 (no
TF32), at the shapes of a forward: does merging them pay? Also the same GEMMs in TF32 and BF16 for
scale. Medians of --repeat runs by CUDA events, after a warm-up.
    python3 perf/gpu/routing_gemms.py --tokens 1048576 --embed 512 --gates 64"""
import argparse

import torch

from peaks import median_ms  # this script's directory is on sys.path when it runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072, 1048576])
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--gates", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=21)
    a = ap.parse_args()
    g, e = a.gates, a.embed
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, E {e}, G {g}; ms (TFLOP/s)")
    print(f"{'N':>9} {'precision':>9} {'two [N x G]':>16} {'one [N x 2G]':>16} {'ratio':>6}")
    for n in a.tokens:
        x = torch.randn(n, e, device="cuda")
        for precision in ("fp32", "tf32", "bf16"):
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            xs = x.to(dtype)
            wr, wp = (torch.randn(g, e, device="cuda", dtype=dtype) for _ in range(2))
            stacked = torch.cat([wr, wp]).contiguous()
            out_r, out_p = (torch.empty(n, g, device="cuda", dtype=dtype) for _ in range(2))
            out = torch.empty(n, 2 * g, device="cuda", dtype=dtype)

            def two():
                torch.matmul(xs, wr.t(), out=out_r)
                torch.matmul(xs, wp.t(), out=out_p)

            t2 = median_ms(two, a.repeat)
            t1 = median_ms(lambda: torch.matmul(xs, stacked.t(), out=out), a.repeat)
            flop = 2.0 * n * e * 2 * g
            print(f"{n:>9} {precision:>9} {t2:8.3f} ({flop / t2 / 1e9:5.1f}) {t1:8.3f} ({flop / t1 / 1e9:5.1f}) "
                  f"{t1 / t2:6.2f}")


if __name__ == "__main__":
    main()
