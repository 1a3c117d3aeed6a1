#!/usr/bin/env python3
"""Plot runs of examples/train_sliding_ctx.py side by side: validation bits per byte against
steps at every evaluated context (one panel each), with the curriculum's phase ends marked.

    python3 examples/plot_training.py runs/proteus/summary.json runs/dense/summary.json --out bpb.png

Prints, per run, the last evaluation and each phase's tokens/s, seconds and device memory.
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"plot_training.py: {path}: {e}")
    if "log" not in run or "attention" not in run:
        sys.exit(f"plot_training.py: {path}: not a train_sliding_ctx.py summary (no 'log' or 'attention')")
    return run


def evaluations(run):
    return [r for r in run["log"] if r["kind"] == "eval"]


def contexts(run):
    return sorted({int(k[len("val_bpb_"):]) for r in evaluations(run) for k in r if k.startswith("val_bpb_")})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summaries", nargs="+", help="OUT/summary.json of each run")
    ap.add_argument("--labels", nargs="+", help="a legend label per summary (default: each run's --attention)")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args()
    if args.labels and len(args.labels) != len(args.summaries):
        ap.error(f"--labels: {len(args.labels)} labels for {len(args.summaries)} summaries")
    runs = [load(p) for p in args.summaries]
    labels = args.labels or [run["attention"] for run in runs]
    ctxs = sorted({c for run in runs for c in contexts(run)})
    if not ctxs:
        sys.exit("plot_training.py: no evaluations in the summaries")
    fig, axes = plt.subplots(1, len(ctxs), figsize=(5 * len(ctxs), 4), squeeze=False)
    for ax, ctx in zip(axes[0], ctxs):
        for run, label in zip(runs, labels):
            points = [(r["step"], r[f"val_bpb_{ctx}"]) for r in evaluations(run) if f"val_bpb_{ctx}" in r]
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=3, label=label)
        for r in runs[0]["log"]:
            if r["kind"] == "phase":
                ax.axvline(r["step"], color="grey", lw=0.6, ls=":")
        ax.set_title(f"validation at context {ctx}")
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    for run, label in zip(runs, labels):
        last = evaluations(run)[-1]
        bpb = ", ".join(f"{c}: {last[f'val_bpb_{c}']:.4f}" for c in ctxs if f"val_bpb_{c}" in last)
        print(f"{label}: {run['steps']} steps in {run['seconds']:.1f} s; step {last['step']} val bpb {bpb}")
        for r in run["log"]:
            if r["kind"] == "phase":
                print(f"  phase to step {r['step']} at context {r['context']}: {r['seconds']:.1f} s, "
                      f"{r['tokens_per_s']:,.0f} tokens/s, device {r['device_mb']:,.0f} MB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
