#!/usr/bin/env python3
"""Fuzzing kept small enough for CI: mutated decks through proteus_driver, and damaged checkpoints
(truncated, bit-flipped, edited with h5py) through proteus_inspect, `[checkpoint] weights` and
`--restart`. Every run must end cleanly within its time limit: exit 0, or a non-zero exit below 128
(no crash, no signal) with an error message on stderr. A fixed seed makes every case repeatable:
a failure prints the case, which `--only N` reruns.

    fuzz_inputs.py DRIVER INSPECT WORKDIR [--decks 60] [--files 24] [--seed 1] [--only N]
"""
import argparse
import os
import random
import shutil
import subprocess
import sys

import h5py
import numpy as np

BASE_DECK = """# fuzz base: a small job (about a second)
[model]
embed_dim = 16
num_heads = 2
seed = 1
mode = linear

[sequence]
source = synthetic
tokens = 16384
seed = 7
needles = 2

[pipeline]
chunk_tokens = 4096
chunk_keep_ratio = 0.05
chunk_budget = 256
buffer_tokens = 512

[checkpoint]
directory = ck
interval_chunks = 2
at_end = true

[output]
directory = out
"""

ODD_VALUES = ["", "-1", "0", "1e309", "nan", "inf", "abc", "1.5", "99999999999999999999", "true", "[model]",
              "0x10", "1,2,3", "\"\"", "-0", "1e-320", "\u00e9\u00e9", "7 # comment", "=", "4096 4096"]


def mutate_deck(text, rng):
    lines = text.splitlines()
    kind = rng.randrange(10)
    if kind == 0:
        del lines[rng.randrange(len(lines))]
    elif kind == 1:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind in (2, 3, 4):
        keyed = [i for i, l in enumerate(lines) if "=" in l]
        i = rng.choice(keyed)
        lines[i] = lines[i].split("=")[0] + "= " + rng.choice(ODD_VALUES)
    elif kind == 5:
        keyed = [i for i, l in enumerate(lines) if "=" in l]
        i = rng.choice(keyed)
        lines[i] = lines[i].replace(lines[i].split("=")[0].strip(), lines[i].split("=")[0].strip() + "x", 1)
    elif kind == 6:
        lines.insert(rng.randrange(len(lines)), rng.choice(["[[bad", "[]", "key without value", "= 5", "[model"]))
    elif kind == 7:
        return "\r".join(lines).encode()
    elif kind == 8:
        data = text.encode()
        return data[: rng.randrange(len(data))]
    else:
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return ("\n".join(lines) + "\n").encode()


def damage_file(good, path, rng):
    """A copy of checkpoint `good` at `path`, damaged one way; returns a description."""
    shutil.copyfile(good, path)
    kind = rng.randrange(6)
    size = os.path.getsize(path)
    if kind == 0:
        cut = rng.randrange(size)
        os.truncate(path, cut)
        return f"truncated to {cut} bytes"
    if kind == 1:
        with open(path, "r+b") as f:
            flips = []
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(size)
                f.seek(at)
                b = f.read(1)[0]
                f.seek(at)
                f.write(bytes([b ^ (1 << rng.randrange(8))]))
                flips.append(at)
        return f"bits flipped at {flips}"
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        name = rng.choice(names)
        if kind == 2:
            del f[name]
            return f"deleted /{name}"
        if kind == 3:
            data = f[name][...]
            del f[name]
            f[name] = np.zeros(tuple(max(1, s + rng.choice([-1, 1])) for s in data.shape) or (2,), data.dtype)
            return f"reshaped /{name}"
        if kind == 4:
            data = f[name][...]
            if data.dtype.kind == "f" and data.size:
                flat = data.reshape(-1)
                flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, 3e38, -1e30])
                f[name][...] = flat.reshape(data.shape)
                return f"odd value in /{name}"
            f.attrs["format_version"] = rng.choice([0, 2, -7])
            return "format_version changed"
        attrs = list(f.attrs)
        victim = rng.choice(attrs)
        del f.attrs[victim]
        return f"root attribute {victim} deleted"


def run(cmd, cwd, limit=60):
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=limit,
                           env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
    except subprocess.TimeoutExpired:
        return f"hung (more than {limit} s)"
    if p.returncode == 0:
        return None
    if p.returncode < 0 or p.returncode >= 128:
        return f"crashed (exit {p.returncode}): {p.stderr[-600:]}"
    if "error" not in p.stderr:
        return f"exit {p.returncode} without an error message: {p.stderr[-600:]}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("driver")
    ap.add_argument("inspect")
    ap.add_argument("work")
    ap.add_argument("--decks", type=int, default=60)
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", type=int)
    args = ap.parse_args()
    args.driver, args.inspect = os.path.abspath(args.driver), os.path.abspath(args.inspect)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    base = os.path.join(args.work, "base")
    os.makedirs(base)
    with open(os.path.join(base, "deck.in"), "w") as f:
        f.write(BASE_DECK)
    problem = run([args.driver, "-q", "deck.in"], base)
    if problem:
        sys.exit(f"fuzz_inputs.py: the base deck itself fails: {problem}")
    good = sorted(os.listdir(os.path.join(base, "ck")))
    good = os.path.join(base, "ck", [g for g in good if g.endswith(".h5")][-1])
    failures, cases = [], 0

    def each_case(kind, count, salt):
        """(n, its random generator, its fresh directory) for every case of this kind (or --only)."""
        for n in range(count):
            if args.only is None or n == args.only:
                case = os.path.join(args.work, f"{kind}{n}")
                os.makedirs(case)
                yield n, random.Random(args.seed * salt + n), case

    for n, rng, case in each_case("deck", args.decks, 100003):
        with open(os.path.join(case, "deck.in"), "wb") as f:
            f.write(mutate_deck(BASE_DECK, rng))
        cases += 1
        problem = run([args.driver, "-q", "deck.in"], case)
        if problem:
            failures.append(f"deck case {n} ({case}/deck.in): {problem}")
    for n, rng, case in each_case("file", args.files, 200003):
        shutil.copyfile(os.path.join(base, "deck.in"), os.path.join(case, "deck.in"))
        damaged = os.path.join(case, "damaged.h5")
        what = damage_file(good, damaged, rng)
        for name, cmd in (("inspect", [args.inspect, damaged]),
                          ("weights", [args.driver, "-q", "deck.in", "--set", f"checkpoint.weights={damaged}"]),
                          ("restart", [args.driver, "-q", "deck.in", "--restart", damaged])):
            cases += 1
            problem = run(cmd, case)
            if problem:
                failures.append(f"file case {n} ({what}) through {name}: {problem}")
    for f in failures:
        print("FAIL", f)
    print(f"fuzz_inputs.py: {cases} runs, {len(failures)} failed (seed {args.seed})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
