#!/usr/bin/env python3
"""A roofline of the kernels in an Nsight Compute CSV against peaks measured in the same call.

Reads `ncu --csv --print-units base --kernel-name-base demangled --metrics METRICS` (METRICS: the
list in ROOFLINE_METRICS) and perf/gpu/peaks.py's JSON; groups launches by kernel (the proteus
function that launched a Kokkos kernel, else the library kernel's name: ncu_kernels.short_name) and
gives each group its time, FP32 work (2 x FFMA + FADD + FMUL instructions per thread), DRAM bytes
(read + write), achieved FLOP/s and bytes/s, arithmetic intensity, and what bounds it: "memory"
or "compute" from which roof lies lower at its intensity, with the fraction of that roof achieved,
or "latency" below LATENCY_BOUND of its roof (neither roof: too little parallel work, a serial
chain, atomics or launch overhead).
Tensor-core work (TF32/BF16) is not counted: profile FP32 runs.

  python3 perf/roofline.py ncu.csv --peaks peaks.json [--calls N] [--exclude REGEX ...]
                           [--markdown table.md] [--png roofline.png]
--exclude leaves out kernel groups whose name matches (a benchmark's own set-up, e.g. its input fill).
"""
import argparse
import collections
import csv
import gzip
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ncu_kernels import short_name  # noqa: E402

ROOFLINE_METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "sm__sass_thread_inst_executed_op_ffma_pred_on.sum",
    "sm__sass_thread_inst_executed_op_fadd_pred_on.sum",
    "sm__sass_thread_inst_executed_op_fmul_pred_on.sum",
]
LATENCY_BOUND = 0.05
# Base units (--print-units base) and the scaled ones ncu prints otherwise.
UNIT_SCALE = {"": 1.0, "inst": 1.0, "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9,
              "nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
              "second": 1.0, "s": 1.0}


def label(name):
    """A group's name for the table and the plot: cuBLAS' long kernel names by type, layout, tile and unit."""
    m = re.match(r"sm\d+_xmma_gemm_([a-z]+\d+)\w*?_([nt][nt])_n_tilesize(\d+x\d+x\d+)", name)
    if not m:
        return name
    unit = next((u for u in ("ffma", "hmma", "gmma") if f"_{u}_" in name), "")
    return f"cuBLAS gemm {m.group(1)} {m.group(2)} {m.group(3)} {unit}".rstrip()


def read_launches(lines):
    """{launch id: (kernel name, {metric: value in base units (s, bytes, instructions)})}."""
    launches = {}
    rows = [line for line in lines if line.startswith('"')]  # ncu's own messages start otherwise
    for row in csv.DictReader(rows):
        metric = row.get("Metric Name")
        if metric not in ROOFLINE_METRICS:
            continue
        unit = row["Metric Unit"]
        if unit not in UNIT_SCALE:
            raise ValueError(f"metric {metric}: unknown unit '{unit}'")
        value = float(row["Metric Value"].replace(",", "")) * UNIT_SCALE[unit]
        name, metrics = launches.setdefault(row["ID"], (row["Kernel Name"], {}))
        metrics[metric] = value
    return launches


def summarise(launches, peaks, calls=1.0, exclude=()):
    """One dict per kernel group, longest first, with per-call time (s), flop, bytes and the roofline;
    groups whose name matches a regular expression of `exclude` are left out."""
    groups = collections.defaultdict(lambda: collections.Counter())
    for name, m in launches.values():
        short = short_name(name)
        if any(re.search(pattern, short) for pattern in exclude):
            continue
        missing = [k for k in ROOFLINE_METRICS if k not in m]
        if missing:
            raise ValueError(f"kernel {name[:60]}: no {', '.join(missing)}")
        g = groups[label(short)]
        g["launches"] += 1
        g["seconds"] += m["gpu__time_duration.sum"]
        g["bytes"] += m["dram__bytes_read.sum"] + m["dram__bytes_write.sum"]
        g["flop"] += (2 * m["sm__sass_thread_inst_executed_op_ffma_pred_on.sum"]
                      + m["sm__sass_thread_inst_executed_op_fadd_pred_on.sum"]
                      + m["sm__sass_thread_inst_executed_op_fmul_pred_on.sum"])
    peak_flops = peaks["fp32_tflops"] * 1e12
    peak_bw = peaks["hbm_tbs"] * 1e12
    table = []
    for name, g in groups.items():
        flops = g["flop"] / g["seconds"] if g["seconds"] > 0 else 0.0
        bandwidth = g["bytes"] / g["seconds"] if g["seconds"] > 0 else 0.0
        intensity = g["flop"] / g["bytes"] if g["bytes"] > 0 else float("inf")
        memory_roof = intensity * peak_bw
        bound = "memory" if memory_roof < peak_flops else "compute"
        of_roof = flops / peak_flops if bound == "compute" else bandwidth / peak_bw
        table.append({
            "kernel": name, "launches": g["launches"] / calls, "seconds": g["seconds"] / calls,
            "flop": g["flop"] / calls, "bytes": g["bytes"] / calls, "flops": flops, "bandwidth": bandwidth,
            "intensity": intensity, "bound": bound if of_roof >= LATENCY_BOUND else "latency", "of_roof": of_roof,
        })
    table.sort(key=lambda r: -r["seconds"])
    return table


