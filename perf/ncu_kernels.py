#!/usr/bin/env python3
"""Sums the GPU time of the kernels in an Nsight Compute CSV (ncu --csv --kernel-name-base demangled
--metrics gpu__time_duration.sum ...) by kernel, shortest readable name first: the proteus function
that launched a Kokkos kernel, else the library kernel's name. Prints a table, largest first.

  python3 perf/ncu_kernels.py ncu.csv [--per N --unit chunk]
"""
import argparse
import collections
import csv
import re
import sys


def short_name(name):
    """'proteus::f(...)::{lambda...}' and Kokkos wrappers -> 'proteus::f'; 'cutlass::Kernel<...>' -> 'cutlass::Kernel'."""
    name = re.sub(r"^void ", "", name)
    kind = next((k for k in ("ParallelScan", "ParallelReduce", "ParallelFor") if k in name), "")
    name = re.sub(r"\(anonymous namespace\)::|<unnamed>::", "", name)
    # A Kokkos kernel: the function whose lambda (or functor) it runs, inside the policy's brackets.
    inner = re.search(r"Parallel(?:For|Reduce|Scan)<(?:Kokkos::CombinedFunctorReducer<)?(?:void )?"
                      r"(?:proteus::)?(?:detail::)?(?:for_each_\w+<)?(?:void )?(?:proteus::)?([\w:~]+)", name)
    if kind and inner:
        return f"{inner.group(1).rstrip(':')} [{kind}]"
    return re.match(r"[^<(]+", name).group(0).strip() or name[:60]


def read_rows(path):
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own messages start otherwise
    for row in csv.DictReader(lines):
        if row.get("Metric Name") == "gpu__time_duration.sum":
            value = float(row["Metric Value"].replace(",", ""))
            scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}[row["Metric Unit"]]
            yield row["Kernel Name"], value * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--per", type=float, default=1.0, help="divide the totals by this (e.g. the chunk count)")
    ap.add_argument("--unit", default="run", help="what --per counts, for the header")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    total = collections.Counter()
    calls = collections.Counter()
    for name, us in read_rows(a.csv):
        key = short_name(name)
        total[key] += us
        calls[key] += 1
    if not total:
        sys.exit(f"{a.csv}: no gpu__time_duration.sum rows")
    grand = sum(total.values())
    print(f"{sum(calls.values())} kernels, {grand / 1e3:.3f} ms of GPU time; per {a.unit} (/{a.per:g}): "
          f"{grand / a.per / 1e3:.3f} ms, {sum(calls.values()) / a.per:.1f} kernels")
    print(f"{'us per ' + a.unit:>14} {'share':>6} {'calls':>7}  kernel")
    for key, us in total.most_common(a.top):
        print(f"{us / a.per:14.1f} {us / grand:6.1%} {calls[key] / a.per:7.1f}  {key}")


if __name__ == "__main__":
    main()
