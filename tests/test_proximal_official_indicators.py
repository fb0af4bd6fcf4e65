"""The official code's indicator conventions and the path straightness, against hand computations.

The reference formulas are written out here from ``POT_Flow_GAN.py`` (``generator``,
``running_cost``, ``loss_terminal``), independently of ``lightning_wass.functional.proximal_flow.indicators``: for
the quadratic potential ``U(x, t) = a(t) ||x||^2 / 2 + b.x`` with ``a(t) = a0 + a1 t`` the gradient
is ``a(t) x + b`` and the time derivative ``a1 ||x||^2 / 2``, and the Euler rollout
``x_{k+1} = x_k - dt (a(t_k) x_k + b) / alpha`` is done by hand in numpy. The official code
evaluates its running terms at ``(x_{k+1}, t_k)`` (after the step, with the step's time).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_wass import TensorDataModule, W1W2ProximalFlow
from lightning_wass.nn.potentials import MLPDiscriminator, PotentialMLP
from lightning_wass.functional.proximal_flow import (
    euler_rollout,
    hj_residual,
    hj_residual_official,
    kinetic_energy,
    kinetic_energy_official,
    median_path_straightness,
    path_straightness,
    terminal_error,
    terminal_error_official,
)

A0, A1, ALPHA, T, K = 0.3, -0.4, 0.5, 1.0, 5
B = np.array([0.7, -0.2])


class Quadratic(nn.Module):
    """``U(x, t) = (a0 + a1 t) ||x||^2 / 2 + b.x`` (optionally ``+ c(t)``)."""

    def __init__(self, a0: float = A0, a1: float = A1, b: np.ndarray = B, gauge: float = 0.0) -> None:
        super().__init__()
        self.a0, self.a1, self.gauge = a0, a1, gauge
        self.b = torch.tensor(b, dtype=torch.float64)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = self.a0 + self.a1 * t
        return a * x.pow(2).sum(1) / 2.0 + x @ self.b + self.gauge * t**2


class QuadraticDiscriminator(nn.Module):
    """``phi(x) = c ||x||^2 / 2 + w.x``: ``grad phi = c x + w``."""

    def __init__(self, c: float, w: np.ndarray) -> None:
        super().__init__()
        self.c, self.w = c, torch.tensor(w, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return self.c * x.pow(2).sum(1) / 2.0 + x @ self.w


@pytest.fixture(autouse=True)
def _double_precision():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _x0(n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2))


def _hand_rollout(x0: np.ndarray) -> tuple[list[np.ndarray], list[float], float]:
    dt = T / K
    xs, ts = [x0], []
    for k in range(K):
        t = k * dt
        xs.append(xs[-1] - dt * ((A0 + A1 * t) * xs[-1] + B) / ALPHA)
        ts.append(t)
    return xs, ts, dt


def _rollout(x0: np.ndarray):
    return euler_rollout(Quadratic(), torch.tensor(x0), T, K, ALPHA)


def test_rollout_matches_the_hand_rollout() -> None:
    x0 = _x0()
    xs, ts, _ = _hand_rollout(x0)
    roll = _rollout(x0)
    assert roll.times == pytest.approx(ts)
    for ours, hand in zip(roll.states, xs):
        np.testing.assert_allclose(ours.numpy(), hand, atol=1e-12)


def test_official_kinetic_energy_by_hand() -> None:
    x0 = _x0()
    xs, ts, dt = _hand_rollout(x0)
    n = x0.shape[0]
    # sum_k dt * sum(square(grad_U / alpha)) / (2 N) with grad_U at (x_{k+1}, t_k)
    official = sum(dt * np.sum((((A0 + A1 * t) * x + B) / ALPHA) ** 2) / (2 * n) for x, t in zip(xs[1:], ts))
    ours_points = sum(dt * np.sum((((A0 + A1 * t) * x + B) / ALPHA) ** 2) / (2 * n) for x, t in zip(xs[:-1], ts))
    roll = _rollout(x0)
    got = float(kinetic_energy_official(Quadratic(), roll.states, roll.times, roll.dt, ALPHA))
    assert got == pytest.approx(official, rel=1e-6)
    # our kinetic energy is the same formula at (x_k, t_k), and the two differ here
    assert float(kinetic_energy(roll.gradients, roll.dt, ALPHA)) == pytest.approx(ours_points, rel=1e-6)
    assert abs(official - ours_points) > 0.01 * official


def test_official_hj_residual_by_hand() -> None:
    x0 = _x0()
    xs, ts, dt = _hand_rollout(x0)

    def res(x: np.ndarray, t: float, sign: float) -> np.ndarray:
        d_t = A1 * np.sum(x**2, axis=1) / 2.0
        grad2 = np.sum(((A0 + A1 * t) * x + B) ** 2, axis=1)
        return d_t + sign * grad2 / (2 * ALPHA)

    # official: sum_k dt * mean |dU/dt + ||grad U||^2 / (2 alpha)| at (x_{k+1}, t_k)
    official = sum(dt * np.mean(np.abs(res(x, t, +1.0))) for x, t in zip(xs[1:], ts))
    roll = _rollout(x0)
    got = float(hj_residual_official(Quadratic(), roll.states, roll.times, roll.dt, ALPHA))
    assert got == pytest.approx(official, rel=1e-6)
    # ours: the "-" sign at (x_k, t_k), centred per step
    ours = sum(dt * np.mean(np.abs(r - r.mean())) for r in (res(x, t, -1.0) for x, t in zip(xs[:-1], ts)))
    assert float(hj_residual(Quadratic(), roll.states, roll.times, roll.dt, ALPHA)) == pytest.approx(ours, rel=1e-6)
    # the official evaluation points matter: the same "+" formula at (x_k, t_k) is another number
    at_xk = sum(dt * np.mean(np.abs(res(x, t, +1.0))) for x, t in zip(xs[:-1], ts))
    assert abs(at_xk - official) > 0.01 * official
    # no centring: the gauge U + g t^2 (the same flow) moves the official residual but not ours
    gauged = Quadratic(gauge=5.0)
    assert float(hj_residual_official(gauged, roll.states, roll.times, roll.dt, ALPHA)) != pytest.approx(got, rel=1e-3)
    assert float(hj_residual(gauged, roll.states, roll.times, roll.dt, ALPHA)) == pytest.approx(ours, rel=1e-9)


def test_the_signs() -> None:
    # U+ = alpha ||x||^2 / (2 (t + c)) solves the official equation d_t U + ||grad U||^2 / (2 alpha) = 0
    # everywhere; U- = -U+ solves ours, d_t U - ||grad U||^2 / (2 alpha) = 0. Each residual vanishes
    # exactly for its own equation (at any evaluation points) and not for the other one.
    c = 1.5

    def u_plus(x: Tensor, t: Tensor) -> Tensor:
        return ALPHA * x.pow(2).sum(1) / (2.0 * (t + c))

    def u_minus(x: Tensor, t: Tensor) -> Tensor:
        return -u_plus(x, t)

    x0 = torch.tensor(_x0())
    for u, official_zero in ((u_plus, True), (u_minus, False)):
        roll = euler_rollout(u, x0, T, K, ALPHA)
        official = float(hj_residual_official(u, roll.states, roll.times, roll.dt, ALPHA))
        ours = float(hj_residual(u, roll.states, roll.times, roll.dt, ALPHA, center=False))
        if official_zero:
            assert official < 1e-12 and ours > 0.05
        else:
            assert ours < 1e-12 and official > 0.05


def test_official_terminal_error_by_hand_and_its_normalisation() -> None:
    x0 = _x0()
    xs, _, _ = _hand_rollout(x0)
    x_T = xs[-1]
    n = x_T.shape[0]
    a_T = A0 + A1 * T
    roll = _rollout(x0)
    # general discriminator: sqrt(sum_i ||grad phi - grad U(., T)||^2) / N, no alpha
    c, w = 0.9, np.array([-0.3, 0.4])
    delta = (c * x_T + w) - (a_T * x_T + B)
    official = math.sqrt(np.sum(delta**2)) / n
    phi = QuadraticDiscriminator(c, w)
    got = float(terminal_error_official(Quadratic(), phi, roll.terminal, T))
    assert got == pytest.approx(official, rel=1e-6)
    ours = float(terminal_error(Quadratic(), phi, roll.terminal, T))
    assert ours == pytest.approx(np.mean(np.linalg.norm(delta, axis=1)), rel=1e-6)
    # Cauchy-Schwarz: sqrt(N) * official = rms >= mean = ours
    assert math.sqrt(n) * got >= ours
    # when every sample has the same error (c = a(T): Delta = w - b), the ratio is exactly sqrt(N)
    same = QuadraticDiscriminator(a_T, w)
    ratio = float(terminal_error(Quadratic(), same, roll.terminal, T)) / float(
        terminal_error_official(Quadratic(), same, roll.terminal, T)
    )
    assert ratio == pytest.approx(math.sqrt(n), rel=1e-9)
    # and the official figure depends on N, ours does not: the same points repeated 4 times
    rep = roll.terminal.repeat(4, 1)
    assert float(terminal_error_official(Quadratic(), same, rep, T)) == pytest.approx(
        float(terminal_error_official(Quadratic(), same, roll.terminal, T)) / 2.0, rel=1e-9
    )
    assert float(terminal_error(Quadratic(), same, rep, T)) == pytest.approx(float(terminal_error(Quadratic(), same, roll.terminal, T)), rel=1e-9)


def test_official_indicators_need_a_full_rollout() -> None:
    roll = _rollout(_x0(10))
    with pytest.raises(ValueError, match="needs the K \\+ 1 states"):
        kinetic_energy_official(Quadratic(), roll.states[:-1], roll.times, roll.dt, ALPHA)
    with pytest.raises(ValueError, match="needs the K \\+ 1 states"):
        hj_residual_official(Quadratic(), roll.states, [], roll.dt, ALPHA)


def test_path_straightness_by_hand() -> None:
    # legs 3 and 4 of a right triangle (chord 5), a straight path, a path that does not move, and a
    # path that turns back (length 2 + 1, chord 1)
    bent = [[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]]
    straight = [[0.0, 0.0], [2.5, 0.0], [5.0, 0.0]]
    still = [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    back = [[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]]
    paths = torch.tensor([bent, straight, still, back]).transpose(0, 1)  # (K + 1, n, 2)
    ratio = path_straightness(paths)
    assert ratio.tolist() == pytest.approx([7.0 / 5.0, 1.0, 1.0, 3.0])
    assert float(median_path_straightness(paths)) == pytest.approx((1.0 + 7.0 / 5.0) / 2.0)  # even n: middle two
    assert float(median_path_straightness(paths[:, :3])) == pytest.approx(1.0)
    # a list of states (Rollout.states) works too; a closed loop is infinitely far from straight
    loop = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]).unsqueeze(1)
    assert math.isinf(float(path_straightness(list(loop))[0]))
    with pytest.raises(ValueError, match="shape \\(K \\+ 1, n"):
        path_straightness(torch.zeros(1, 3, 2))


def test_straight_optimal_flow_has_straightness_one() -> None:
    # with a constant a the Euler map is x_{k+1} - x* = (1 - dt a / alpha)(x_k - x*), x* = -b / a:
    # every path runs straight towards x*; with a(t) varying, x* moves and the paths bend
    u = Quadratic(a0=0.3, a1=0.0)
    roll = euler_rollout(u, torch.tensor(_x0()), T, K, ALPHA)
    assert float(median_path_straightness(roll.states)) == pytest.approx(1.0, abs=1e-12)
    curved = euler_rollout(Quadratic(a0=0.0, a1=-3.0), torch.tensor(_x0()), T, K, ALPHA)
    assert float(median_path_straightness(curved.states)) > 1.005


# ----------------------------------------------------------------------------- the module logs them
def test_module_logs_the_official_indicators_beside_ours() -> None:
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = W1W2ProximalFlow(
        (2,), potential=PotentialMLP(2, (16, 16)), discriminator=MLPDiscriminator(2, (16, 16)), T=1.0, num_steps=3,
        n_critic=2, indicator_samples=300,
    )
    x = torch.tensor([2.0, 1.0]) + 0.5 * torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, TensorDataModule(x, batch_size=64, val_fraction=0.25))
    names = {"val/kinetic_energy_official", "val/hj_residual_official", "val/terminal_error_official", "val/path_straightness"}
    assert names | {"val/hj_residual", "val/terminal_error", "val/kinetic_energy"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/path_straightness"]) >= 1.0

    # the module's figures are the functions applied to its rollout of indicator_samples references
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(5)
        got = model.optimality_indicators(x[:10], torch.Generator().manual_seed(5))
        x0 = model.sample_reference(300, gen)
        roll = model.flow(x0)
        u, a = model.value_potential, model.indicator_alpha
        assert float(got["kinetic_energy_official"]) == pytest.approx(
            float(kinetic_energy_official(u, roll.states, roll.times, roll.dt, a)), rel=1e-5)
        assert float(got["hj_residual_official"]) == pytest.approx(
            float(hj_residual_official(u, roll.states, roll.times, roll.dt, a)), rel=1e-5)
        assert float(got["terminal_error_official"]) == pytest.approx(
            float(terminal_error_official(u, model.discriminator, roll.terminal, model.T)), rel=1e-5)
        assert float(got["path_straightness"]) == pytest.approx(float(median_path_straightness(roll.states)), rel=1e-5)
        # ours are unchanged by the new ones
        assert float(got["hj_residual"]) == pytest.approx(
            float(hj_residual(u, roll.states, roll.times, roll.dt, a, center=model.center_hj)), rel=1e-5)
    with pytest.raises(ValueError, match="indicator_samples must be >= 1"):
        W1W2ProximalFlow((2,), indicator_samples=0)
