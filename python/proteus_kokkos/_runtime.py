"""Kokkos's lifetime in a Python process: initialised on first use, on PyTorch's current CUDA
device for a CUDA build, and finalised at interpreter exit (after every Kokkos object held from
Python has been released), also when PyTorch created the CUDA context first."""
import atexit

import torch

from . import _core

_registered = False


def device():
    """'cuda' or 'cpu': where this build of the kernels runs (tensors must live there)."""
    return _core.device()


def ensure_initialized():
    global _registered
    if _core.is_initialized():
        return
    index = 0
    if _core.device() == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("proteus_kokkos was built for CUDA, but torch.cuda.is_available() is False")
        index = torch.cuda.current_device()
        torch.cuda.init()
    _core.initialize(index)
    if not _registered:
        atexit.register(_core.finalize)
        _registered = True


def stream_handle(tensor):
    """The CUDA stream PyTorch is issuing work on for `tensor`'s device (0 on the CPU)."""
    if tensor.device.type == "cuda":
        return torch.cuda.current_stream(tensor.device).cuda_stream
    return 0
