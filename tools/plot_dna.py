#!/usr/bin/env python3
"""Plots of what the DNA learned, from a proteus checkpoint or model file (and optionally a DNA dump).

    plot_dna.py CHECKPOINT.h5 [--dump dna_dump.h5] [--out DIR]

Writes into DIR (default: next to the checkpoint):
  dna_similarity.png   cosine similarity between the gates' prototypes (heatmap)
  gate_to_head.png     which head each gate feeds (gates x heads)
  gate_usage.png       EMA usage mass per gate (histogram and bars)
  salience.png         candidate scores along the sequence, buffer tokens and planted needles
                       (checkpoints of a run only; a model file has no sequence)
  dna_drift.png        (with --dump) change of each prototype between snapshots
Needs h5py and matplotlib (Debian: python3-h5py python3-matplotlib).
"""
import argparse
import os
import sys

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SUPPORTED_VERSION = 1


def fail(message):
    print(f"plot_dna.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def read(f, name, path):
    if name not in f:
        fail(f"{path}:{name}: dataset is missing")
    return f[name][()]


def cosine_matrix(p):
    n = np.linalg.norm(p, axis=1, keepdims=True)
    q = p / np.maximum(n, 1e-30)
    return q @ q.T


def plot_salience(save, tokens, cand_pos, cand_score, buf_pos, needles):
    fig, ax = plt.subplots(figsize=(11, 4))
    order = np.argsort(cand_pos)
    ax.scatter(cand_pos[order], cand_score[order], s=2, color="0.6", label=f"candidates ({len(cand_pos)})")
    in_buf = np.isin(cand_pos, buf_pos)
    ax.scatter(cand_pos[in_buf], cand_score[in_buf], s=3, color="tab:blue", label=f"global buffer ({len(buf_pos)})")
    for i, n in enumerate(needles):
        ax.axvline(n, color="tab:red", lw=0.8, alpha=0.7, label="needles" if i == 0 else None)
    ax.set_xlim(0, tokens)
    ax.set_xlabel("token position in the original sequence")
    ax.set_ylabel("importance (salience)")
    ax.set_title("salience along the sequence")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "salience.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--dump", help="dna_dump.h5 with DNA snapshots along the sequence")
    ap.add_argument("--out", help="output directory")
    args = ap.parse_args()
    path = args.checkpoint
    if not os.path.exists(path):
        fail(f"{path}: file does not exist")
    out = args.out or os.path.dirname(os.path.abspath(path))
    os.makedirs(out, exist_ok=True)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        fail(f"{path}: not a readable HDF5 file ({e})")
    with f:
        version = f.attrs.get("format_version")
        if version != SUPPORTED_VERSION:
            fail(f"{path}: format_version {version} is not the supported {SUPPORTED_VERSION}")
        group = "dna_final" if "dna_final" in f else "dna"
        protos = read(f, f"/{group}/prototypes", path)
        usage = read(f, f"/{group}/usage", path)
        gate_to_head = read(f, "/gate_to_head", path)
        heads = int(f["/config"].attrs["num_heads"])
        # A model file (weights and DNA only, as the Python extension and the training script
        # write) has no run: no salience plot for it.
        has_run = "run" in f
        if has_run:
            tokens = int(f.attrs["tokens"])
            cand_pos = read(f, "/run/candidate_positions", path)
            cand_score = read(f, "/run/candidate_scores", path)
            buf_pos = f["/buffer/positions"][()] if "/buffer/positions" in f else np.array([], dtype=np.int64)
            needles = f["/sequence/needles"][()] if "/sequence/needles" in f else np.array([], dtype=np.int64)

    written = []

    def save(fig, name):
        target = os.path.join(out, name)
        fig.savefig(target, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(target)

    sim = cosine_matrix(protos.astype(np.float64))
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(f"DNA prototype cosine similarity ({group}, {protos.shape[0]} gates)")
    ax.set_xlabel("gate")
    ax.set_ylabel("gate")
    fig.colorbar(im, ax=ax, label="cosine")
    save(fig, "dna_similarity.png")

    onehot = np.zeros((len(gate_to_head), heads))
    onehot[np.arange(len(gate_to_head)), gate_to_head] = 1
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(onehot, aspect="auto", cmap="Greys", interpolation="nearest")
    counts = onehot.sum(axis=0)
    ax.set_title(f"gate -> head map (gates per head: {int(counts.min())}..{int(counts.max())})")
    ax.set_xlabel("head")
    ax.set_ylabel("gate")
    save(fig, "gate_to_head.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.hist(usage, bins=min(20, max(5, len(usage) // 2)), color="tab:blue")
    a1.set_title("gate usage (EMA token mass)")
    a1.set_xlabel("usage")
    a1.set_ylabel("gates")
    a2.bar(np.arange(len(usage)), usage, color="tab:green")
    a2.set_xlabel("gate")
    a2.set_ylabel("usage")
    save(fig, "gate_usage.png")

    if has_run:
        plot_salience(save, tokens, cand_pos, cand_score, buf_pos, needles)

    if args.dump:
        with h5py.File(args.dump, "r") as d:
            snaps = read(d, "/prototypes", args.dump)
            seen = read(d, "/tokens_seen", args.dump)
        drift = np.linalg.norm(np.diff(snaps, axis=0), axis=2) if len(snaps) > 1 else np.zeros((1, snaps.shape[1]))
        fig, ax = plt.subplots(figsize=(8, 4))
        im = ax.imshow(drift.T, aspect="auto", cmap="viridis",
                       extent=[seen[0], seen[-1], snaps.shape[1] - 0.5, -0.5])
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("gate")
        ax.set_title("prototype change between snapshots")
        fig.colorbar(im, ax=ax, label="|dP|")
        save(fig, "dna_drift.png")

    for w in written:
        print(w)


if __name__ == "__main__":
    main()
