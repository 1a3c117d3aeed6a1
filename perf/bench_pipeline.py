#!/usr/bin/env python3
"""bench_pipeline.py DRIVER DECK --tokens N... [--np R] [--csv FILE] [--set key=value ...]

The chunked long-context pipeline at several sequence lengths: runs `proteus_driver -q DECK
--set sequence.tokens=N` for every N (after one warm-up run at the first N), reads each run's
summary.json, prints a table and writes a CSV (one row per N) for perf/plot_results.py.
Checkpoints are switched off, so that only pipeline time is measured. Needs only the standard
library."""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

FIELDS = ["device", "ranks", "tokens", "chunks_s", "exchange_s", "buffer_pass_s", "total_s", "tokens_per_s",
          "peak_device_mb", "peak_host_mb", "buffer_tokens", "needles", "needles_found"]


def run_once(args, tokens, workdir):
    outdir = os.path.join(workdir, f"run_{tokens}")
    cmd = [args.driver, "-q", args.deck, "--set", f"sequence.tokens={tokens}", "--set", f"output.directory={outdir}",
           "--set", "checkpoint.at_end=false", "--set", "checkpoint.interval_chunks=0"]
    for kv in args.set:
        cmd += ["--set", kv]
    if args.np > 1:
        cmd = args.mpirun.split() + ["-np", str(args.np)] + cmd
    done = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_pipeline: {' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    with open(os.path.join(outdir, "summary.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("driver")
    ap.add_argument("deck")
    ap.add_argument("--tokens", type=int, nargs="+", required=True)
    ap.add_argument("--np", type=int, default=1, help="MPI ranks (mpirun is used when > 1)")
    ap.add_argument("--mpirun", default="mpirun", help="launcher command, e.g. 'mpirun --oversubscribe'")
    ap.add_argument("--device", default="", help="device name for the CSV")
    ap.add_argument("--csv", default="")
    ap.add_argument("--set", action="append", default=[], help="extra deck override key=value")
    args = ap.parse_args()
    args.driver = os.path.abspath(args.driver)
    args.deck = os.path.abspath(args.deck)
    workdir = tempfile.mkdtemp(prefix="proteus_bench_pipeline_")
    rows = []
    try:
        run_once(args, args.tokens[0], workdir)  # warm-up: first-use costs of the device and libraries
        print(f"{'tokens':>11} {'chunks':>8} {'exchange':>9} {'buffer':>8} {'total':>8} {'tokens/s':>10} "
              f"{'device MB':>10} {'needles':>8}")
        for n in args.tokens:
            s = run_once(args, n, workdir)
            sec = s["seconds"]
            row = {"device": args.device, "ranks": s["ranks"], "tokens": s["tokens"], "chunks_s": sec["chunks"],
                   "exchange_s": sec["exchange"], "buffer_pass_s": sec["buffer_pass"], "total_s": sec["total"],
                   "tokens_per_s": s["tokens_per_second"], "peak_device_mb": max(s["peak_device_mb"]),
                   "peak_host_mb": max(s["peak_host_mb"]), "buffer_tokens": s["buffer_tokens"],
                   "needles": s["needles"], "needles_found": s["needles_found"]}
            rows.append(row)
            print(f"{row['tokens']:>11} {row['chunks_s']:>8.3f} {row['exchange_s']:>9.3f} {row['buffer_pass_s']:>8.3f} "
                  f"{row['total_s']:>8.3f} {row['tokens_per_s']:>10.3g} {row['peak_device_mb']:>10.1f} "
                  f"{row['needles_found']:>4}/{row['needles']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
