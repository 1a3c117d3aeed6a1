#!/usr/bin/env python3
"""A real text corpus that every Debian 12 machine carries: the CPython 3.11 standard library's
sources (/usr/lib/python3.11, packages libpython3.11-minimal and -stdlib), pinned file by file by
examples/data/cpython311_stdlib.sha256. Bytes are tokens. Files are split into train and
validation by a hash of their path (about 10% validation), so no file is in both.

    corpus.py check                      # verify every pinned file (names the first bad one)
    corpus.py pack OUT.npz               # train/validation bytes in one file, to carry elsewhere
    corpus.py manifest OUT.sha256        # (maintainers) write a manifest of the installed files

Nothing is downloaded. On a machine without these files (another Python version), carry the pack.
"""
import argparse
import hashlib
import os
import sys

import numpy as np

ROOT = "/usr/lib/python3.11"
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cpython311_stdlib.sha256")


class CorpusError(RuntimeError):
    pass


def read_manifest(path=MANIFEST):
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise CorpusError(f"{path}:{number}: expected '<sha256>  <relative path>'")
            entries.append((digest, name))
    if not entries:
        raise CorpusError(f"{path}: no entries")
    return entries


def is_validation(name):
    """About one file in ten, chosen by the path alone (stable when files change)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10 == 0


def load(root=ROOT, manifest=MANIFEST):
    """(train, validation) as uint8 arrays; every file checked against its pinned SHA-256. Files are
    joined in manifest order, each followed by a NUL byte (a document separator)."""
    parts = {False: [], True: []}
    for digest, name in read_manifest(manifest):
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CorpusError(f"{path}: cannot read a pinned corpus file ({e.strerror}); on a machine "
                              f"without CPython 3.11's sources use `corpus.py pack` elsewhere and --corpus-pack")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorpusError(f"{path}: SHA-256 differs from {manifest} (another build of the sources?)")
        parts[is_validation(name)].append(np.frombuffer(data + b"\0", dtype=np.uint8))
    return np.concatenate(parts[False]), np.concatenate(parts[True])


def load_pack(path):
    try:
        with np.load(path) as z:
            train, validation = z["train"], z["validation"]
    except (OSError, KeyError, ValueError) as e:
        raise CorpusError(f"{path}: not a corpus pack ({e})")
    if train.dtype != np.uint8 or validation.dtype != np.uint8 or validation.size == 0:
        raise CorpusError(f"{path}: a pack holds uint8 arrays 'train' and 'validation'")
    return train, validation


def write_manifest(out, root=ROOT):
    """Every .py file under root, minus third-party directories, sorted by path."""
    names = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("dist-packages", "site-packages", "__pycache__"))
        names += [os.path.relpath(os.path.join(directory, f), root) for f in files if f.endswith(".py")]
    with open(out + ".tmp", "w") as f:
        f.write(f"# CPython 3.11 standard library sources under {root} (Debian 12), sha256sum format\n")
        for name in sorted(names):
            with open(os.path.join(root, name), "rb") as g:
                f.write(f"{hashlib.sha256(g.read()).hexdigest()}  {name}\n")
    os.replace(out + ".tmp", out)
    return len(names)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["check", "pack", "manifest"])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--root", default=ROOT)
    args = ap.parse_args()
    try:
        if args.action == "manifest":
            print(f"{args.out}: {write_manifest(args.out, args.root)} files")
            return
        train, validation = load(args.root)
        print(f"corpus: {train.size:,} training bytes, {validation.size:,} validation bytes")
        if args.action == "pack":
            np.savez_compressed(args.out + ".tmp.npz", train=train, validation=validation)
            os.replace(args.out + ".tmp.npz", args.out)
            print(f"{args.out}: written")
    except CorpusError as e:
        print(f"corpus.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
