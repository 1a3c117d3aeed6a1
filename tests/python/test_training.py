"""A proteus layer learns through PyTorch's optimiser (AdamW), in the sparse (shortlist) regime."""
import torch

from conftest import DEVICE, make


def test_sparse_layer_learns_to_copy_the_previous_token():
    """Target y_t = x_{t-1}: attention must find the previous token (in the local window) and the
    value/output projections must become the identity. Alpha 1 with about 6 candidates per query out
    of 32 tokens; AdamW for 300 steps on fresh data each step. Measured on the CPU build:
    0.98 -> 0.0026 (385x) in under a second; required: 50x."""
    torch.manual_seed(0)
    m = make(embed=16, heads=2, mode="linear", linear_L=8, L_min=4, window=4, anchor_stride=8).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(300):
        x = torch.randn(8, 32, 16, generator=g).to(DEVICE)
        target = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        y, stats = m(x, x, x)
        loss = (y - target)[:, 1:].square().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert stats["mode"] == "shortlist" and stats["mean_candidates"] < 8
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first / 50, (first, last)


def test_head_controller_learns_in_training_mode_only():
    """The sparse-head controller (C++ decisions tested in tests/test_head_controller.cpp) through
    the extension: eval forwards leave it alone; two training forwards with a density far above the
    target lower the head range by one and the shortlist by x0.8."""
    m = make(embed=32, heads=8, mode="fixed", alpha=1.0, linear_head_k=4, force_dense_threshold=0.0,
             head_controller=True, head_target_density=0.05, head_cooldown=2, seq_low=128, seq_high=512,
             linear_L=100)
    x = torch.randn(1, 96, 32, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.no_grad():
        m.eval()
        for _ in range(4):
            assert m(x)[1]["controller"] is None
        assert m.config.heads_active_max == 8
        m.train()
        first = m(x)[1]
        second = m(x)[1]
    assert first["controller"] is None and first["max_head_density"] > 0.3
    assert second["controller"]["action"] == "decrease" and second["controller"]["heads_max"] == 7
    assert m.config.heads_active_max == 7 and m.config.linear_L == 80
