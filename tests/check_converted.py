#!/usr/bin/env python3
"""check_converted.py STATE.npz CHECKPOINT.h5: the run's checkpoint holds exactly the upstream
weights and initial DNA it was given (through torch_to_h5.py and [checkpoint] weights)."""
import sys

import h5py
import numpy as np

state, ckpt = sys.argv[1], sys.argv[2]
p = "attn."
pairs = {"/weights/qkv_weight": "qkv.weight", "/weights/qkv_bias": "qkv.bias", "/weights/out_weight": "proj.weight",
         "/weights/out_bias": "proj.bias", "/weights/router_weight": "head_router.linear.weight",
         "/dna/prototypes": "routing_prototypes", "/dna/usage": "routing_usage_ema",
         "/dna/confidence": "routing_confidence"}
bad = 0
with np.load(state) as z, h5py.File(ckpt, "r") as f:
    for ours, theirs in pairs.items():
        same = np.array_equal(f[ours][()], z[p + theirs].astype(np.float32))
        print(f"{ours} == {p}{theirs}: {same}")
        bad += not same
sys.exit(1 if bad else 0)
