"""Gradients through proteus_kokkos: against an independent float64 PyTorch attention (alpha 0),
central finite differences (sparse routing, router gradient), causality, determinism, batching."""
import pytest
import torch

from conftest import DEVICE, dense_config, inputs, make, reference_attention, scaled_error

PARAMETERS = ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]

# alpha 1 with a shortlist much smaller than the sequence, token sparsity and the router gradient.
SPARSE = {"mode": "linear", "token_sparse": True, "token_keep_ratio": 0.6, "linear_L": 16, "L_min": 4,
          "window": 8, "anchor_stride": 8, "router_gradient": True}


def parameter(module, name):
    return module.attention.get_parameter(name)


@pytest.mark.parametrize("batch_first,batch,tokens", [(True, 1, 33), (True, 2, 40), (False, 2, 17)])
def test_alpha0_equals_plain_causal_attention_with_rope(batch_first, batch, tokens):
    m = make(batch_first=batch_first, **dense_config())
    shape = (batch, tokens, 32) if batch_first else (tokens, batch, 32)
    x = inputs(shape, requires_grad=True)
    y, stats = m(x, x, x)
    assert stats["mode"] == "dense"

    ref = {n: parameter(m, n).detach().double().clone().requires_grad_() for n in PARAMETERS}
    xr = x.detach().double().requires_grad_()
    xb = xr if batch_first else xr.transpose(0, 1)
    yr = reference_attention(xb, ref["qkv.weight"], ref["qkv.bias"], ref["proj.weight"], ref["proj.bias"], 4)
    yr = yr if batch_first else yr.transpose(0, 1)
    assert scaled_error(y, yr) < 1e-5

    w = inputs(shape, seed=1)
    (y * w).sum().backward()
    (yr * w.double()).sum().backward()
    assert scaled_error(x.grad, xr.grad) < 1e-4
    for name in PARAMETERS:
        assert scaled_error(parameter(m, name).grad, ref[name].grad) < 1e-4, name
    assert m.attention.head_router.linear.weight.grad is None  # upstream: routing only selects


def test_without_bias_equals_plain_attention_and_returns_no_bias_gradient():
    m = make(bias=False, **dense_config())
    x = inputs((1, 24, 32), requires_grad=True)
    y, _ = m(x, x, x)
    w_qkv = parameter(m, "qkv.weight").detach().double().clone().requires_grad_()
    w_out = parameter(m, "proj.weight").detach().double().clone().requires_grad_()
    xr = x.detach().double().requires_grad_()
    yr = reference_attention(xr, w_qkv, torch.zeros(96, dtype=torch.float64, device=x.device), w_out,
                             torch.zeros(32, dtype=torch.float64, device=x.device), 4)
    assert scaled_error(y, yr) < 1e-5
    w = inputs((1, 24, 32), seed=1)
    (y * w).sum().backward()
    (yr * w.double()).sum().backward()
    assert scaled_error(x.grad, xr.grad) < 1e-4
    assert scaled_error(parameter(m, "qkv.weight").grad, w_qkv.grad) < 1e-4
    assert scaled_error(parameter(m, "proj.weight").grad, w_out.grad) < 1e-4
    assert m.attention.qkv.bias is None and m.attention.proj.bias is None


def loss_and_selection(m, x, w):
    with torch.no_grad():
        y, stats = m(x, x, x)
    return float((y.double() * w.double()).sum()), (stats["tokens_kept"], stats["active_rows"], stats["mean_candidates"])


# Finite differences need a forward that is smooth around the point. Token sparsity's top-k over
# importance scores (near-uniform at initialisation) swaps tokens under steps of 1e-3, so this case
# keeps every token (the C++ tests check token sparsity's gradients against a reference forward that
# holds the selection fixed: tests/test_backward.cpp), and the step is 0.1% (1% can change which
# heads are active). The router gradient treats the DNA similarity as a constant (docs/training.md:
# a stop-gradient, as upstream's prototypes have none), so this case turns the DNA off to compare x's
# gradient with the true derivative.
SHORTLIST = {**SPARSE, "token_sparse": False, "dna_enable": False}


@pytest.mark.parametrize("config,step", [(dense_config(), 1e-2), (SHORTLIST, 1e-3)],
                         ids=["alpha0", "alpha1_shortlist_router"])
