#!/usr/bin/env python3
"""A trained proteus layer on a long real document: do planted facts reach the global buffer?

Takes a model trained by examples/train_sliding_ctx.py (--attention proteus) and one of its
attention layers (--layer), and:
  1. builds a document of --bytes bytes from the pinned corpus (validation files first, then
     training files, in manifest order) with --facts unique assignments `KEY_7f3a = 91842` planted
     at random depths (5% to 90% of the document, at line starts), and each key used again in the
     last 2% (`print(KEY_7f3a)`);
  2. embeds it through the trained model's embeddings and the blocks below the layer, in windows of
     the longest training context (positions restart in each window: the learned position table
     ends there), and writes the layer's input (its pre-norm LayerNorm output) as an HDF5 token file
     [bytes x d];
  3. exports the layer (weights, DNA, gate map) to HDF5 and runs proteus_driver on the token file
     with the trained weights and with random weights, on each --ranks count, naming the start of
     each planted value as a needle;
  4. reports, for trained and random weights, which facts reach the global buffer (a fact counts
     when a byte of its assignment line is in the buffer) and whether the buffers of every rank
     count are identical. Everything goes to OUT/facts.json.

    PYTHONPATH=build/python python3 examples/long_context_facts.py --checkpoint runs/proteus/checkpoint.pt \\
        --driver build/drivers/proteus_driver --bytes 1000000 --out runs/facts
"""
import argparse
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import train_sliding_ctx as training  # noqa: E402


def fail(message):
    sys.exit(f"long_context_facts.py: error: {message}")


def arguments(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="OUT/checkpoint.pt of train_sliding_ctx.py --attention proteus")
    ap.add_argument("--layer", type=int, default=-1, help="the attention layer to run (default: the last)")
    ap.add_argument("--bytes", type=int, default=1_000_000, help="document length (tokens)")
    ap.add_argument("--facts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--driver", default=os.environ.get("PROTEUS_DRIVER", "proteus_driver"))
    ap.add_argument("--mpirun", default="mpirun", help="launcher for more than one rank")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk-tokens", type=int, default=16384)
    ap.add_argument("--buffer-tokens", type=int, default=4096)
    ap.add_argument("--corpus-pack", help="an .npz from `examples/corpus.py pack` instead of /usr/lib/python3.11")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.bytes < 10_000 or args.facts < 1:
        ap.error("--bytes must be at least 10000 and --facts at least 1")
    return args


# ---- the document ------------------------------------------------------------------------------------

