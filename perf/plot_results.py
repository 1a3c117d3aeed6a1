#!/usr/bin/env python3
"""plot_results.py CSV... --out FILE.png: latency and peak memory against T, one line per
(file, alpha) of bench_module CSV files, and one line per file of bench_pipeline.py CSV files
(pipeline time and peak device memory per rank)."""
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
        name = os.path.basename(path).replace(".csv", "")
        for row in csv.DictReader(f):
            if "total_s" in row:  # bench_pipeline.py
                series[(name, "pipeline")].append(
                    (int(row["tokens"]), 1e3 * float(row["total_s"]), float(row["peak_device_mb"])))
            else:
                series[(name, f"alpha {float(row['alpha']):g}")].append(
                    (int(row["tokens"]), float(row["median_ms"]), float(row["peak_mb"])))
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
for (name, kind), rows in sorted(series.items()):
    rows.sort()
    t = [r[0] for r in rows]
    style = "s--" if kind == "pipeline" else "o-"
    a1.loglog(t, [r[1] for r in rows], style, label=f"{name}, {kind}")
    a2.loglog(t, [r[2] for r in rows], style, label=f"{name}, {kind}")
a1.set_xlabel("tokens T")
a1.set_ylabel("latency (ms): module forward (median) or pipeline total")
a1.grid(True, which="both", alpha=0.3)
a2.set_xlabel("tokens T")
a2.set_ylabel("peak device memory of Kokkos allocations (MB)")
a2.grid(True, which="both", alpha=0.3)
a1.legend(fontsize=7)
fig.suptitle("proteus: the module and the chunked pipeline")
fig.savefig(args.out, dpi=110, bbox_inches="tight")
print(args.out)