def test_central_finite_differences(config, step):
    """Directional derivatives of L = sum(y * w) along a random direction v, for the input and each
    parameter: (L(t + h v) - L(t - h v)) / 2h against <dL/dt, v>, with h = step * RMS(t) (no
    selection changes: checked). The kernels are float32: L's rounding (~1e-7 relative) divided by
    2h gives up to ~5e-4 relative error at step 1e-3; measured agreement 1e-5 to 7e-4; 2e-3 leaves a
    margin and still catches any wrong or missing term (a missing DNA-path term was 5%)."""
    m = make(**config).eval()  # eval: the DNA stays fixed between evaluations
    x = inputs((2, 96, 32), requires_grad=True)
    w = inputs((2, 96, 32), seed=1)
    y, stats = m(x, x, x)
    if config is SHORTLIST:
        assert stats["mode"] == "shortlist" and stats["mean_candidates"] < 20
    (y * w).sum().backward()
    tensors = {"x": x, **{n: parameter(m, n) for n in PARAMETERS}}
    if config.get("router_gradient"):
        tensors["head_router.linear.weight"] = parameter(m, "head_router.linear.weight")
    _, selection = loss_and_selection(m, x.detach(), w)
    g = torch.Generator().manual_seed(7)
    for name, t in tensors.items():
        v = torch.randn(t.shape, generator=g).to(DEVICE)
        h = step * float(t.detach().square().mean().sqrt())
        with torch.no_grad():
            t.add_(h * v)
            plus, sel_plus = loss_and_selection(m, x.detach(), w)
            t.sub_(2 * h * v)
            minus, sel_minus = loss_and_selection(m, x.detach(), w)
            t.add_(h * v)
        assert sel_plus == selection and sel_minus == selection, f"{name}: the step changed the selection"
        numeric = (plus - minus) / (2 * h)
        analytic = float((t.grad.double() * v.double()).sum())
        assert abs(numeric - analytic) <= 2e-3 * abs(analytic), f"{name}: {numeric} vs {analytic}"


def test_router_gradient_only_when_asked():
    for router_gradient in (False, True):
        m = make(**{**SPARSE, "router_gradient": router_gradient}).eval()
        x = inputs((1, 64, 32), requires_grad=True)
        m(x, x, x)[0].square().sum().backward()
        grad = m.attention.head_router.linear.weight.grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) == router_gradient


def gradients(m, x, dy):
    x = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y, _ = m(x, x, x)
    y.backward(dy)
    return [x.grad] + [p.grad for p in m.parameters() if p.grad is not None]


def test_two_backward_calls_are_bit_identical():
    m = make(**SPARSE).eval()
    x, dy = inputs((2, 80, 32)), inputs((2, 80, 32), seed=2)
    first, second = gradients(m, x, dy), gradients(m, x, dy)
    assert len(first) == 6 and all(torch.equal(a, b) for a, b in zip(first, second))


def test_states_go_round_and_pending_forwards_keep_their_own():
    """A finished backward's state serves the next forward (its copies keep their memory); two
    forwards before their backwards each keep their own, and give each input's gradients alone."""
    m = make(**SPARSE).eval()
    xa, xb = inputs((1, 80, 32)), inputs((1, 80, 32), seed=5)
    dya, dyb = inputs((1, 80, 32), seed=6), inputs((1, 80, 32), seed=7)
    alone = [gradients(m, xa, dya)[0], gradients(m, xb, dyb)[0]]
    spare = m._run.spare
    assert spare is not None
    gradients(m, xa, dya)
    assert m._run.spare[1] is spare[1]
    a, b = xa.clone().requires_grad_(), xb.clone().requires_grad_()
    ya, _ = m(a, a, a)
    yb, _ = m(b, b, b)
    yb.backward(dyb)
    ya.backward(dya)
    assert torch.equal(a.grad, alone[0]) and torch.equal(b.grad, alone[1])


def test_gradients_are_causal():
    """With dL/dy zero from token t0 on, dL/dx is exactly zero from t0 on."""
    m = make(**SPARSE).eval()
    x, dy = inputs((1, 80, 32)), inputs((1, 80, 32), seed=3)
    dy[:, 50:] = 0
    dx = gradients(m, x, dy)[0]
    assert bool((dx[:, 50:] == 0).all()) and bool((dx[:, :50] != 0).any())


def test_batch_gradient_is_the_rows_gradients():
    m = make(**SPARSE).eval()
    x, dy = inputs((2, 72, 32)), inputs((2, 72, 32), seed=4)
    batch = gradients(m, x, dy)
    rows = [gradients(m, x[b:b + 1], dy[b:b + 1]) for b in range(2)]
    # The same selections and sums, in another order: float32 rounding only (measured 1.1e-6).
    assert scaled_error(batch[0], torch.cat([rows[0][0], rows[1][0]])) < 1e-5
    for i in range(1, len(batch)):
        assert scaled_error(batch[i], rows[0][i] + rows[1][i]) < 1e-5


def test_dna_ema_runs_once_per_training_step_and_never_in_eval():
    m = make(**SPARSE)
    dna = lambda: [b.clone() for b in (m.attention.routing_prototypes, m.attention.routing_usage_ema,
                                      m.attention.routing_confidence)]
    x = inputs((1, 64, 32), requires_grad=True)
    before = dna()
    y, _ = m.train()(x, x, x)
    after_forward = dna()
    assert not torch.equal(before[0], after_forward[0])
    y.square().sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(after_forward, dna()))  # backward leaves the DNA alone
    with torch.no_grad():
        m.eval()(x, x, x)
    assert all(torch.equal(a, b) for a, b in zip(after_forward, dna()))
    assert m.attention.routing_prototypes.grad is None and not m.attention.routing_prototypes.requires_grad