def document(args):
    """(bytes as uint8, facts): facts are dicts with key, value, line span [start, end), value position."""
    try:
        train, validation = corpus.load_pack(args.corpus_pack) if args.corpus_pack else corpus.load()
    except corpus.CorpusError as e:
        fail(str(e))
    text = np.concatenate([validation, train]).tobytes()
    rng = np.random.default_rng(args.seed)
    keys = set()
    while len(keys) < args.facts:
        keys.add(f"KEY_{rng.integers(0, 1 << 16):04x}")
    facts = [{"key": k, "value": int(rng.integers(10000, 100000))} for k in sorted(keys)]
    lines = [f"{f['key']} = {f['value']}\n".encode() for f in facts]
    queries = b"".join(f"print({f['key']})\n".encode() for f in rng.permutation(facts))
    body = args.bytes - sum(len(x) for x in lines) - len(queries)
    tail = max(len(queries), args.bytes // 50)  # the keys come back in the last 2%
    if body - tail > len(text) or body < tail:
        fail(f"the corpus has {len(text)} bytes: too few for --bytes {args.bytes}")
    base = text[:body]
    depths = np.sort(rng.uniform(0.05, 0.90, size=args.facts))
    out, at = [], 0
    for fact, line, depth in zip(facts, lines, depths):
        cut = base.find(b"\n", int(depth * (body - tail)), body - tail)  # the next line start
        cut = max(int(depth * (body - tail)) if cut < 0 else cut + 1, at)
        out.append(base[at:cut])
        start = sum(len(x) for x in out)
        fact.update(depth=float(depth), start=start, end=start + len(line),
                    value_at=start + line.index(b"=") + 2)
        out.append(line)
        at = cut
    out.append(base[at:body - tail])
    end_text = base[body - tail:body]
    # The queries go just before the last line break of the final 2%, inside real text.
    split = end_text.rfind(b"\n", 0, max(1, len(end_text) - 1)) + 1
    out += [end_text[:split], queries, end_text[split:]]
    data = b"".join(out)
    assert len(data) == args.bytes, (len(data), args.bytes)
    for f in facts:
        assert data[f["start"]:f["end"]] == f"{f['key']} = {f['value']}\n".encode()
    return np.frombuffer(data, dtype=np.uint8), facts


# ---- the trained model's input to the layer --------------------------------------------------------------

def load_model(args):
    try:
        state = torch.load(args.checkpoint, map_location="cpu")
        saved = argparse.Namespace(**state["args"])
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        fail(f"{args.checkpoint}: not a train_sliding_ctx.py checkpoint ({e})")
    if saved.attention != "proteus":
        fail(f"{args.checkpoint}: trained with --attention {saved.attention}; this needs proteus layers")
    contexts = [p[0] for p in saved.phases]
    model = training.ByteGPT(saved, contexts)
    model.load_state_dict(state["model"])
    layer = args.layer if args.layer >= 0 else saved.layers - 1
    if not 0 <= layer < saved.layers:
        fail(f"--layer {args.layer}: the model has {saved.layers} layers")
    return model.to(args.device).eval(), layer, max(contexts), saved


@torch.no_grad()
def write_layer_input(model, layer, window, tokens, path, device):
    """The layer's attention input (ln1 of its block) for every byte, window by window."""
    n, d = len(tokens), model.token_emb.embedding_dim
    with h5py.File(path + ".tmp", "w") as f:
        out = f.create_dataset("embeddings", (n, d), dtype="float32", chunks=(min(n, 16384), d))
        out.attrs["description"] = f"input of attention layer {layer}: ln1(block inputs), windows of {window} bytes"
        for first in range(0, n, window):
            idx = torch.as_tensor(tokens[first:first + window].astype(np.int64), device=device)[None]
            x = model.token_emb(idx) + model.pos_emb(torch.arange(idx.shape[1], device=device))
            for block in model.blocks[:layer]:
                x = block(x)
            out[first:first + idx.shape[1]] = model.blocks[layer].ln1(x)[0].float().cpu().numpy()
    os.replace(path + ".tmp", path)


# ---- the driver ----------------------------------------------------------------------------------------

def deck_text(args, saved, layer, tokens_file, weights, facts, out_dir):
    model_keys = {"embed_dim": saved.d_model, "num_heads": saved.heads, "num_gates": 16,
                  "seed": saved.seed * 1000 + layer, "heads_active_min": min(2, saved.heads),
                  "heads_active_max": min(6, saved.heads),
                  "force_dense_threshold": 0.25, "mode": '"linear"'}
    needles = ", ".join(str(f["value_at"]) for f in facts)
    lines = ["[model]"] + [f"{k} = {v}" for k, v in model_keys.items()] + [
        "", "[sequence]", 'source = "hdf5"', f'file = "{tokens_file}"', 'dataset = "embeddings"',
        f"needle_positions = [{needles}]",
        "", "[pipeline]", f"chunk_tokens = {args.chunk_tokens}", f"buffer_tokens = {args.buffer_tokens}",
        "", "[checkpoint]", f'directory = "{out_dir}/ck"', "interval_chunks = 0", "keep_last = 1",
        f'weights = "{weights}"' if weights else 'weights = ""',
        "", "[output]", f'directory = "{out_dir}"', "write_outputs = false", "progress_seconds = 10", ""]
    return "\n".join(lines)


def run_driver(args, deck, ranks, log):
    command = [args.driver, "-q", deck]
    if ranks > 1:
        command = args.mpirun.split() + ["-np", str(ranks)] + command
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        fail(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")


def buffer_positions(out_dir):
    checkpoints = sorted(p for p in os.listdir(f"{out_dir}/ck") if p.startswith("checkpoint_") and p.endswith(".h5"))
    if not checkpoints:
        fail(f"{out_dir}/ck: the driver wrote no checkpoint")
    with h5py.File(f"{out_dir}/ck/{checkpoints[-1]}", "r") as f:
        return np.sort(f["/buffer/positions"][()])


def main(argv=None):
    args = arguments(argv)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)
    tokens, facts = document(args)
    model, layer, window, saved = load_model(args)
    tokens_file = f"{out}/tokens.h5"
    print(f"embedding {len(tokens):,} bytes through the embeddings and {layer} block(s) on {args.device}", flush=True)
    write_layer_input(model, layer, window, tokens, tokens_file, args.device)
    weights = f"{out}/attention_layer{layer}.h5"
    model.proteus_layers()[layer].save_hdf5(weights)
    report = {"bytes": len(tokens), "layer": layer, "window": window, "checkpoint": os.path.abspath(args.checkpoint),
              "facts": facts, "runs": {}}
    for name, w in (("trained", weights), ("random", None)):
        buffers = {}
        for ranks in args.ranks:
            run_dir = f"{out}/{name}_np{ranks}"
            deck = f"{out}/{name}_np{ranks}.in"
            with open(deck, "w") as f:
                f.write(deck_text(args, saved, layer, tokens_file, w, facts, run_dir))
            print(f"proteus_driver, {name} weights, {ranks} rank(s)", flush=True)
            run_driver(args, deck, ranks, f"{run_dir}.log")
            buffers[ranks] = buffer_positions(run_dir)
            with open(f"{run_dir}/summary.json") as f:
                summary = json.load(f)
        first = buffers[args.ranks[0]]
        reached = [bool(np.any((first >= f["start"]) & (first < f["end"]))) for f in facts]
        report["runs"][name] = {
            "buffer_tokens": int(len(first)), "reached": reached, "facts_reached": int(sum(reached)),
            "needles_found": summary.get("needles_found"),
            "identical_over_ranks": all(np.array_equal(first, b) for b in buffers.values())}
    with open(f"{out}/facts.json.tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(f"{out}/facts.json.tmp", f"{out}/facts.json")
    print(f"{'fact':<10} {'depth':>6} {'trained':>8} {'random':>7}")
    for i, fact in enumerate(facts):
        marks = ["yes" if report["runs"][n]["reached"][i] else "-" for n in ("trained", "random")]
        print(f"{fact['key']:<10} {fact['depth']:6.2f} {marks[0]:>8} {marks[1]:>7}")
    for name, r in report["runs"].items():
        print(f"{name}: {r['facts_reached']} of {len(facts)} facts in a buffer of {r['buffer_tokens']} tokens "
              f"(needles found: {r['needles_found']}); identical on ranks {args.ranks}: {r['identical_over_ranks']}")
    print(f"wrote {out}/facts.json")


if __name__ == "__main__":
    main()