def markdown(table, peaks, top):
    total = sum(r["seconds"] for r in table)
    lines = [f"Peaks (measured): FP32 GEMM {peaks['fp32_tflops']:.1f} TFLOP/s, TF32 {peaks['tf32_tflops']:.1f}, "
             f"BF16 {peaks['bf16_tflops']:.1f}; HBM copy {peaks['hbm_tbs']:.2f} TB/s "
             f"(ridge {peaks['fp32_tflops'] / peaks['hbm_tbs']:.1f} FLOP/byte in FP32).", "",
             "| kernel | launches | ms | share | GFLOP | GB | TFLOP/s | TB/s | FLOP/byte | bound | of roof |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in table[:top]:
        lines.append(f"| {r['kernel']} | {r['launches']:g} | {r['seconds'] * 1e3:.3f} | {r['seconds'] / total:.1%} | "
                     f"{r['flop'] / 1e9:.2f} | {r['bytes'] / 1e9:.3f} | {r['flops'] / 1e12:.2f} | "
                     f"{r['bandwidth'] / 1e12:.2f} | {r['intensity']:.1f} | {r['bound']} | {r['of_roof']:.0%} |")
    rest = table[top:]
    if rest:
        lines.append(f"| {len(rest)} others | {sum(r['launches'] for r in rest):g} | "
                     f"{sum(r['seconds'] for r in rest) * 1e3:.3f} | {sum(r['seconds'] for r in rest) / total:.1%} "
                     "| | | | | | | |")
    lines.append(f"| **all** | {sum(r['launches'] for r in table):g} | {total * 1e3:.3f} | 100% | "
                 f"{sum(r['flop'] for r in table) / 1e9:.2f} | {sum(r['bytes'] for r in table) / 1e9:.3f} | | | | | |")
    return "\n".join(lines) + "\n"


def plot(table, peaks, path, title, labels=8):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    bw = peaks["hbm_tbs"] * 1e12
    x = [1e-2, 1e4]
    for key, label, style in (("bf16_tflops", "BF16 GEMM", ":"), ("tf32_tflops", "TF32 GEMM", "-."),
                              ("fp32_tflops", "FP32 GEMM", "-")):
        peak = peaks[key] * 1e12
        ax.plot([x[0], peak / bw, x[1]], [x[0] * bw, peak, peak], style, color="gray", lw=1)
        ax.text(x[1], peak, f" {label} {peaks[key]:.0f} TFLOP/s", va="center", fontsize=8)
    ax.text(0.02, 0.02 * bw * 1.4, f"HBM {peaks['hbm_tbs']:.2f} TB/s", rotation=0, fontsize=8)
    total = sum(r["seconds"] for r in table)
    points = [r for r in table if r["flop"] > 0 and r["bytes"] > 0]
    ax.scatter([r["intensity"] for r in points], [r["flops"] for r in points],
               s=[max(8.0, 800 * r["seconds"] / total) for r in points],
               c=[{"memory": "tab:blue", "compute": "tab:red"}.get(r["bound"], "tab:gray") for r in points], alpha=0.6)
    for r in points[:labels]:
        ax.annotate(r["kernel"][:40], (r["intensity"], r["flops"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*x)
    ax.set_ylim(1e9, 2 * peaks["bf16_tflops"] * 1e12)
    ax.set_xlabel("arithmetic intensity (FP32 FLOP per DRAM byte)")
    ax.set_ylabel("achieved FP32 FLOP/s")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--peaks", required=True, help="perf/gpu/peaks.py's JSON")
    ap.add_argument("--calls", type=float, default=1.0, help="divide launches, time, work and bytes by this")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--exclude", nargs="*", default=[], help="leave out kernel groups matching these regexes")
    ap.add_argument("--markdown", help="write the table here too")
    ap.add_argument("--png", help="draw the roofline here (matplotlib)")
    ap.add_argument("--title", default="proteus kernels on the measured roofline")
    a = ap.parse_args()
    try:
        with (gzip.open if a.csv.endswith(".gz") else open)(a.csv, "rt", newline="") as f:
            launches = read_launches(f)
        with open(a.peaks) as f:
            peaks = json.load(f)
        if not launches:
            raise ValueError("no rows with the roofline metrics")
        table = summarise(launches, peaks, a.calls, a.exclude)
        if not table:
            raise ValueError("every kernel was excluded")
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"roofline: {a.csv}: {e}")
    text = markdown(table, peaks, a.top)
    print(text, end="")
    if a.markdown:
        Path(a.markdown).write_text(text)
    if a.png:
        plot(table, peaks, a.png, a.title)


if __name__ == "__main__":
    main()
