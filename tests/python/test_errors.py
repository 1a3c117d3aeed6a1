"""Bad input raises a Python exception that names the argument; nothing crashes, nothing is copied
to another device."""
import pytest
import torch

import proteus_kokkos as pk
from conftest import DEVICE, inputs, make


@pytest.fixture
def m():
    return make().eval()


def call(m, *args, **kwargs):
    with torch.no_grad():
        return m(*args, **kwargs)


def test_bad_query(m):
    x = inputs((2, 16, 32))
    with pytest.raises(TypeError, match="query: dtype torch.float64"):
        call(m, x.double())
    with pytest.raises(TypeError, match="query: dtype torch.bfloat16"):
        call(m, x.bfloat16())
    with pytest.raises(ValueError, match=r"query: shape \(2, 16, 31\)"):
        call(m, x[..., :31].contiguous())
    with pytest.raises(ValueError, match=r"query: shape \(16, 32\)"):
        call(m, x[0].contiguous())
    with pytest.raises(ValueError, match="query: not contiguous"):
        call(m, x.transpose(0, 1))
    with pytest.raises(TypeError, match="query: expected a torch.Tensor, got list"):
        call(m, [[1.0]])
    bad = x.clone()
    bad[1, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="query: contains 1 NaN or Inf"):
        call(m, bad)


def test_cross_attention_and_masks_are_refused(m):
    x = inputs((1, 16, 32))
    with pytest.raises(ValueError, match="key: cross-attention is not supported"):
        call(m, x, x.clone(), x)
    with pytest.raises(ValueError, match="value: cross-attention"):
        call(m, x, x, x.clone())
    with pytest.raises(ValueError, match="attn_mask: only the standard causal mask"):
        call(m, x, attn_mask=torch.zeros(16, 16, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="is_causal=False"):
        call(m, x, is_causal=False)
    with pytest.raises(ValueError, match=r"key_padding_mask: expected a tensor of shape \(1, 16\)"):
        call(m, x, key_padding_mask=torch.zeros(1, 15, dtype=torch.bool, device=DEVICE))
    with pytest.raises(TypeError, match="key_padding_mask: dtype torch.int32"):
        call(m, x, key_padding_mask=torch.zeros(1, 16, dtype=torch.int32, device=DEVICE))


def test_the_standard_causal_masks_are_accepted(m):
    x = inputs((1, 16, 32))
    causal = torch.triu(torch.ones(16, 16, dtype=torch.bool, device=DEVICE), 1)
    additive = torch.zeros(16, 16, device=DEVICE).masked_fill(causal, float("-inf"))
    y, _ = call(m, x)
    assert torch.equal(call(m, x, attn_mask=causal)[0], y)
    assert torch.equal(call(m, x, attn_mask=additive[None])[0], y)


def test_parameters_on_another_device_or_dtype_are_refused(m):
    x = inputs((1, 16, 32))
    m.attention.proj.weight.data = m.attention.proj.weight.data.double()
    with pytest.raises(TypeError, match="attention.proj.weight: dtype torch.float64, expected torch.float32"):
        call(m, x)
    if pk.device() == "cpu" and torch.cuda.is_available():
        with pytest.raises(ValueError, match="tensor on cuda"):
            call(m.float().cuda(), x.cuda())


def test_weights_are_rechecked_whenever_their_storage_or_layout_changes(m):
    """The module skips re-checking tensors it has bound already; any new storage, shape or strides
    (and new values in place) must still reach the kernels or be refused."""
    x = inputs((1, 16, 32))
    y0, _ = call(m, x)
    w = m.attention.proj.weight
    with torch.no_grad():
        w.mul_(2.0)  # same storage, new values: read in place
    y1, _ = call(m, x)
    assert not torch.equal(y1, y0)
    twin = make().eval()
    twin.load_state_dict(m.state_dict())
    assert torch.equal(call(twin, x)[0], y1)
    w.data = w.data.clone() / 2.0  # new storage
    assert torch.equal(call(m, x)[0], y0)
    w.data = w.data.t()  # the same storage and shape (E x E), transposed strides
    with pytest.raises(ValueError, match="attention.proj.weight: not contiguous"):
        call(m, x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="dropout=0.1"):
        pk.CausalGeneticMultiheadAttention(32, 4, dropout=0.1)
    with pytest.raises(ValueError, match="kdim=16"):
        pk.CausalGeneticMultiheadAttention(32, 4, kdim=16)
    with pytest.raises(ValueError, match="add_bias_kv=True"):
        pk.CausalGeneticMultiheadAttention(32, 4, add_bias_kv=True)
    with pytest.raises(TypeError, match="dtype=torch.float16"):
        pk.CausalGeneticMultiheadAttention(32, 4, dtype=torch.float16)
    with pytest.raises(TypeError, match="unknown keyword argument 'attn_linear_L'"):
        pk.CausalGeneticMultiheadAttention(32, 4, attn_linear_L=64)
    with pytest.raises(ValueError, match="num_heads"):
        pk.CausalGeneticMultiheadAttention(30, 4)
    with pytest.raises(ValueError, match="mode"):
        pk.CausalGeneticMultiheadAttention(32, 4, mode="sideways")
    with pytest.raises(TypeError):
        pk.CausalGeneticMultiheadAttention(32, 4, alpha="high")


def test_backward_errors_name_their_tensor():
    m = make().eval()
    x = inputs((1, 16, 32), requires_grad=True)
    y, _ = m(x, x, x)
    dy = torch.ones_like(y)
    dy[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="dy: contains 1 NaN or Inf"):
        y.backward(dy)
    # The backward reads the forward's input in place: changing it in between is caught by autograd.
    h = x * 1.0
    y, _ = m(h, h, h)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
