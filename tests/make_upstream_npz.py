#!/usr/bin/env python3
"""make_upstream_npz.py OUT.npz: a random state dict with upstream's names (E 64, 4 heads,
8 gates, prefix attn.) for the converter test."""
import sys

import numpy as np

rng = np.random.default_rng(3)
e, g = 64, 8
p = "attn."
np.savez(sys.argv[1], **{
    p + "qkv.weight": rng.standard_normal((3 * e, e)).astype(np.float32) * 0.1,
    p + "qkv.bias": rng.standard_normal(3 * e).astype(np.float32) * 0.1,
    p + "proj.weight": rng.standard_normal((e, e)).astype(np.float32) * 0.1,
    p + "proj.bias": rng.standard_normal(e).astype(np.float32) * 0.1,
    p + "head_router.linear.weight": rng.standard_normal((g, e)).astype(np.float32) * 0.1,
    p + "routing_prototypes": rng.standard_normal((g, e)).astype(np.float32) * 0.02,
    p + "routing_usage_ema": np.abs(rng.standard_normal(g)).astype(np.float32),
    p + "routing_confidence": np.full(g, 0.5, np.float32),
    p + "gate_to_head": (np.arange(g) * 4 // g).astype(np.int64),
})
