"""The pure math of W1 (+) W2 proximal flows against closed forms (no Lightning).

The reference is the optimal flow between Gaussians: from ``N(0, I)`` to ``N(m, s^2 I)`` the OT
map is ``x -> m + s x``, trajectories are straight, ``x_t = a(t) x_0 + m t / T`` with
``a(t) = 1 + (s - 1) t / T``, and the velocity ``v(x, t) = ((s - 1) x + m) / (T a(t))`` is
``-grad U / alpha`` for the potential

    U(x, t) = alpha * ( -[(s - 1) ||x||^2 / 2 + m.x] / (T a(t)) + ||m||^2 t / (2 T^2 a(t)) ),

which solves ``d_t U - ||grad U||^2 / (2 alpha) = 0`` exactly (derivation in the test below).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from lightning_wass.functional.proximal_flow import (
    alpha_dual,
    euler_rollout,
    excess_path_length,
    f_divergence_dual,
    hj_residual,
    kinetic_energy,
    kl_dual,
    lipschitz_penalty,
    reverse_kl_dual,
    sample_reference,
    terminal_error,
)

class GaussianOptimalPotential(nn.Module):
    """The closed-form optimal potential of the module docstring (plus an optional gauge ``c(t)``)."""

    def __init__(self, m: Tensor, s: float, T: float, alpha: float, gauge: float = 0.0) -> None:
        super().__init__()
        self.m, self.s, self.T, self.alpha, self.gauge = m, s, T, alpha, gauge

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = 1.0 + (self.s - 1.0) * t / self.T
        quad = (self.s - 1.0) * x.pow(2).sum(1) / 2.0 + x @ self.m
        psi = -quad / (self.T * a) + self.m.pow(2).sum() * t / (2.0 * self.T**2 * a)
        return self.alpha * psi + self.gauge * torch.sin(3.0 * t)


M = torch.tensor([2.0, -1.0], dtype=torch.float64)
S, T, ALPHA = 0.5, 2.0, 0.05


@pytest.fixture(autouse=True)
def _double_precision():  # closed-form comparisons at double precision
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _x0(n: int = 500, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_euler_is_exact_on_the_optimal_flow(num_steps: int) -> None:
    # Velocities are constant along the optimal (straight) paths, so forward Euler has no error
    # whatever dt: the endpoints are the OT map m + s x0, and the paths are straight.
    potential = GaussianOptimalPotential(M, S, T, ALPHA)
    x0 = _x0()
    roll = euler_rollout(potential, x0, T, num_steps, ALPHA)
    assert torch.allclose(roll.terminal, M + S * x0, atol=1e-10)
    assert len(roll.states) == num_steps + 1 and len(roll.gradients) == num_steps
    assert roll.times == pytest.approx([k * T / num_steps for k in range(num_steps)])
    assert abs(float(excess_path_length(roll.states))) < 1e-10
    # Kinetic energy of straight constant-speed paths: mean ||T(x0) - x0||^2 / (2 T).
    expected = ((M + S * x0) - x0).pow(2).sum(1).mean() / (2 * T)
    assert float(kinetic_energy(roll.gradients, roll.dt, ALPHA)) == pytest.approx(float(expected), rel=1e-10)


def test_hj_residual_sign_derived_for_v_equals_minus_grad_u_over_alpha() -> None:
    potential = GaussianOptimalPotential(M, S, T, ALPHA)
    roll = euler_rollout(potential, _x0(), T, 8, ALPHA)
    ours = hj_residual(potential, roll.states, roll.times, roll.dt, ALPHA, center=False)
    assert float(ours) < 1e-10
    # The official code's "+" sign does not vanish on the optimal flow (s != 1).
    official = hj_residual(potential, roll.states, roll.times, roll.dt, ALPHA, center=False, sign=+1.0)
    assert float(official) > 0.05


def test_centred_hj_residual_is_gauge_free() -> None:
    # U + c(t) gives the same flow but shifts the raw residual by c'(t); the centred one ignores it.
    plain = GaussianOptimalPotential(M, S, T, ALPHA)
    gauged = GaussianOptimalPotential(M, S, T, ALPHA, gauge=0.7)
    roll = euler_rollout(gauged, _x0(), T, 8, ALPHA)
    assert torch.allclose(roll.terminal, euler_rollout(plain, _x0(), T, 8, ALPHA).terminal, atol=1e-12)
    assert float(hj_residual(gauged, roll.states, roll.times, roll.dt, ALPHA, center=True)) < 1e-10
    raw = hj_residual(gauged, roll.states, roll.times, roll.dt, ALPHA, center=False)
    # sum_k dt |c'(t_k)| with c = 0.7 sin(3t)
    expected = sum(roll.dt * abs(0.7 * 3 * math.cos(3 * t)) for t in roll.times)
    assert float(raw) == pytest.approx(expected, rel=1e-8)


def test_hj_residual_detects_a_suboptimal_flow() -> None:
    # Velocity -grad U / alpha with U = alpha * (-||x - m||^2 / 2): a relaxation towards m that
    # reaches the right mean but along non-constant velocities; its residual is far from zero.
    def relax(x: Tensor, t: Tensor) -> Tensor:
        return -ALPHA * (x - M).pow(2).sum(1) / 2.0

    roll = euler_rollout(relax, _x0(), T, 8, ALPHA)
    assert float(hj_residual(relax, roll.states, roll.times, roll.dt, ALPHA)) > 0.01


def test_terminal_error_is_zero_when_the_discriminator_is_the_terminal_potential() -> None:
    potential = GaussianOptimalPotential(M, S, T, ALPHA)

    class Terminal(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return potential(x, torch.full((x.shape[0],), T))

    x_T = euler_rollout(potential, _x0(), T, 4, ALPHA).terminal
    assert float(terminal_error(potential, Terminal(), x_T, T)) < 1e-12

    class Linear(nn.Module):  # grad phi = (1, 0) everywhere
        def forward(self, x: Tensor) -> Tensor:
            return x[:, 0]

    expected = (torch.tensor([1.0, 0.0]) - ALPHA * (-((S - 1) * x_T + M) / (T * S))).norm(dim=1).mean()
    assert float(terminal_error(potential, Linear(), x_T, T)) == pytest.approx(float(expected), rel=1e-9)


def test_rollout_with_graph_backpropagates_through_every_step() -> None:
    # d x_T / d theta for U = theta * ||x||^2 / 2: x_T = (1 - dt theta / alpha)^K x0.
    theta = torch.tensor(0.01, requires_grad=True)
    x0 = _x0(10)
    K, horizon = 4, 1.0
    roll = euler_rollout(lambda x, t: theta * x.pow(2).sum(1) / 2, x0, horizon, K, ALPHA, create_graph=True)
    loss = roll.terminal.sum()
    (grad,) = torch.autograd.grad(loss, theta)
    c = 1 - (horizon / K) * theta.item() / ALPHA
    expected = K * c ** (K - 1) * (-(horizon / K) / ALPHA) * float(x0.sum())
    assert float(grad) == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------- divergences
def _discrete_pair() -> tuple[Tensor, Tensor]:
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.25, 0.25, 0.4, 0.1])
    return p, q


def _weighted_scores(phi: Tensor, weights: Tensor, copies: int = 10_000) -> Tensor:
    # Expand a discrete distribution into equally weighted samples (exact for these weights).
    counts = (weights * copies).round().long()
    return torch.repeat_interleave(phi, counts)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "alpha"])
def test_dual_forms_reach_the_divergence_at_the_optimal_discriminator(name: str) -> None:
    p, q = _discrete_pair()
    ratio = p / q
    a = 3.0
    if name == "kl":
        exact, phi_star = (p * (p / q).log()).sum(), ratio.log()
    elif name == "reverse_kl":
        exact, phi_star = (q * (q / p).log()).sum(), -1.0 / ratio
    else:
        exact, phi_star = (q * (ratio**a - 1)).sum() / (a * (a - 1)), ratio ** (a - 1) / (a - 1)
    value = f_divergence_dual(name, _weighted_scores(phi_star, p), _weighted_scores(phi_star, q), order=a)
    # (reverse KL: log(relu(-phi) + 1e-6) moves the value by about 1e-6)
    assert float(value) == pytest.approx(float(exact), rel=1e-6 if name != "reverse_kl" else 1e-5)
    # Any other discriminator gives a lower bound.
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        phi = phi_star + 0.3 * torch.randn(4, generator=g)
        if name == "reverse_kl":
            phi = -phi.abs() - 1e-3
        lower = f_divergence_dual(name, _weighted_scores(phi, p), _weighted_scores(phi, q), order=a)
        assert float(lower) <= float(exact) + 1e-9


def test_kl_dual_is_shift_invariant_and_alpha_two_is_half_chi_square() -> None:
    g = torch.Generator().manual_seed(1)
    phi_p, phi_q = torch.randn(50, generator=g), torch.randn(60, generator=g)
    assert float(kl_dual(phi_p + 3.0, phi_q + 3.0)) == pytest.approx(float(kl_dual(phi_p, phi_q)), rel=1e-12)
    p, q = _discrete_pair()
    half_chi2 = ((p - q) ** 2 / q).sum() / 2
    phi = p / q  # f'(u) = u^(a-1) / (a-1) = u for a = 2
    value = alpha_dual(_weighted_scores(phi, p), _weighted_scores(phi, q), 2.0)
    assert float(value) == pytest.approx(float(half_chi2), rel=1e-6)
    # reverse KL penalises non-negative scores instead of returning NaN
    assert torch.isfinite(reverse_kl_dual(phi_p, phi_q.abs()))


def test_one_sided_lipschitz_penalty_on_linear_discriminators() -> None:
    real, fake = _x0(64, 1), _x0(64, 2)
    for w, L in ([3.0, 4.0], 2.0), ([0.3, 0.4], 1.0):
        linear = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor([w]))
        slope2 = sum(c * c for c in w)
        penalty = lipschitz_penalty(linear, real, fake, L)
        assert penalty.item() == pytest.approx(max(0.0, slope2 - L * L), rel=1e-12)
        (grad,) = torch.autograd.grad(penalty, linear.weight)
        expected_grad = 2 * torch.tensor([w]) if slope2 > L * L else torch.zeros(1, 2)
        assert torch.allclose(grad, expected_grad)


def test_bad_inputs_of_the_math() -> None:
    with pytest.raises(ValueError, match="divergence must be one of"):
        f_divergence_dual("js", torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="order"):
        alpha_dual(torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="L must be"):
        lipschitz_penalty(nn.Linear(2, 1), _x0(4), _x0(4), 0.0)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        euler_rollout(lambda x, t: x.sum(1), _x0(4), 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="alpha must be"):
        euler_rollout(lambda x, t: x.sum(1), _x0(4), 1.0, 2, 0.0)
    with pytest.raises(ValueError, match="one value per sample"):
        euler_rollout(lambda x, t: x, _x0(4), 1.0, 2, 1.0)
    with pytest.raises(ValueError, match="reference must be one of"):
        sample_reference("laplace", 3, (2,))
    with torch.no_grad(), pytest.raises(RuntimeError, match="autograd"):
        euler_rollout(lambda x, t: x.sum(1), _x0(4), 1.0, 2, 1.0)


def test_reference_samples() -> None:
    g = torch.Generator().manual_seed(0)
    u = sample_reference("uniform", 20_000, (3,), low=0.0, high=0.5, generator=g, dtype=torch.float64)
    assert u.shape == (20_000, 3) and float(u.min()) >= 0.0 and float(u.max()) <= 0.5
    assert float(u.mean()) == pytest.approx(0.25, abs=0.005)
    z = sample_reference("normal", 20_000, (1, 2, 2), generator=g, dtype=torch.float64)
    assert z.shape == (20_000, 1, 2, 2) and float(z.std()) == pytest.approx(1.0, abs=0.02)


def test_excess_path_length_of_a_detour() -> None:
    # one path along two sides of a right triangle (legs 3, 4), one straight path of length 5:
    # total length 12 over total chord 10
    bent = torch.tensor([[[0.0, 0.0]], [[3.0, 0.0]], [[3.0, 4.0]]])
    straight = torch.tensor([[[0.0, 0.0]], [[2.5, 0.0]], [[5.0, 0.0]]])
    paths = torch.cat([bent, straight], dim=1)
    assert float(excess_path_length(paths)) == pytest.approx(12.0 / 10.0 - 1.0)
    assert float(excess_path_length(torch.zeros(3, 4, 2))) == 0.0
