#!/usr/bin/env python3
"""The PyTorch extension's cost: proteus_kokkos forward and forward + backward through Python and
autograd, next to PyTorch's causal SDPA (BF16 and FP32) forward + backward on the same shapes, in one
process. Compare with `bench_module --backward` (the same training step from C++) run in the same
device call: the difference is the Python / autograd overhead.
    PYTHONPATH=<build>/python python3 perf/bench_python.py --tokens 4096 32768 131072 --csv py.csv
Shape, config, weights and input as bench_module's tinytoy runs: E 512, 32 heads of 16, 64 gates, alpha 1
(fixed), token sparsity on, DNA frozen, batch 1, seed 1, x = bench_module's counter-based normals
(perf/counter_random.py), dy = 1e-3: the kernels do the same work in both, and each T's first line
prints the kept fraction and mean candidates to compare with bench_module's columns."""
import argparse
import csv

import torch
import torch.nn.functional as F

import proteus_kokkos as pk
from counter_random import standard_normal
from timing import median_ms, synchronize as sync

ap = argparse.ArgumentParser()
ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768, 131072])
ap.add_argument("--embed", type=int, default=512)
ap.add_argument("--heads", type=int, default=32)
ap.add_argument("--gates", type=int, default=64)
ap.add_argument("--repeat", type=int, default=5)
ap.add_argument("--sdpa-fp32-max", type=int, default=131072)
ap.add_argument("--side-stream", action="store_true", help="run on a torch.cuda.Stream() instead of the default")
ap.add_argument("--cases", nargs="+",
                choices=["forward", "training-forward", "step", "step-one-thread", "core-step", "cpp-loop", "sdpa"],
                default=["forward", "training-forward", "step", "sdpa"],
                help="what to time (default: all but step-one-thread, the autograd step with the backward on the "
                     "calling thread; core-step, the step through the compiled module without autograd, as "
                     "C++ calls it; and cpp-loop, bench_module's loop of steps run by the extension in this "
                     "process, with and without the NaN check that the Python forward adds)")
ap.add_argument("--torch-profile", metavar="FILE", help="also write torch.profiler's table of one step per T")
ap.add_argument("--torch-trace", metavar="PREFIX",
                help="also write torch.profiler's Chrome traces of five steps through autograd and through the "
                     "compiled module per T, as PREFIX_T_step.json and PREFIX_T_core-step.json")
ap.add_argument("--csv")
args = ap.parse_args()
cuda = pk.device() == "cuda"
device = torch.device("cuda") if cuda else torch.device("cpu")
torch.backends.cuda.matmul.allow_tf32 = False


def peak_mb(step):
    if not cuda:
        return float("nan")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


rows = []
if args.side_stream:
    side = torch.cuda.Stream()
    torch.cuda.set_stream(side)
print(f"# torch {torch.__version__}, proteus_kokkos on {pk.device()}"
      f"{', ' + torch.cuda.get_device_name() if cuda else ''}{', side stream' if args.side_stream else ''}; E {args.embed}, {args.heads} heads, {args.gates} gates")
