"""The pure GDA math of lightning_wass.functional.worst_case, checked against autograd and torch.optim references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_wass.nn.transport_map import ResidualTransportMap
from lightning_wass.functional.worst_case import (
    ascent_direction,
    cross_entropy_per_sample,
    gradient_norms,
    heavy_ball_ascent,
    linear_regression_worst_case,
    mse_per_sample,
    resolve_loss,
    robust_linear_regression,
)


def _regression(n: int = 64, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.linspace(0.5, -0.3, d, dtype=torch.float64) + 0.4 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def test_closed_form_worst_case_is_the_inner_maximiser() -> None:
    x, y = _regression()
    w, b, gamma = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), 0.25, 0.7
    v = linear_regression_worst_case(x, y, w, b, gamma).requires_grad_(True)
    # stationarity of loss(v) - ||v - x||^2 / (2 gamma) for every sample, by autograd
    objective = ((v @ w + b - y) ** 2 - ((v - x) ** 2).sum(1) / (2 * gamma)).sum()
    (grad,) = torch.autograd.grad(objective, v)
    assert grad.abs().max() < 1e-12
    # and it is a maximum: perturbations lower the objective (concave since 2 gamma ||w||^2 < 1)
    with torch.no_grad():
        for _ in range(5):
            u = v + 0.1 * torch.randn_like(v)
            assert ((u @ w + b - y) ** 2 - ((u - x) ** 2).sum(1) / (2 * gamma)).sum() < objective


def test_closed_form_refuses_an_unbounded_inner_problem() -> None:
    x, y = _regression()
    with pytest.raises(ValueError, match="unbounded"):
        linear_regression_worst_case(x, y, torch.ones(3, dtype=torch.float64), 0.0, gamma=1.0)


def test_robust_linear_regression_is_a_saddle_point() -> None:
    x, y = _regression(d=2)
    gamma = 0.4
    w, b = robust_linear_regression(x, y, gamma)
    v = linear_regression_worst_case(x, y, w, b, gamma)
    # the model's gradient at the worst case vanishes (the outer first-order condition)
    theta = torch.cat([w, b.reshape(1)]).requires_grad_(True)
    loss = ((v @ theta[:2] + theta[2] - y) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, theta)
    assert grad.abs().max() < 1e-10
    # robustness shrinks the slope relative to least squares
    w_ls = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), y[:, None]).solution[:2, 0]
    assert w.norm() < w_ls.norm()


def test_heavy_ball_ascent_is_sgd_momentum_uphill() -> None:
    g = torch.Generator().manual_seed(1)
    v0 = torch.randn(5, 2, generator=g)
    directions = [torch.randn(5, 2, generator=g) for _ in range(4)]
    param = nn.Parameter(v0.clone())
    sgd = torch.optim.SGD([param], lr=0.1, momentum=0.7, dampening=0)
    v, buf = v0.clone(), torch.zeros_like(v0)
    for d in directions:
        param.grad = -d  # descent on -objective == ascent on the objective
        sgd.step()
        v, buf = heavy_ball_ascent(v, buf, d, 0.1, 0.7)
    torch.testing.assert_close(v, param.detach(), rtol=0, atol=1e-6)


def test_gradient_norms_match_a_per_sample_reference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x, y = _regression(n=50, d=2)
    v = x + 0.1 * torch.randn_like(x)
    gamma, wd = 0.5, 0.01
    params = list(model.parameters())
    got = gradient_norms(model, mse_per_sample, v, x, y, gamma, parameters=params, weight_decay=wd, chunk_size=7)
    # reference: full-batch autograd of the objective, one sample at a time for d/dv
    mean_loss = ((model(v).squeeze(1) - y) ** 2).mean()
    grads = torch.autograd.grad(mean_loss, params)
    gn_theta = torch.sqrt(sum(((g + wd * p) ** 2).sum() for g, p in zip(grads, params)))
    squares = []
    for i in range(len(v)):
        vi = v[i : i + 1].clone().requires_grad_(True)
        (gv,) = torch.autograd.grad(((model(vi).squeeze(1) - y[i : i + 1]) ** 2).sum(), vi)
        squares.append(((gv - (vi.detach() - x[i : i + 1]) / gamma) ** 2).sum())
    gn_t = torch.sqrt(torch.stack(squares).mean())
    torch.testing.assert_close(got["gn_theta"], gn_theta, rtol=1e-10, atol=0)
    torch.testing.assert_close(got["gn_T"], gn_t, rtol=1e-10, atol=0)
    # sharded evaluation + a sum reduce gives the same numbers
    shards = [gradient_norms(model, mse_per_sample, v, x, y, gamma, parameters=params, rows=slice(r, None, 3), total=50, reduce=lambda t: t) for r in range(3)]
    assert all("gn_T" in s for s in shards)
    # the shards partition the particles: their squared GN_T add up to the full one
    torch.testing.assert_close(sum(s["gn_T"] ** 2 for s in shards), got["gn_T"] ** 2, rtol=1e-10, atol=0)
    # and their summed (flat) gradient vectors, all-reduced as under DDP, give the full GN_theta
    flats: list[torch.Tensor] = []
    for r in range(3):
        gradient_norms(model, mse_per_sample, v, x, y, gamma, parameters=params, rows=slice(r, None, 3), total=50, reduce=lambda t: flats.append(t.clone()) or t)
    summed = torch.stack(flats).sum(0)
    full_flat: list[torch.Tensor] = []
    gradient_norms(model, mse_per_sample, v, x, y, gamma, parameters=params, reduce=lambda t: full_flat.append(t.clone()) or t)
    torch.testing.assert_close(summed, full_flat[0], rtol=1e-10, atol=1e-14)
    reduced = [gradient_norms(model, mse_per_sample, v, x, y, gamma, parameters=params, weight_decay=wd, rows=slice(r, None, 3), total=50, reduce=lambda t: summed) for r in range(3)]
    for s in reduced:
        torch.testing.assert_close(s["gn_theta"], got["gn_theta"], rtol=1e-10, atol=0)
        torch.testing.assert_close(s["gn_T"], got["gn_T"], rtol=1e-10, atol=0)
    frozen = gradient_norms(model, mse_per_sample, v, x, y, gamma)
    assert set(frozen) == {"gn_T"}


def test_ascent_direction_is_the_gradient_of_the_penalised_objective() -> None:
    x, y = _regression(n=10, d=2)
    w = torch.tensor([0.5, 0.2], dtype=torch.float64)
    v = (x + 0.3).requires_grad_(True)
    gamma = 0.8
    objective = ((v @ w - y) ** 2 - ((v - x) ** 2).sum(1) / (2 * gamma)).sum()
    (reference,) = torch.autograd.grad(objective, v)
    grad_v = 2 * (v.detach() @ w - y)[:, None] * w
    torch.testing.assert_close(ascent_direction(grad_v, v.detach(), x, gamma), reference)


def test_losses_name_what_does_not_fit() -> None:
    out = torch.randn(4, 1)
    assert mse_per_sample(out, torch.randn(4)).shape == (4,)
    with pytest.raises(ValueError, match="does not fit targets"):
        mse_per_sample(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="float targets"):
        mse_per_sample(out, torch.arange(4))
    with pytest.raises(ValueError, match="num_classes"):
        cross_entropy_per_sample(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match="integer labels"):
        cross_entropy_per_sample(torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match="loss must be one of"):
        resolve_loss("hinge")


def test_residual_transport_map_starts_as_identity_and_checks_conditions() -> None:
    x = torch.randn(6, 1, 2, 2)
    assert torch.equal(ResidualTransportMap(4, hidden=(8,))(x), x)
    labelled = ResidualTransportMap(4, hidden=(8,), num_classes=3)
    assert torch.equal(labelled(x, torch.tensor([0, 1, 2, 0, 1, 2])), x)
    with pytest.raises(ValueError, match="label-conditioned"):
        labelled(x)
    regression = ResidualTransportMap(4, hidden=(8,), target_features=1)
    assert torch.equal(regression(x, torch.randn(6)), x)
    with pytest.raises(ValueError, match="float"):
        regression(x, torch.arange(6))
    with pytest.raises(ValueError, match="at most one"):
        ResidualTransportMap(4, num_classes=3, target_features=1)
