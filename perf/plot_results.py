#!/usr/bin/env python3
"""plot_results.py CSV... --out FILE.png: latency and peak memory against T, one line per
(device, alpha), from bench_module CSV files."""
import argparse
import csv
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("csv", nargs="+")
ap.add_argument("--out", required=True)
args = ap.parse_args()
series = defaultdict(list)
for path in args.csv:
    with open(path) as f:
        for row in csv.DictReader(f):
            series[(os.path.basename(path).replace(".csv", ""), float(row["alpha"]))].append(
                (int(row["tokens"]), float(row["median_ms"]), float(row["peak_mb"])))
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
for (device, alpha), rows in sorted(series.items()):
    rows.sort()
    t = [r[0] for r in rows]
    a1.loglog(t, [r[1] for r in rows], "o-", label=f"{device}, alpha {alpha:g}")
    a2.loglog(t, [r[2] for r in rows], "o-", label=f"{device}, alpha {alpha:g}")
a1.set_xlabel("tokens T")
a1.set_ylabel("forward latency (ms, median)")
a1.grid(True, which="both", alpha=0.3)
a2.set_xlabel("tokens T")
a2.set_ylabel("peak memory of Kokkos allocations (MB)")
a2.grid(True, which="both", alpha=0.3)
a1.legend(fontsize=7)
fig.suptitle("proteus CausalGeneticMultiheadAttention")
fig.savefig(args.out, dpi=110, bbox_inches="tight")
print(args.out)