print(f"{'T':>9} {'what':>30} {'median_ms':>10} {'peak_MB':>9}")
for T in args.tokens:
    m = pk.CausalGeneticMultiheadAttention(args.embed, args.heads, batch_first=True, seed=1, mode="fixed", alpha=1.0,
                                           num_gates=args.gates, dna_update=False, token_sparse=True).train()
    x = standard_normal(5, 9, T * args.embed, device=device).view(1, T, args.embed).requires_grad_()
    dy = torch.full_like(x, 1e-3)
    with torch.no_grad():
        st = m(x, x, x, need_weights=True)[1]
    print(f"# T {T}: kept {st['tokens_kept'] / T:.3f}, mean candidates {st['mean_candidates']:.1f}")

    def forward():
        with torch.no_grad():
            m(x, x, x, need_weights=False)

    def training_forward():
        y, _ = m(x, x, x, need_weights=False)
        del y  # the graph (and the training state) is freed unused

    leaves = [x] + list(m.parameters())

    def training_step():
        for t in leaves:  # what zero_grad(set_to_none=True) does, without nn.Module's traversal
            t.grad = None
        y, _ = m(x, x, x, need_weights=False)
        y.backward(dy)

    core, x_rows = m._core, x.detach().view(T, args.embed)
    positions = torch.arange(T, device=device, dtype=torch.int64)
    weights = m.attention.tensors()
    grads = {k: torch.empty_like(weights[k]) for k in
             ("qkv_weight", "qkv_bias", "out_weight", "out_bias", "router_weight")}
    y_rows, dx_rows, dy_rows = torch.empty_like(x_rows), torch.empty_like(x_rows), dy.view(T, args.embed)
    stream = pk._runtime.stream_handle(x_rows)
    state = pk._core.TrainingState()  # reused by every step, as bench_module and the module reuse theirs

    def core_step():
        core.bind(weights)
        core.forward_training(stream, x_rows, 1, positions, y_rows, state, False, True)
        core.backward(stream, state, dy_rows, dx_rows, grads)

    def step_one_thread():  # PyTorch >= 2.0 (CPU backwards always run on the calling thread)
        with torch.autograd.set_multithreading_enabled(False):
            training_step()

    cases = [(name, step) for key, name, step in (("forward", "proteus forward", forward),
                                                  ("training-forward", "proteus training forward", training_forward),
                                                  ("step", "proteus forward+backward", training_step),
                                                  ("step-one-thread", "f+b, one thread", step_one_thread),
                                                  ("core-step", "compiled module f+b", core_step))
             if key in args.cases
             and (key != "step-one-thread" or hasattr(torch.autograd, "set_multithreading_enabled"))]
    if cuda and "sdpa" in args.cases:
        for dtype in (torch.bfloat16, torch.float32):
            if dtype == torch.float32 and T > args.sdpa_fp32_max:
                continue
            q, k, v = (torch.randn(1, args.heads, T, args.embed // args.heads, device=device, dtype=dtype,
                                   requires_grad=True) for _ in range(3))

            def sdpa_step(q=q, k=k, v=v):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                out.backward(torch.ones_like(out))
                q.grad = k.grad = v.grad = None

            def sdpa_forward(q=q, k=k, v=v):
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)

            # A dense layer as the module is one: Q/K/V projection, causal SDPA, output projection.
            xd = torch.randn(1, T, args.embed, device=device, dtype=dtype)
            w_qkv, w_out = (torch.randn(n * args.embed, args.embed, device=device, dtype=dtype) * args.embed ** -0.5
                            for n in (3, 1))

            def dense_forward(xd=xd, w_qkv=w_qkv, w_out=w_out):
                with torch.no_grad():
                    heads = F.linear(xd, w_qkv).view(1, T, 3, args.heads, -1).permute(2, 0, 3, 1, 4)
                    out = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
                    F.linear(out.transpose(1, 2).reshape(1, T, args.embed), w_out)

            name = str(dtype)[6:]
            cases += [(f"sdpa {name} forward", sdpa_forward), (f"dense layer {name} forward", dense_forward),
                      (f"sdpa {name} forward+backward", sdpa_step)]
    for name, step in cases:
        ms = median_ms(step, args.repeat)
        mb = peak_mb(step)
        print(f"{T:>9} {name:>30} {ms:>10.3f} {mb:>9.1f}", flush=True)
        rows.append({"tokens": T, "what": name, "median_ms": ms, "peak_mb": mb})
    if "cpp-loop" in args.cases:
        for check in (False, True):
            times = sorted(core.time_training_steps(stream, x_rows, 1, positions, y_rows, dy_rows, dx_rows, grads,
                                                    args.repeat + 1, False, check)[1:])  # the first: warm-up
            name = f"C++ loop in-process{', NaN check' if check else ''}"
            print(f"{T:>9} {name:>30} {times[len(times) // 2]:>10.3f} {'':>9}", flush=True)
            rows.append({"tokens": T, "what": name, "median_ms": times[len(times) // 2], "peak_mb": float("nan")})
    if args.torch_trace:
        from torch.profiler import ProfilerActivity, profile
        for what, step in (("step", training_step), ("core-step", core_step)):
            for _ in range(3):
                step()
            sync()
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                for _ in range(5):
                    step()
                    sync()
            prof.export_chrome_trace(f"{args.torch_trace}_{T}_{what}.json")
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile
        for what, step in (("through autograd", training_step), ("through the compiled module", core_step)):
            step()
            sync()
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                step()
                sync()
            with open(args.torch_profile, "a") as f:
                f.write(f"# T {T}: one proteus forward+backward {what}\n")
                f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30,
                                                  max_name_column_width=60))
    del m, x, dy
    if cuda:
        torch.cuda.empty_cache()
if args.csv:
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["tokens", "what", "median_ms", "peak_mb"])
        w.writeheader()
        w.writerows(rows)
