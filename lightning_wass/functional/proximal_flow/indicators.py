r"""Optimality indicators of W1 (+) W2 proximal flows: the Hamilton-Jacobi residual and the
terminal-condition error (Gu, Katsoulakis, Rey-Bellet, Zhang, arXiv:2407.11901, section 4).

**The control problem.** The flow solves

    min_v  alpha * int_0^T E ||v(x_t, t)||^2 / 2 dt + D(rho_T || Q),      dx_t/dt = v(x_t, t),

whose first variation in ``rho_T`` is the optimal discriminator ``phi``: each particle pays the
running cost ``alpha ||v||^2 / 2`` and the terminal cost ``phi(x_T)``.

**Deriving the sign for** ``v = -grad U / alpha``. Let ``V(x, t)`` be the value function (the least
cost-to-go from ``x`` at time ``t``). Dynamic programming over ``[t, t + h]`` gives
``V(x, t) = min_v { alpha ||v||^2 h / 2 + V(x + v h, t + h) }``, i.e.

    -d_t V = min_v { alpha ||v||^2 / 2 + v . grad V },

minimised at ``v* = -grad V / alpha`` with minimum ``-||grad V||^2 / (2 alpha)``. So

    d_t V - ||grad V||^2 / (2 alpha) = 0,       V(x, T) = phi(x),

and the optimal velocity is ``v = -grad V / alpha``: our flow convention identifies ``U = V``, and
the HJ residual is ``r = d_t U - ||grad U||^2 / (2 alpha)`` (sign ``s = -1``). The official code's
``d_t U + ||grad U||^2 / (2 alpha)`` is the equation of the flow ``v = +grad U / alpha``, not of
``v = -grad U / alpha``. Check with the characteristics: along ``dx/dt = -grad U / alpha``,

    d/dt grad U(x_t, t) = grad d_t U - Hess U grad U / alpha
                        = grad(d_t U - ||grad U||^2 / (2 alpha)) = grad r,

so ``r = const(t)`` makes every velocity constant along its path: straight trajectories (the
W2-proximal optimum). With the "+" sign one gets ``d/dt grad U = -2 Hess U grad U / alpha != 0``.
``tests/test_proximal_math.py`` verifies both on the closed-form optimal potential between Gaussians.

**Gauge.** The flow only sees ``grad U``, so ``U`` and ``U + c(t)`` give the same trajectories
while the residual moves by ``c'(t)``. The residual is therefore reported *centred* at each time
step, ``r - mean_i r`` (``center=True``), which vanishes exactly on the optimal flow whatever the
gauge; ``center=False`` is the raw form (uncentred as the official code's, but with our sign and
our evaluation points; :func:`hj_residual_official` is the official one).

**The indicators** (over a batch ``x_k^i`` of one trajectory ensemble):

    HJ residual     = sum_{k=0}^{K-1} dt * mean_i | r(x_k^i, t_k) - [mean_j r(x_k^j, t_k)] |
    terminal error  = mean_i || grad phi(x_T^i) - grad U(x_T^i, T) ||     (from U(., T) = phi).

Both vanish at the optimum; both need autograd (``torch.enable_grad()``, and
``torch.inference_mode(False)`` inside a Lightning evaluation loop).

**The official code's conventions** (``running_cost``, ``generator`` and ``loss_terminal`` in
``POT_Flow_GAN.py`` / ``POT_Flow_GAN_CNN.py`` of the paper's TensorFlow code, with ``--power 2`` and
``--sigma 0``), which produce the paper's figures. Inside the Euler loop the official code first
steps, ``x_{k+1} = x_k - dt grad U(x_k, t_k) / alpha``, and then evaluates the running terms at the
*new* state with the *old* time, ``(x_{k+1}, t_k)`` (``k = 0 .. K-1``, so ``x_0`` is never used and
``x_K = x_T`` is):

    kinetic energy (official)  = sum_{k=0}^{K-1} dt * sum_i ||grad U(x_{k+1}^i, t_k)||^2 / (2 alpha^2 N)
    HJ residual (official)     = sum_{k=0}^{K-1} dt * mean_i | d_t U(x_{k+1}^i, t_k) + ||grad U(x_{k+1}^i, t_k)||^2 / (2 alpha) |
    terminal error (official)  = || grad phi(x_T) - grad U(x_T, T) ||_F / N
                               = sqrt(sum_i ||grad phi(x_T^i) - grad U(x_T^i, T)||^2) / N

(:func:`kinetic_energy_official`, :func:`hj_residual_official`, :func:`terminal_error_official`).
How they differ from ours:

- *evaluation points*: ours use ``(x_k, t_k)``, the points that drive the Euler step (our kinetic
  energy is the one the rollout actually travels); the official ones ``(x_{k+1}, t_k)``, a point
  the trajectory reaches only at ``t_{k+1}``, so even on the exact optimal flow the official kinetic
  energy is not the energy travelled (``tests/test_proximal_official_indicators.py``);
- *sign and gauge*: the official residual has the ``+`` sign (the HJ equation of
  ``v = +grad U / alpha``, module docstring above) and is not centred, so it depends on the gauge
  ``U + c(t)`` and does not vanish on the optimal flow of ``v = -grad U / alpha``;
- *terminal normalisation*: ``||Delta||_F / N = sqrt(mean_i ||Delta_i||^2) / sqrt(N)``, i.e. about
  ``1 / sqrt(N)`` times our ``mean_i ||Delta_i||`` (exactly, when every ``||Delta_i||`` is equal), so
  it depends on the number ``N`` of samples it is evaluated on: the official code evaluates all
  its indicators on ``N = 5000`` reference samples (``P.nextbatch(5000)``). Neither is scaled by
  ``alpha``: ``v1 = grad phi`` and ``v2 = grad U(., T)`` are compared as they are.

Only the official-convention figures, evaluated on ``N = 5000``, are comparable with the paper's
numbers; ours are the ones that vanish at the optimum of our flow.

**Straightness** of the trajectories (the W2 proximal's promise): :func:`path_straightness` is the
path length over the chord of each trajectory, ``sum_k ||x_{k+1} - x_k|| / ||x_K - x_0||`` (1 for a
straight segment), and :func:`median_path_straightness` its median over trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_wass._validation import check_callable, check_number, check_positive, check_tensor
from lightning_wass.functional.proximal_flow.rollout import Potential, evaluate_potential, path_lengths, potential_gradient

__all__ = [
    "hj_residual",
    "hj_residual_official",
    "hj_residual_pointwise",
    "kinetic_energy_official",
    "median_path_straightness",
    "path_straightness",
    "terminal_error",
    "terminal_error_official",
]


def _check_sign(sign: float) -> float:
    """``-1`` (our flow's HJ equation) or ``+1`` (the official code's form)."""
    if isinstance(sign, bool) or not isinstance(sign, (int, float)):
        raise TypeError(f"sign must be -1 or +1, got {type(sign).__name__} ({sign!r})")
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 (the flow v = -grad U / alpha) or +1 (the official code's form), got {sign!r}")
    return float(sign)


def hj_residual_pointwise(potential: Potential, x: Tensor, t: float, alpha: float, *, sign: float = -1.0) -> Tensor:
    """``r_i = d_t U(x_i, t) + sign * ||grad_x U(x_i, t)||^2 / (2 alpha)`` per sample, shape ``(N,)``.

    ``sign = -1`` is the Hamilton-Jacobi equation of the flow ``v = -grad U / alpha`` (module
    docstring); ``sign = +1`` is the official code's form (which the official code evaluates at
    ``(x_{k+1}, t_k)``: :func:`hj_residual_official`).
    """
    alpha = check_positive("alpha", alpha)
    t = check_number("t", _item(t))
    sign = _check_sign(sign)
    check_tensor("x", x, shape="(N, *data_shape)", allow_empty=True, allow_integer=False, finite=False)
    if not torch.is_grad_enabled():
        raise RuntimeError("hj_residual needs autograd: call it under torch.enable_grad() (and torch.inference_mode(False))")
    x = x.detach().requires_grad_(True)
    time = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype, requires_grad=True)
    u = evaluate_potential(potential, x, time)
    grad_x, grad_t = torch.autograd.grad(u.sum(), (x, time), allow_unused=True)
    if grad_t is None:  # a potential that ignores time
        grad_t = torch.zeros_like(time)
    return (grad_t + sign * grad_x.flatten(1).pow(2).sum(1) / (2.0 * alpha)).detach()


def hj_residual(
    potential: Potential,
    states: Sequence[Tensor],
    times: Sequence[float],
    dt: float,
    alpha: float,
    *,
    center: bool = True,
    sign: float = -1.0,
) -> Tensor:
    """``sum_k dt mean_i |r(x_k^i, t_k) - mean_j r(x_k^j, t_k)|`` over the states that drive the flow.

    Args:
        potential: ``U(x, t)``.
        states: ``x_0, ..., x_K`` (e.g. ``Rollout.states``); the residual is evaluated at
            ``x_0 .. x_{K-1}`` with ``times = t_0 .. t_{K-1}`` (``Rollout.times``).
        dt: the Euler step.
        alpha: the velocity scale of ``v = -grad U / alpha``.
        center: remove the per-step mean (the gauge ``U + c(t)``; see the module docstring).
        sign: ``-1`` (correct for our convention) or ``+1`` (the official code's sign; for the
            official figure, with its evaluation points, use :func:`hj_residual_official`).

    Returns a detached 0-dim tensor.
    """
    if len(times) == 0 or len(states) < len(times):
        raise ValueError(f"hj_residual needs one state per time, got {len(states)} states and {len(times)} times")
    dt = check_positive("dt", dt)
    alpha = check_positive("alpha", alpha)
    sign = _check_sign(sign)
    total = states[0].new_zeros(())
    for x, t in zip(states, times):
        r = hj_residual_pointwise(potential, x, t, alpha, sign=sign)
        if center:
            r = r - r.mean()
        total = total + dt * r.abs().mean()
    return total


def terminal_error(potential: Potential, discriminator: nn.Module, x_T: Tensor, T: float) -> Tensor:
    """``mean_i ||grad phi(x_T^i) - grad_x U(x_T^i, T)||`` (terminal condition ``U(., T) = phi``).

    Returns a detached 0-dim tensor.
    """
    T = _check_terminal(potential, discriminator, x_T, T)
    grad_u = potential_gradient(potential, x_T, T)
    grad_phi = potential_gradient(lambda x, t: discriminator(x), x_T, T)
    return (grad_phi - grad_u).flatten(1).norm(dim=1).mean().detach()


def _check_terminal(potential: Potential, discriminator: nn.Module, x_T: Tensor, T: float) -> float:
    check_callable("potential", potential)
    check_callable("discriminator", discriminator)
    check_tensor("x_T", x_T, shape="(N, *data_shape)", item="sample", allow_integer=False, finite=False)
    return check_positive("T", _item(T))


def _item(value: object) -> object:
    """A one-element tensor as a Python number (anything else unchanged, for the checks to judge)."""
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value


# ----------------------------------------------------------------------------- the official conventions
def _check_official_states(who: str, states: Sequence[Tensor], times: Sequence[float]) -> None:
    if len(times) == 0 or len(states) != len(times) + 1:
        raise ValueError(
            f"{who} needs the K + 1 states x_0 .. x_K of a rollout and its K times t_0 .. t_{{K-1}} "
            f"(it evaluates at (x_{{k+1}}, t_k)); got {len(states)} states and {len(times)} times"
        )


def kinetic_energy_official(potential: Potential, states: Sequence[Tensor], times: Sequence[float], dt: float, alpha: float) -> Tensor:
    """The official code's kinetic energy, ``sum_{k=0}^{K-1} dt sum_i ||grad U(x_{k+1}^i, t_k)||^2 / (2 alpha^2 N)``.

    ``POT_Flow_GAN.py``'s ``running_cost(currentx, currentt)`` is called right after the Euler
    update, so ``grad U`` is taken at the new state ``x_{k+1}`` with the old time ``t_k``
    (``Lp = sum(square(grad_U / alpha1)) / (2 N)`` for ``--power 2``, summed over steps and
    multiplied by ``dt``). Ours (:func:`~lightning_wass.functional.proximal_flow.rollout.kinetic_energy`) uses the
    gradients at ``(x_k, t_k)`` that drive the steps.

    Args:
        potential: ``U(x, t)`` with velocity ``v = -grad U / alpha``.
        states: ``x_0 .. x_K`` (``Rollout.states``).
        times: ``t_0 .. t_{K-1}`` (``Rollout.times``).
        dt: the Euler step.
        alpha: the velocity scale.

    Returns a detached 0-dim tensor.
    """
    alpha = check_positive("alpha", alpha)
    dt = check_positive("dt", dt)
    _check_official_states("kinetic_energy_official", states, times)
    total = states[0].new_zeros(())
    for x_next, t in zip(states[1:], times):
        grad = potential_gradient(potential, x_next, float(t))
        total = total + dt * grad.flatten(1).pow(2).sum() / (2.0 * alpha**2 * x_next.shape[0])
    return total.detach()


def hj_residual_official(potential: Potential, states: Sequence[Tensor], times: Sequence[float], dt: float, alpha: float) -> Tensor:
    """The official code's HJ residual, ``sum_{k=0}^{K-1} dt mean_i |d_t U + ||grad U||^2 / (2 alpha)|`` at ``(x_{k+1}^i, t_k)``.

    As ``running_cost`` in ``POT_Flow_GAN.py`` (``res = dU/dt + (1 - 1/p) / alpha1 * ||grad U||^2``
    for ``p = 2``, ``HJB = mean(abs(res))``, summed over steps and multiplied by ``dt``): the ``+``
    sign, no centring, evaluated at the new state with the old time. It does not vanish on the
    optimal flow of ``v = -grad U / alpha`` (see the module docstring); compare it with the paper's
    figures, and use :func:`hj_residual` to test optimality.

    Returns a detached 0-dim tensor.
    """
    _check_official_states("hj_residual_official", states, times)
    dt = check_positive("dt", dt)
    alpha = check_positive("alpha", alpha)
    total = states[0].new_zeros(())
    for x_next, t in zip(states[1:], times):
        r = hj_residual_pointwise(potential, x_next, float(t), alpha, sign=+1.0)
        total = total + dt * r.abs().mean()
    return total


def terminal_error_official(potential: Potential, discriminator: nn.Module, x_T: Tensor, T: float) -> Tensor:
    """The official code's terminal error, ``||grad phi(x_T) - grad_x U(x_T, T)||_F / N``.

    ``loss_terminal = sqrt(reduce_sum(square(v1 - v2))) / N_samples`` with ``v1 = grad disc(x_T)``
    and ``v2 = grad U(x_T, T)`` (no ``alpha``). Equal to ``sqrt(mean_i ||Delta_i||^2) / sqrt(N)``:
    it shrinks as ``1 / sqrt(N)`` with the number of samples (the official code uses ``N = 5000``),
    while ours (:func:`terminal_error`, ``mean_i ||Delta_i||``) does not depend on ``N``.

    Returns a detached 0-dim tensor.
    """
    T = _check_terminal(potential, discriminator, x_T, T)
    grad_u = potential_gradient(potential, x_T, T)
    grad_phi = potential_gradient(lambda x, t: discriminator(x), x_T, T)
    return ((grad_phi - grad_u).pow(2).sum().sqrt() / x_T.shape[0]).detach()


# ----------------------------------------------------------------------------- straightness
def path_straightness(trajectories: Tensor | Sequence[Tensor]) -> Tensor:
    """Path length over chord of every trajectory, shape ``(n,)``.

    ``trajectories`` is ``(K + 1, n, *data_shape)`` (e.g. ``W1W2ProximalFlow.trajectories(n)``) or
    the list ``Rollout.states``; trajectory ``i`` gives ``sum_k ||x_{k+1}^i - x_k^i|| / ||x_K^i - x_0^i||``,
    which is ``>= 1`` and ``1`` exactly for a straight segment travelled without turning back. A
    trajectory that does not move gives 1; one that returns to its start (chord 0, length > 0)
    gives ``inf``.
    """
    try:
        length, chord = path_lengths(trajectories)
    except ValueError as error:
        raise ValueError(f"path_straightness: {error}") from None
    ratio = length / chord
    ratio = torch.where(chord > 0, ratio, torch.where(length > 0, torch.full_like(ratio, math.inf), torch.ones_like(ratio)))
    return ratio


def median_path_straightness(trajectories: Tensor | Sequence[Tensor]) -> Tensor:
    """The median of :func:`path_straightness` over trajectories (the mean of the two middle values
    for an even count), a detached 0-dim tensor: 1 for straight paths, 1.1 when the typical path is
    10 % longer than its chord."""
    ratio = path_straightness(trajectories).sort().values
    n = ratio.numel()
    if n % 2 == 1:
        return ratio[n // 2]
    return 0.5 * (ratio[n // 2 - 1] + ratio[n // 2])
