"""Smoke tests of examples/train_sliding_ctx.py on a tiny model (CPU in CI): the loss and the
validation bits per byte fall, a run stopped and resumed ends bit for bit where an uninterrupted
run ends, DNA dumps and HDF5 layers are written, and the corpus refuses a file that is not pinned."""
import json
import os
import subprocess
import sys

import h5py
import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)
import corpus  # noqa: E402

TINY = ["--steps", "60", "--phases", "32:0.7:8,64:0.2:4,128:0.1:2", "--d-model", "32", "--layers", "2",
        "--heads", "4", "--lr", "3e-3", "--eval-every", "20", "--log-every", "10", "--dna-every", "10",
        "--checkpoint-every", "30"]

pytestmark = pytest.mark.skipif(not os.path.exists(corpus.ROOT + "/os.py"), reason="needs CPython 3.11's sources")


def train(out, *extra, attention="proteus"):
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_sliding_ctx.py"), "--attention", attention,
                          *TINY, "--out", str(out), *extra], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f), run.stdout


def evals(summary):
    return [r for r in summary["log"] if r["kind"] == "eval"]


def test_proteus_run_learns_and_writes_its_files(tmp_path):
    summary, stdout = train(tmp_path)
    assert summary["steps"] == 60 and summary["tokens"] == 42 * 8 * 32 + 12 * 4 * 64 + 6 * 2 * 128
    assert "tokens/s ETA" in stdout
    first, last = evals(summary)[0], evals(summary)[-1]
    for context in (32, 64, 128):  # measured: 5.0 -> 4.36, 5.3 -> 4.59, 5.2 -> 4.50
        assert last[f"val_bpb_{context}"] < first[f"val_bpb_{context}"] - 0.3
    for layer in (0, 1):
        with h5py.File(tmp_path / f"dna_layer{layer}.h5", "r") as f:
            assert f["prototypes"].shape == (6, 16, 32) and list(f["tokens_seen"][...])[-1] == summary["tokens"]
        with h5py.File(tmp_path / f"attention_layer{layer}.h5", "r") as f:
            assert f["weights/qkv_weight"].shape == (96, 32)


def test_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole, _ = train(tmp_path / "whole")
    stopped, stdout = train(tmp_path / "resumed", "--max-minutes", "1e-9")
    assert stopped["steps"] == 1 and "resume with --resume" in stdout
    resumed, stdout = train(tmp_path / "resumed", "--resume")
    assert "resumed from" in stdout and resumed["steps"] == 60
    assert evals(resumed)[-1] == evals(whole)[-1]  # same batches, weights, optimiser state and DNA


def test_dense_baseline_learns(tmp_path):
    summary, _ = train(tmp_path, attention="dense")
    first, last = evals(summary)[0], evals(summary)[-1]
    assert last["val_bpb_128"] < first["val_bpb_128"] - 0.3
    assert not list(tmp_path.glob("dna_layer*.h5"))


def test_dense_rope_baseline_is_causal_attention_with_proteus_rope():
    """The dense-rope baseline's attention equals conftest's independent causal attention with RoPE
    (the rotation proteus applies) in double precision."""
    import train_sliding_ctx as script
    from conftest import reference_attention
    torch.manual_seed(3)
    attention = script.DenseAttention(32, 4, rope=True).double()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    m = attention.mha
    ref = reference_attention(x, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias, 4)
    assert torch.allclose(attention(x), ref, rtol=1e-10, atol=1e-12)
    plain = script.DenseAttention(32, 4).double()
    plain.load_state_dict(attention.state_dict())
    assert not torch.allclose(plain(x), ref, atol=1e-3)  # the rotation changes the result


def test_proteus_option_sets_config_fields():
    """--proteus KEY=VALUE reaches proteus::Config over the curriculum's knobs; a bad key or value
    stops the script with an error naming it."""
    import train_sliding_ctx as script
    args = script.arguments(["--attention", "proteus", "--out", "x", "--proteus", "linear_head_k=8",
                             "--proteus", "token_sparse=False", "--proteus", "mode=fixed"])
    assert args.proteus_config == {"linear_head_k": 8, "token_sparse": False, "mode": "fixed"}
    layer = script.ProteusAttention(32, 4, 1, args, [64, 128]).attn
    assert (layer.config.linear_head_k, layer.config.token_sparse, layer.config.mode) == (8, False, "fixed")
    assert layer.config.force_dense_threshold == pytest.approx(0.25)  # the curriculum's knob stays
    for bad, named in (("nonsense=1", "nonsense"), ("linear_head_k=0", "linear_head_k"),
                       ("linear_head_k=abc", "--proteus")):
        with pytest.raises(SystemExit, match=named):
            script.ProteusAttention(32, 4, 1, script.arguments(["--attention", "proteus", "--out", "x",
                                                                "--proteus", bad]), [64, 128])
    with pytest.raises(SystemExit):
        script.arguments(["--attention", "proteus", "--out", "x", "--proteus", "no_equals_sign"])


def test_corpus_refuses_files_that_differ_from_the_manifest(tmp_path):
    entries = corpus.read_manifest()
    assert len(entries) == 682
    bad = tmp_path / "bad.sha256"
    digest, name = entries[5]
    bad.write_text("".join(f"{'0' * 64 if i == 5 else d}  {n}\n" for i, (d, n) in enumerate(entries)))
    with pytest.raises(corpus.CorpusError, match=f"{name}: SHA-256 differs"):
        corpus.load(manifest=str(bad))
    train_bytes, validation = corpus.load()
    assert train_bytes.size > 10_000_000 and 500_000 < validation.size < 2_000_000


def test_data_parallel_over_two_processes(tmp_path):
    """The torchrun path (distributed data parallel) with two CPU processes over gloo: both finish,
    rank 0 alone writes the results, and the global batch is split between the ranks."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), WORLD_SIZE="2")
    runs = [subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "train_sliding_ctx.py"), "--attention", "proteus",
                              *TINY[:2], "--phases", "32:0.7:8,64:0.3:4", *TINY[4:], "--out", str(tmp_path)],
                             env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [r.communicate(timeout=600) for r in runs]
    assert all(r.returncode == 0 for r in runs), [o[1][-2000:] for o in outputs]
    assert outputs[1][0] == ""  # only rank 0 reports
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert summary["steps"] == 60 and summary["tokens"] == 42 * 8 * 32 + 18 * 4 * 64
