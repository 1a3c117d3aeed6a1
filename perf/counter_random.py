"""proteus' counter-based normal numbers (include/proteus/random.hpp) computed with torch, so that
a Python benchmark feeds the kernels the very input the C++ benchmark makes: bench_module's x is
standard_normal(seed 5, stream 9, i) for the i-th float of the row-major [B*T x E] input.

torch has no unsigned 64-bit arithmetic: the SplitMix64 mixer runs on int64, whose additions and
multiplications wrap modulo 2^64 as uint64's do; right shifts are masked to be logical."""
import math

import torch

_MASK64 = (1 << 64) - 1


def _signed(c):
    """A uint64 constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= (1 << 63) else c


def _shr(z, k):
    """Logical right shift of int64 values holding uint64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64_int(z):
    """SplitMix64's finaliser on a Python int (exact)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix64(z):
    """SplitMix64's finaliser on an int64 tensor."""
    z = z + _signed(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def _uniform_open01(bits):
    return (_shr(bits, 11).to(torch.float64) + 0.5) * (1.0 / 9007199254740992.0)


def standard_normal(seed, stream, count, device="cpu", chunk=1 << 24):
    """Values 0..count-1 of the stream as float32 (Box-Muller in float64, as the C++ computes)."""
    key = _signed(_mix64_int(_mix64_int(seed) ^ stream))
    out = torch.empty(count, dtype=torch.float32, device=device)
    for begin in range(0, count, chunk):
        index = torch.arange(begin, min(begin + chunk, count), dtype=torch.int64, device=device)
        u1 = _uniform_open01(_mix64(key ^ (2 * index)))
        u2 = _uniform_open01(_mix64(key ^ (2 * index + 1)))
        out[begin:begin + index.numel()] = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return out
