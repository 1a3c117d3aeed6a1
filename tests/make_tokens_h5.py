#!/usr/bin/env python3
"""make_tokens_h5.py OUT.h5 TOKENS EMBED [NAN_ROW]: a float32 dataset /embeddings [TOKENS x EMBED]
of N(0,1) tokens (seed 1), with one NaN in row NAN_ROW if given. Test data for the HDF5 source."""
import sys

import h5py
import numpy as np

out, tokens, embed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.random.default_rng(1).standard_normal((tokens, embed), dtype=np.float32)
if len(sys.argv) > 4:
    x[int(sys.argv[4]), 3] = np.nan
with h5py.File(out, "w") as f:
    f.create_dataset("embeddings", data=x)
