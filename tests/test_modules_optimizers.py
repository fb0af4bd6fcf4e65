"""The modules' optimizers: torch's fused kernels where supported, with the documented update rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lightning_wass import W2GradientFlow, WGAN, WorstCaseGenerator
from lightning_wass.modules.optimizers import build_optimizer, supports_fused
from lightning_wass.nn import MLP, ResidualTransportMap


def _parameter(seed: int, n: int = 64) -> nn.Parameter:
    return nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(seed)))


def _gradients(steps: int, n: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(n, generator=g) for _ in range(steps)]


def test_adam_and_sgd_get_the_fused_kernel_rmsprop_its_default() -> None:
    p = _parameter(0)
    assert build_optimizer(torch.optim.Adam, [p], lr=1e-3).param_groups[0]["fused"] is True
    assert build_optimizer(torch.optim.SGD, [p], lr=1e-2, momentum=0.9).param_groups[0]["fused"] is True
    rmsprop = build_optimizer(torch.optim.RMSprop, [p], lr=1e-3)
    assert "fused" not in rmsprop.param_groups[0]  # RMSprop has no fused kernel: built as torch builds it


def test_an_explicit_choice_stands_and_unsupported_parameters_get_the_default() -> None:
    p = _parameter(0)
    assert build_optimizer(torch.optim.Adam, [p], lr=1e-3, fused=False).param_groups[0]["fused"] is False
    assert not supports_fused(torch.optim.Adam, [])
    integer = torch.zeros(3, dtype=torch.long)
    assert not supports_fused(torch.optim.Adam, [p, integer])


def test_fused_adam_follows_the_documented_adam_rule() -> None:
    """Kingma & Ba: m <- b1 m + (1-b1) g, v <- b2 v + (1-b2) g^2, theta <- theta - lr m_hat / (sqrt(v_hat) + eps)."""
    lr, (b1, b2), eps = 1e-2, (0.5, 0.9), 1e-8
    p = _parameter(1)
    theta = p.detach().clone().double()
    optimizer = build_optimizer(torch.optim.Adam, [p], lr=lr, betas=(b1, b2))
    assert optimizer.param_groups[0]["fused"] is True
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t, g in enumerate(_gradients(20), start=1):
        p.grad = g.clone()
        optimizer.step()
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(p.detach().double(), theta, rtol=0, atol=1e-6)


def test_fused_sgd_is_the_default_sgd_bit_for_bit() -> None:
    """Heavy ball b <- mu b + g (b = g at the first step), theta <- theta - lr b: the fused kernel
    gives exactly the default implementation's iterates."""
    fused, default = _parameter(2), _parameter(2)
    optimizers = [
        build_optimizer(torch.optim.SGD, [fused], lr=0.05, momentum=0.7, weight_decay=1e-3),
        torch.optim.SGD([default], lr=0.05, momentum=0.7, weight_decay=1e-3),
    ]
    assert optimizers[0].param_groups[0]["fused"] is True
    for g in _gradients(15):
        fused.grad, default.grad = g.clone(), g.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert torch.equal(fused, default)


def test_resuming_a_state_written_by_the_default_adam() -> None:
    """A checkpoint from before the fused kernel (default Adam's state dict) loads and trains on
    to the iterates the default Adam reaches."""
    before, after = _parameter(3), _parameter(3)
    old = torch.optim.Adam([before], lr=1e-2)
    gradients = _gradients(10)
    for g in gradients[:5]:
        before.grad = g.clone()
        old.step()
    with torch.no_grad():
        after.copy_(before)
    new = build_optimizer(torch.optim.Adam, [after], lr=1e-2)
    new.load_state_dict(copy.deepcopy(old.state_dict()))  # as torch.load gives it
    for g in gradients[5:]:
        before.grad, after.grad = g.clone(), g.clone()
        old.step()
        new.step()
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert math.isfinite(float(after.sum()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: WGAN(data_shape=(2,)),
        lambda: W2GradientFlow(data_shape=(2,)),
        lambda: WorstCaseGenerator(
            MLP(2, 3, hidden=(8,)), num_particles=10, gamma=1.0, transport_map=ResidualTransportMap(2, hidden=(8,))
        ),
    ],
    ids=["wgan", "w2_gradient_flow", "worst_case"],
)
def test_modules_build_fused_optimizers_on_cpu(make) -> None:
    module = make()
    optimizers = module.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    assert optimizers and all(opt.param_groups[0].get("fused") is True for opt in optimizers)


def test_adam_on_cpu_skips_the_capture_check_and_keeps_it_elsewhere(monkeypatch) -> None:
    """torch's Adam asks ``torch.accelerator.current_accelerator`` on every step (an NVML probe once
    Lightning is imported); ours skips it while the parameters are on the CPU, not on other devices."""
    calls = []
    real = torch.accelerator.current_accelerator

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.accelerator, "current_accelerator", counting)
    plain, ours = _parameter(4), _parameter(4)
    plain.grad, ours.grad = torch.ones(64), torch.ones(64)
    torch.optim.Adam([plain], lr=1e-3).step()
    assert calls, "torch's Adam no longer runs the capture check: the skip has nothing to skip"
    calls.clear()
    built = build_optimizer(torch.optim.Adam, [ours], lr=1e-3)
    built.step()
    assert not calls
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-7)  # the same first Adam step
    elsewhere = build_optimizer(torch.optim.Adam, [nn.Parameter(torch.zeros(3, device="meta"))], lr=1e-3)
    assert "fused" not in elsewhere.defaults or not elsewhere.param_groups[0]["fused"]  # no fused kernel on meta
    elsewhere._accelerator_graph_capture_health_check()
    assert calls  # not on the CPU: torch's check runs
