#!/usr/bin/env python3
"""Where the GPU idles inside each timed step of a torch.profiler Chrome trace (bench_python.py
--torch-trace): per step (between two cudaDeviceSynchronize calls, the timing loop's), the time from
the synchronisation to the first kernel (host work before any launch), the kernels, their busy time,
the idle time between the first and the last kernel, and the host waits (stream/event synchronise,
cudaMalloc/cudaFree). With --gaps US, every idle gap longer than US microseconds with the runtime
calls made during it.
    python3 perf/trace_gaps.py trace_32768_step.json [--gaps 20]"""
import argparse
import collections
import json

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--gaps", type=float, help="also list idle gaps longer than this many microseconds")
args = ap.parse_args()
events = [e for e in json.load(open(args.trace))["traceEvents"] if e.get("ph") == "X"]
device = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
runtime = sorted((e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")), key=lambda e: e["ts"])
syncs = [e["ts"] + e["dur"] for e in runtime if e["name"] == "cudaDeviceSynchronize"]
waits = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaMalloc", "cudaFree")

print(f"{'sync->first_us':>14} {'kernels':>8} {'busy_ms':>8} {'idle_us':>8} {'span_ms':>8}  host waits")
for begin, end in zip(syncs, syncs[1:]):
    step = [k for k in device if begin <= k["ts"] < end]
    if not step:
        continue
    busy = sum(k["dur"] for k in step)
    last = step[-1]["ts"] + step[-1]["dur"]
    idle = last - step[0]["ts"] - busy
    count = collections.Counter(e["name"] for e in runtime if begin <= e["ts"] < last and e["name"] in waits)
    print(f"{step[0]['ts'] - begin:14.1f} {len(step):8d} {busy / 1e3:8.3f} {idle:8.1f} {(last - begin) / 1e3:8.3f}  "
          + ", ".join(f"{n} {c}" for n, c in sorted(count.items())))
    if args.gaps is not None:
        for a, b in zip(step, step[1:]):
            gap = b["ts"] - (a["ts"] + a["dur"])
            if gap > args.gaps:
                calls = collections.Counter(e["name"] for e in runtime if a["ts"] + a["dur"] <= e["ts"] <= b["ts"])
                print(f"    +{(a['ts'] + a['dur'] - begin) / 1e3:7.3f} ms idle {gap:6.1f} us before {b['name'][:60]!r}"
                      f" {dict(calls)}")
