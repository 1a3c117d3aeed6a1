"""proteus_kokkos: Proteus attention (sparse, content-routed causal attention) for PyTorch, running
proteus' Kokkos kernels (CPU or CUDA, from one C++ source) with autograd.

    from proteus_kokkos import CausalGeneticMultiheadAttention
    attn = CausalGeneticMultiheadAttention(embed_dim=512, num_heads=8, batch_first=True)
    y, stats = attn(x, x, x)

The package name differs from upstream's `proteus_attention`, so both can be installed together;
state dicts move between them unchanged (see CausalGeneticMultiheadAttention).
"""
from . import _runtime
from ._core import ProteusError
from .module import CausalGeneticMultiheadAttention

device = _runtime.device

__all__ = ["CausalGeneticMultiheadAttention", "ProteusError", "device"]
