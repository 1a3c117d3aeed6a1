"""The Python front end against the C++ module, upstream's recorded outputs and proteus' HDF5 files."""
import glob
import os
import subprocess

import h5py
import numpy as np
import pytest
import torch

from conftest import DEVICE, inputs, make, scaled_error

SPARSE = {"mode": "linear", "token_sparse": True, "token_keep_ratio": 0.5, "linear_L": 24, "window": 12,
          "anchor_stride": 8, "use_dna_candidates": True}


@pytest.mark.parametrize("config", [{}, SPARSE], ids=["auto", "alpha1_sparse"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_forward_equals_the_cpp_module_bit_for_bit(config, batch_first, padded):
    m = make(batch_first=batch_first, **config).eval()
    shape = (2, 77, 32) if batch_first else (77, 2, 32)
    x = inputs(shape)
    pad = None
    if padded:
        pad = torch.zeros(2, 77, dtype=torch.bool, device=DEVICE)
        pad[1, 60:] = True
    with torch.no_grad():
        y, _ = m(x, x, x, key_padding_mask=pad)
    assert torch.equal(y, m.reference_forward(x, key_padding_mask=pad))


UPSTREAM_KEYS = {  # CausalASPAMultiheadAttention(64, 4).state_dict() at upstream commit 1a42646
    "attention.routing_prototypes": (8, 64), "attention.routing_usage_ema": (8,),
    "attention.routing_confidence": (8,), "attention.head_router.linear.weight": (8, 64),
    "attention.qkv.weight": (192, 64), "attention.qkv.bias": (192,), "attention.proj.weight": (64, 64),
    "attention.proj.bias": (64,), "fallback_attention.in_proj_weight": (192, 64),
    "fallback_attention.in_proj_bias": (192,), "fallback_attention.out_proj.weight": (64, 64),
    "fallback_attention.out_proj.bias": (64,)}


def test_state_dict_has_upstreams_keys_and_shapes():
    m = make(embed=64, heads=4)
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert ours == {k: v for k, v in UPSTREAM_KEYS.items() if not k.startswith("fallback_attention.")}
    upstream = {k: torch.full(s, 0.25) for k, s in UPSTREAM_KEYS.items()}
    m.load_state_dict(upstream)  # strict: upstream's fallback_attention.* are accepted and ignored
    assert bool((m.attention.qkv.weight == 0.25).all())


def upstream_state_dict(f):
    """A state dict under upstream's names from a recorded parity file."""
    t = lambda name: torch.from_numpy(np.asarray(f[name], dtype=np.float32))
    return {"attention.qkv.weight": t("weights/qkv_weight"), "attention.qkv.bias": t("weights/qkv_bias"),
            "attention.proj.weight": t("weights/out_weight"), "attention.proj.bias": t("weights/out_bias"),
            "attention.head_router.linear.weight": t("weights/router_weight"),
            "attention.routing_prototypes": t("dna/prototypes"), "attention.routing_usage_ema": t("dna/usage"),
            "attention.routing_confidence": t("dna/confidence")}


def test_upstream_state_dict_reproduces_upstreams_outputs(parity_dir):
    """Upstream's recorded calls (tests/data/parity, docs/parity.md) with its state dict loaded as it
    is: outputs and the DNA after the EMA within 1e-4 of upstream's, as in the C++ parity test."""
    files = sorted(glob.glob(os.path.join(parity_dir, "*.h5")))
    assert len(files) >= 6
    for path in files:
        with h5py.File(path, "r") as f:
            a = dict(f["parity"].attrs)
            heads, gates, keep = int(a["num_heads"]), int(a["num_gates"]), float(a["token_keep_ratio"])
            m = make(embed=int(a["embed_dim"]), heads=heads, num_gates=gates, dna_enable=bool(a["dna"]),
                     token_sparse=keep > 0, token_keep_ratio=keep if keep > 0 else 1.0, token_keep_guard=4,
                     heads_active_min=min(2, heads), heads_active_max=min(16, heads), nucleus_per_token=False,
                     force_dense_threshold=0.0, L_max=512, mode="fixed", alpha=float(a["alpha"]))
            assert list(m.attention.gate_to_head.cpu().numpy()) == list(f["gate_to_head"][...])
            m.load_state_dict(upstream_state_dict(f))
            x = torch.from_numpy(np.asarray(f["parity/x"], dtype=np.float32)).to(DEVICE)
            with torch.no_grad():
                y, _ = m.train()(x, x, x)  # training mode: the EMA runs, as upstream's did
            assert scaled_error(y, torch.from_numpy(f["parity/y"][...])) < 1e-4, path
            if a["dna"]:
                after = {"routing_prototypes": "prototypes", "routing_usage_ema": "usage",
                         "routing_confidence": "confidence"}
                for ours, theirs in after.items():
                    ref = torch.from_numpy(f["dna_after/" + theirs][...])
                    assert scaled_error(getattr(m.attention, ours), ref) < 1e-4, (path, ours)


def test_hdf5_round_trip(tmp_path):
    m = make(seed=11)
    x = inputs((1, 40, 32))
    with torch.no_grad():
        m.train()(x, x, x)  # DNA moved away from its initial state
    path = tmp_path / "model.h5"
    m.save_hdf5(path)
    with h5py.File(path, "r") as f:
        assert int(f.attrs["format_version"]) == 1
        assert np.array_equal(f["weights/qkv_weight"][...], m.attention.qkv.weight.detach().cpu().numpy())
        assert np.array_equal(f["dna/usage"][...], m.attention.routing_usage_ema.cpu().numpy())
    other = make(seed=12)
    other.load_hdf5(path)
    for (k, a), (_, b) in zip(sorted(m.state_dict().items()), sorted(other.state_dict().items())):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("*.tmp"))


def test_load_hdf5_refuses_bad_files_and_leaves_the_module_unchanged(tmp_path):
    m = make()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    missing = tmp_path / "missing.h5"
    with pytest.raises(ValueError, match="missing.h5: file does not exist"):
        m.load_hdf5(missing)
    m.save_hdf5(tmp_path / "ok.h5")
    with h5py.File(tmp_path / "ok.h5", "a") as f:
        f["weights/out_weight"][3, 4] = np.nan
    with pytest.raises(ValueError, match="/weights/out_weight: value nan"):
        m.load_hdf5(tmp_path / "ok.h5")
    wide = make(embed=64, heads=4)
    wide.save_hdf5(tmp_path / "wide.h5")
    with pytest.raises(ValueError, match="wide.h5"):
        m.load_hdf5(tmp_path / "wide.h5")
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(not os.environ.get("PROTEUS_DRIVER"), reason="needs PROTEUS_DRIVER (set by ctest)")
def test_driver_runs_python_weights_and_python_reads_its_checkpoint(tmp_path):
    m = make(embed=64, heads=4, seed=21)
    m.save_hdf5(tmp_path / "python.h5")
    deck = os.path.join(os.path.dirname(__file__), "..", "..", "inputs", "quickstart.in")
    run = subprocess.run([os.environ["PROTEUS_DRIVER"], "-q", deck, "--set", f"checkpoint.weights={tmp_path}/python.h5",
                          "--set", "sequence.tokens=32768", "--set", f"output.directory={tmp_path}/out",
                          "--set", f"checkpoint.directory={tmp_path}/ck"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    checkpoint = sorted(glob.glob(f"{tmp_path}/ck/checkpoint_*.h5"))[-1]
    with h5py.File(checkpoint, "r") as f:
        assert np.array_equal(f["weights/router_weight"][...], m.attention.head_router.linear.weight.detach().cpu())
        final = torch.from_numpy(f["dna_final/prototypes"][...])
    reread = make(embed=64, heads=4, seed=22)
    reread.load_hdf5(checkpoint)
    assert torch.equal(reread.attention.qkv.weight, m.attention.qkv.weight)
    assert not torch.equal(final, m.attention.routing_prototypes.cpu())  # the run's EMA moved its DNA


def test_benchmark_inputs_are_the_cpp_counter_normals():
    """perf/counter_random.py (bench_python's input: bench_module's) reproduces include/proteus/random.hpp:
    a module's initial DNA prototypes are dna_init_scale * standard_normal(seed, 6, g * E + j)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "perf"))
    from counter_random import standard_normal
    for seed in (1, 7, 2**61 + 3):
        m = make(embed=32, heads=4, seed=seed, num_gates=12)
        want = m.attention.routing_prototypes.detach().cpu().to(torch.float64)
        got = standard_normal(seed, 6, want.numel(), device=DEVICE).cpu().to(torch.float64).view_as(want)
        scale = m.config.dna_init_scale
        assert torch.allclose(got * scale, want, rtol=1e-6, atol=1e-9), (seed, (got * scale - want).abs().max())
        assert abs(float(got.mean())) < 0.5 and 0.5 < float(got.std()) < 1.5  # normals, not a shifted copy
