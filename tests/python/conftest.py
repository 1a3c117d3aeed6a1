"""Shared by the extension's tests: the device the kernels run on, seeded inputs, and an independent
double-precision causal multi-head attention with RoPE written with plain torch operations (it
shares no code with the kernels)."""
import math
import os

import pytest
import torch

import proteus_kokkos as pk

DEVICE = torch.device("cuda", torch.cuda.current_device()) if pk.device() == "cuda" else torch.device("cpu")


def make(embed=32, heads=4, seed=5, batch_first=True, **config):
    return pk.CausalGeneticMultiheadAttention(embed, heads, batch_first=batch_first, seed=seed, **config)


def inputs(shape, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(DEVICE)
    return x.requires_grad_(requires_grad)


def dense_config():
    """alpha 0: every head of every token attends densely (no routing effect on the output)."""
    return {"mode": "fixed", "alpha": 0.0, "token_sparse": False}


def rope(t, positions, base):
    """Rotates consecutive pairs (2i, 2i+1) of each head by pos * base^(-2i/D)."""
    d = t.shape[-1]
    i = torch.arange(d // 2, dtype=torch.float64, device=t.device)
    angle = positions.to(torch.float64)[:, None] * base ** (-2.0 * i / d)  # [T, D/2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    a0, a1 = t[..., 0::2], t[..., 1::2]
    out = torch.empty_like(t)
    out[..., 0::2] = a0 * cos - a1 * sin
    out[..., 1::2] = a1 * cos + a0 * sin
    return out


def reference_attention(x, qkv_w, qkv_b, out_w, out_b, heads, rope_base=10000.0):
    """Causal multi-head attention with RoPE on q and k: x [B, T, E] -> [B, T, E], in the dtype given."""
    b, t, e = x.shape
    d = e // heads
    q, k, v = (x @ qkv_w.T + qkv_b).split(e, dim=-1)
    q, k, v = (z.reshape(b, t, heads, d).transpose(1, 2) for z in (q, k, v))  # [B, H, T, D]
    pos = torch.arange(t, device=x.device)
    q, k = rope(q, pos, rope_base), rope(k, pos, rope_base)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1), float("-inf"))
    ctx = torch.softmax(scores, dim=-1) @ v
    return ctx.transpose(1, 2).reshape(b, t, e) @ out_w.T + out_b


def scaled_error(ours, ref):
    """max |ours - ref| / (|ref| + rms(ref)): a relative error that ignores cancellation near zero."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    rms = ref.square().mean().sqrt()
    return float(((ours - ref).abs() / (ref.abs() + rms)).max())


@pytest.fixture
def parity_dir():
    return os.environ.get("PROTEUS_PARITY_DIR", os.path.join(os.path.dirname(__file__), "..", "data", "parity"))
