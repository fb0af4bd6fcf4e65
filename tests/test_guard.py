"""``lightning_wass.guard.UpdateGuard`` on its own: what a failed step puts back, and the update
bound computed against a reference written here from its documented rule
``||theta' - theta|| <= r max(||theta||, 1)``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_wass import DivergenceError
from lightning_wass.guard import UpdateGuard


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    model(torch.randn(8, 3)).pow(2).mean().backward()
    optimizer.step()


def test_a_failed_step_puts_back_parameters_state_and_every_buffer_including_the_batch_counter():
    model = _model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = UpdateGuard(max_update_ratio=10.0)
    with guard.step("step 1", owner=model) as check:
        check.update("model", optimizer, "lower lr")
        _sgd_step(model, optimizer, 0.1)
    params = [p.detach().clone() for p in model.parameters()]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    momenta = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with pytest.raises(DivergenceError, match="model's update in step 2 moved its parameters .* lower lr"):
        with guard.step("step 2", owner=model) as check:
            check.update("model", optimizer, "lower lr")
            _sgd_step(model, optimizer, 1e9)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(b, dict(model.named_buffers())[name]) for name, b in buffers.items())
    assert int(model[1].num_batches_tracked) == 1  # the failed step's forward counted a second batch
    assert all(torch.equal(m, optimizer.state[p]["momentum_buffer"]) for m, p in zip(momenta, model.parameters()))


@pytest.mark.parametrize("lr, fails", [(0.5, False), (200.0, True)])
def test_the_update_bound_follows_its_documented_rule(lr, fails):
    model = _model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    reference = _model().train()
    reference.load_state_dict(model.state_dict())
    ref_opt = torch.optim.SGD(reference.parameters(), lr=lr)
    torch.manual_seed(2)
    _sgd_step(reference, ref_opt, lr)
    moved = torch.cat([(a - b).flatten() for a, b in zip(reference.parameters(), before)]).norm()
    ratio = float(moved / max(float(torch.cat([b.flatten() for b in before]).norm()), 1.0))
    bound = 2.0
    assert (ratio > bound) == fails  # the two cases straddle the bound
    guard = UpdateGuard(max_update_ratio=bound)
    torch.manual_seed(2)
    if fails:
        with pytest.raises(DivergenceError, match=f"moved its parameters {ratio:.3g} times their norm"):
            with guard.step("step 1", owner=model) as check:
                check.update("model", optimizer, "lower lr")
                _sgd_step(model, optimizer, lr)
    else:
        with guard.step("step 1", owner=model) as check:
            check.update("model", optimizer, "lower lr")
            _sgd_step(model, optimizer, lr)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_non_finite_parameters_are_named():
    model = _model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DivergenceError, match="model's parameters became non-finite .* step 1"):
        with UpdateGuard(max_update_ratio=None).step("step 1", owner=model) as check:
            check.update("model", optimizer, "lower lr")
            _sgd_step(model, optimizer, float("inf"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
