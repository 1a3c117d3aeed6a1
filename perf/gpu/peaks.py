#!/usr/bin/env python3
"""The GPU's attainable peaks, measured with PyTorch in the same call as the kernels they are
compared with (perf/roofline.py): GEMM throughput in FP32 (no TF32), TF32 and BF16 on square
matrices, and device-memory bandwidth of a large copy (read + write). Medians of --repeat timed
runs after a warm-up, by CUDA events.
    python3 perf/gpu/peaks.py --out peaks.json"""
import argparse
import json
import statistics

import torch


def median_ms(work, repeat):
    for _ in range(3):
        work()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gemm_tflops(n, dtype, tf32, repeat):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    c = torch.empty(n, n, device="cuda", dtype=dtype)
    ms = median_ms(lambda: torch.matmul(a, b, out=c), repeat)
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def copy_tbs(gib, repeat):
    n = int(gib * (1 << 30)) // 4
    src = torch.empty(n, device="cuda", dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), repeat)
    return 2.0 * 4 * n / (ms * 1e-3) / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemm-size", type=int, default=8192)
    ap.add_argument("--copy-gib", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", help="write the peaks here as JSON")
    args = ap.parse_args()
    peaks = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "gemm_size": args.gemm_size,
        "fp32_tflops": gemm_tflops(args.gemm_size, torch.float32, False, args.repeat),
        "tf32_tflops": gemm_tflops(args.gemm_size, torch.float32, True, args.repeat),
        "bf16_tflops": gemm_tflops(args.gemm_size, torch.bfloat16, False, args.repeat),
        "copy_gib": args.copy_gib,
        "hbm_tbs": copy_tbs(args.copy_gib, args.repeat),
    }
    torch.backends.cuda.matmul.allow_tf32 = False
    print(json.dumps(peaks, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(peaks, f, indent=1)


if __name__ == "__main__":
    main()
