#!/usr/bin/env python3
"""Summarises an Nsight Compute details CSV (ncu --csv --page details --section ...): for the kernels
launched from the same function, the summed duration, spill requests and instructions, and the
mean of the rate metrics (active threads per warp, issue rate, L1 and DRAM throughput). The
attention's query blocks each launch one kernel, so at 1M tokens there are eight of each.

  python3 perf/ncu_details.py ncu_stalls.csv
"""
import argparse
import collections
import csv
import re

from ncu_kernels import short_name


def kernel_name(name):
    """short_name, or the launching function where ncu prints it as 'ParallelFor<void unnamed>::f<...>'."""
    found = re.search(r"unnamed>::(\w+)", name)
    return found.group(1) if found else short_name(name)


SUMMED = {"Duration": "ms", "Local Memory Spilling Requests": "spill requests", "Executed Instructions": "instructions"}
AVERAGED = {"Avg. Active Threads Per Warp": "active threads/warp", "Issued Warp Per Scheduler": "issued/scheduler",
            "L1/TEX Cache Throughput": "L1 %", "DRAM Throughput": "DRAM %", "Achieved Occupancy": "occupancy %",
            "Theoretical Occupancy": "theoretical occupancy %", "Registers Per Thread": "registers",
            "Compute (SM) Throughput": "SM %"}


def summarise(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if line.startswith('"')))
    kernels = collections.OrderedDict()
    for r in rows:
        k = kernels.setdefault(kernel_name(r["Kernel Name"]), {"ids": set(), "sum": collections.Counter(),
                                                              "avg": collections.defaultdict(list)})
        k["ids"].add(r["ID"])
        name, value = r["Metric Name"], r["Metric Value"].replace(",", "")
        if name in SUMMED:
            k["sum"][name] += float(value) / (1e6 if name == "Duration" else 1.0)
        elif name in AVERAGED:
            k["avg"][name].append(float(value))
    return kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    args = parser.parse_args()
    for name, k in summarise(args.csv).items():
        parts = [f"{len(k['ids'])} launches"]
        parts += [f"{SUMMED[m]} {k['sum'][m]:.4g}" for m in SUMMED if m in k["sum"]]
        parts += [f"{AVERAGED[m]} {sum(v) / len(v):.3g}" for m, v in k["avg"].items()]
        print(f"{name}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
