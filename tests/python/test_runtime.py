"""Kokkos's lifetime inside a Python process: initialised once on first use, finalised cleanly at
exit even with modules and unfinished training steps still alive."""
import os
import subprocess
import sys

import torch

import proteus_kokkos as pk
from conftest import make, inputs

SCRIPT = """
import torch, proteus_kokkos as pk
{first}
m = pk.CausalGeneticMultiheadAttention(32, 4, batch_first=True, seed=1)
x = torch.randn(1, 24, 32, device=m.attention.qkv.weight.device, requires_grad=True)
y, _ = m(x, x, x)           # a training forward whose backward never runs
kept = [pk.CausalGeneticMultiheadAttention(16, 2, seed=s) for s in range(3)]
print("ok", float(y.detach().abs().sum()) > 0)
"""


def run(first=""):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", SCRIPT.format(first=first)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_exit_with_live_objects_is_clean():
    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok True"
    assert done.stderr == ""  # no Kokkos warnings about views outliving finalize


def test_torch_cuda_context_first_then_kokkos():
    first = "torch.zeros(1, device='cuda') if torch.cuda.is_available() else None"
    done = run(first)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_modules_share_one_kokkos_runtime():
    a, b = make(seed=1), make(seed=1)
    assert pk._core.is_initialized()
    x = inputs((1, 20, 32))
    with torch.no_grad():
        assert torch.equal(a.eval()(x)[0], b.eval()(x)[0])  # same seed, same weights, same outputs
    assert not torch.equal(make(seed=2).attention.qkv.weight, a.attention.qkv.weight)