def test_statistics_read_after_the_call_equal_those_read_at_once():
    """The module leaves a forward's device statistics to be read when asked (need_weights,
    last_runtime_stats): they equal the compiled module's undeferred call on the same input, in
    inference and through autograd, and last_runtime_stats is the latest call's."""
    config = dict(SPARSE, dna_update=False)
    m = make(**config)
    x = inputs((2, 40, 32), seed=3)
    rows = x.contiguous()
    positions = torch.arange(40, device=x.device, dtype=torch.int64).repeat(2)
    m._bind()
    at_once = m._core.forward(pk_stream(x), rows, 2, positions, torch.empty_like(rows), False, False, False)
    assert at_once["distinct_heads"] > 0 and at_once["router_entropy"] > 0 and at_once["mean_candidates"] > 0
    with torch.no_grad():
        _, asked = m.eval()(x, x, x, need_weights=True)
    assert asked == at_once
    assert m.last_runtime_stats == at_once
    xg = x.clone().requires_grad_()
    y, none = m.train()(xg, xg, xg, need_weights=False)
    assert none is None
    y.sum().backward()
    assert m.last_runtime_stats == at_once
    m(inputs((1, 24, 32), seed=4), need_weights=False)
    assert m.last_runtime_stats["tokens"] == 24 and m.last_runtime_stats["batch"] == 1


def pk_stream(tensor):
    from proteus_kokkos import _runtime
    return _runtime.stream_handle(tensor)


def test_the_benchmarks_cpp_loop_computes_what_autograd_computes():
    """bench_python's in-process C++ loop (Module.time_training_steps, bench_module's calls) gives the
    autograd step's output and gradients bit for bit, so that its timings compare like with like."""
    m = make(embed=32, heads=4, mode="fixed", alpha=1.0, token_sparse=True, dna_update=False)
    x = inputs((1, 40, 32), seed=3, requires_grad=True)
    dy = inputs((1, 40, 32), seed=4)
    y, _ = m(x, x, x, need_weights=False)
    y.backward(dy)
    weights = m.attention.tensors()
    grads = {k: torch.empty_like(weights[k]) for k in
             ("qkv_weight", "qkv_bias", "out_weight", "out_bias", "router_weight")}
    rows = x.detach().view(40, 32)
    y_loop, dx_loop = torch.empty_like(rows), torch.empty_like(rows)
    positions = torch.arange(40, device=DEVICE, dtype=torch.int64)
    from proteus_kokkos import _runtime
    m._bind()
    times = m._core.time_training_steps(_runtime.stream_handle(rows), rows, 1, positions, y_loop, dy.view(40, 32),
                                        dx_loop, grads, 2, False, True)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert torch.equal(y_loop, y.detach().view(40, 32))
    assert torch.equal(dx_loop, x.grad.view(40, 32))
    assert torch.equal(grads["qkv_weight"], m.attention.qkv.weight.grad)
    assert torch.equal(grads["out_weight"], m.attention.proj.weight.grad)


@pytest.mark.parametrize("bf16_config, bound", [
    (dict(kv_bf16=True), 1e-2),
    (dict(bf16_projections=True), 2e-2),
    (dict(bf16_projections=True, kv_bf16=True), 2e-2),
])
def test_bf16_keeps_the_selection_and_fp32s_gradients(bf16_config, bound):
    """kv_bf16: the forward reads K|V rounded to BF16; bf16_projections: the Q/K/V and output GEMMs
    take their operands rounded to BF16. Either way the same work is chosen and the outputs stay
    within BF16 rounding (unit roundoff 2^-9: 1e-2 of the output's norm for one rounding of K|V,
    2e-2 for the three GEMMs' operands), while the backward differentiates the FP32 layer and
    returns FP32's gradients bit for bit."""
    config = dict(SPARSE, router_gradient=False)
    fp32, bf16 = make(**config).eval(), make(**bf16_config, **config).eval()
    x, dy = inputs((2, 300, 32)), inputs((2, 300, 32), seed=3)
    with torch.no_grad():
        y32, _ = fp32(x, x, x)
        y16, _ = bf16(x, x, x)
    s32, s16 = fp32.last_runtime_stats, bf16.last_runtime_stats
    for key in ("tokens_kept", "active_rows", "mean_candidates"):
        assert s32[key] == s16[key], key
    drift = float((y16 - y32).norm() / y32.norm())
    assert 1e-4 < drift < bound
    g32, g16 = gradients(fp32, x, dy), gradients(bf16, x, dy)
    assert len(g32) == len(g16) and all(torch.equal(a, b) for a, b in zip(g32, g16))
