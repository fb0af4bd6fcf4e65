"""Forward-Euler trajectories of a potential-driven flow, and their kinetic energy.

W1 (+) W2 proximal generative flows (Gu, Katsoulakis, Rey-Bellet, Zhang, arXiv:2407.11901) move
samples of a reference distribution ``rho_0`` along the velocity field ``v = -grad_x U(x, t) / alpha``
of a potential ``U``; discretised by forward Euler with ``K`` steps of size ``dt = T / K``:

    x_{k+1} = x_k - dt * grad_x U(x_k, t_k) / alpha,      t_k = k dt,  k = 0, ..., K - 1.

The W2 proximal is the (discretised) Benamou-Brenier kinetic energy of that flow,

    KE = sum_k dt * mean_i ||v(x_k^i, t_k)||^2 / 2 = sum_k dt * mean_i ||grad U(x_k^i, t_k)||^2 / (2 alpha^2),

and the training loss adds ``alpha * KE`` (= ``sum_k dt mean ||grad U||^2 / (2 alpha)``).

Pure torch, no Lightning: a potential is any callable ``potential(x, t) -> (N,)`` (or ``(N, 1)``)
taking ``x`` of shape ``(N, *data_shape)`` and ``t`` of shape ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_wass._validation import check_callable, check_int, check_number, check_positive, check_tensor

Potential = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Potential",
    "Rollout",
    "euler_rollout",
    "evaluate_potential",
    "excess_path_length",
    "path_lengths",
    "kinetic_energy",
    "potential_gradient",
]


def evaluate_potential(potential: Potential, x: Tensor, t: Tensor | float) -> Tensor:
    """``potential(x, t)`` as a ``(N,)`` tensor; ``t`` may be a number (the same time for every sample)."""
    check_callable("potential", potential)
    check_tensor("x", x, shape="(N, *data_shape)", allow_empty=True, finite=False)
    n = x.shape[0]
    if not isinstance(t, Tensor):
        t = torch.full((n,), check_number("t", t), device=x.device, dtype=x.dtype)
    elif t.numel() not in (1, n):
        raise ValueError(f"t must be a number, or hold one time per sample ({n}) or a single time; got shape {tuple(t.shape)}")
    out = potential(x, t)
    if out.numel() != n:
        raise ValueError(
            f"the potential must return one value per sample (shape (N,) or (N, 1)); got shape "
            f"{tuple(out.shape)} for N = {n}"
        )
    return out.reshape(n)


def potential_gradient(potential: Potential, x: Tensor, t: Tensor | float, *, create_graph: bool = False) -> Tensor:
    """``grad_x U(x, t)``, shape of ``x``.

    With ``create_graph=True`` the result stays differentiable in the potential's parameters and in
    ``x`` (the flow is trained through its unrolled steps); otherwise it is detached. Needs autograd
    on (inside Lightning's evaluation loop wrap the call in ``torch.inference_mode(False)`` and
    ``torch.enable_grad()``).
    """
    _require_autograd("potential_gradient")
    check_tensor("x", x, shape="(N, *data_shape)", allow_empty=True, allow_integer=False, finite=False)
    if not create_graph or not x.requires_grad:
        x = x.detach().requires_grad_(True)
    u = evaluate_potential(potential, x, t)
    (grad,) = torch.autograd.grad(u.sum(), x, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def _require_autograd(who: str) -> None:
    if not torch.is_grad_enabled():
        raise RuntimeError(
            f"{who} needs autograd: call it under torch.enable_grad() (and "
            "torch.inference_mode(False) inside a Lightning evaluation loop)"
        )


def _gradient(potential: Potential, x: Tensor, t: Tensor, create_graph: bool) -> Tensor:
    """:func:`potential_gradient` for an ``x`` and a potential already checked, and ``t`` a
    ``(N,)`` tensor of times: the potential's output must still hold one value per sample."""
    if not create_graph or not x.requires_grad:
        x = x.detach().requires_grad_(True)
    out = potential(x, t)
    n = x.shape[0]
    if out.numel() != n:
        raise ValueError(
            f"the potential must return one value per sample (shape (N,) or (N, 1)); got shape "
            f"{tuple(out.shape)} for N = {n}"
        )
    (grad,) = torch.autograd.grad(out.reshape(n).sum(), x, create_graph=create_graph)
    return grad if create_graph else grad.detach()


@dataclass
class Rollout:
    """Result of :func:`euler_rollout`.

    ``states[k]`` is ``x_k`` (``K + 1`` tensors, ``states[-1] = x_T``), ``gradients[k]`` is
    ``grad_x U(x_k, t_k)`` (``K`` tensors), ``times[k] = k dt``.
    """

    states: list[Tensor]
    gradients: list[Tensor]
    times: list[float]
    dt: float

    @property
    def terminal(self) -> Tensor:
        """``x_T``."""
        return self.states[-1]

    def stacked(self) -> Tensor:
        """All states as one tensor of shape ``(K + 1, N, *data_shape)``."""
        return torch.stack([s.detach() for s in self.states])


def euler_rollout(
    potential: Potential,
    x0: Tensor,
    T: float,
    num_steps: int,
    alpha: float,
    *,
    create_graph: bool = False,
) -> Rollout:
    """Forward Euler ``x_{k+1} = x_k - dt grad_x U(x_k, t_k) / alpha`` from ``x0`` to time ``T``.

    Args:
        potential: ``U(x, t)``.
        x0: ``(N, *data_shape)`` samples of the reference distribution.
        T: terminal time (> 0).
        num_steps: number ``K`` of Euler steps (``dt = T / K``).
        alpha: the velocity scale ``alpha > 0`` of ``v = -grad U / alpha``.
        create_graph: keep the graph through every step, so that a loss on the states or gradients
            back-propagates into the potential's parameters through the unrolled trajectory (training);
            ``False`` gives detached states (sampling, discriminator steps, indicators).
    """
    T = check_positive("T", T)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    alpha = check_positive("alpha", alpha)
    check_callable("potential", potential)
    check_tensor("x0", x0, shape="(N, *data_shape)", item="sample", allow_integer=False, finite=False)
    _require_autograd("euler_rollout")
    dt = T / num_steps
    x = x0 if create_graph else x0.detach()
    n = x.shape[0]
    states, gradients, times = [x], [], []
    for k in range(num_steps):
        t = k * dt
        # what potential_gradient(potential, x, t) does, with the checks of x and the potential made
        # once above (x_k has x0's shape, dtype and device by construction); the output's shape is
        # still checked at every step
        times_k = torch.full((n,), t, device=x.device, dtype=x.dtype)
        grad = _gradient(potential, x, times_k, create_graph)
        x = x - (dt / alpha) * grad
        if not create_graph:
            x = x.detach()
        states.append(x)
        gradients.append(grad)
        times.append(t)
    return Rollout(states=states, gradients=gradients, times=times, dt=dt)


def kinetic_energy(gradients: list[Tensor], dt: float, alpha: float) -> Tensor:
    """``KE = sum_k dt mean_i ||grad U(x_k^i, t_k)||^2 / (2 alpha^2)`` = ``sum_k dt mean ||v_k||^2 / 2``.

    This is the (unweighted) kinetic energy of the flow at the states that drive each step; the
    W2 proximal term of the loss is ``alpha * KE``. The paper's figures use the official code's
    evaluation points ``(x_{k+1}, t_k)``: :func:`lightning_wass.functional.proximal_flow.indicators.kinetic_energy_official`. Differentiable when the gradients are.
    """
    if isinstance(gradients, Tensor) or not isinstance(gradients, Sequence):
        raise TypeError(f"gradients must be the list of per-step gradients (Rollout.gradients), got {type(gradients).__name__}")
    if len(gradients) == 0:
        raise ValueError("gradients must hold at least one gradient (one Euler step) for kinetic_energy")
    dt = check_positive("dt", dt)
    alpha = check_positive("alpha", alpha)
    total = gradients[0].new_zeros(())
    for grad in gradients:
        total = total + dt * grad.flatten(1).pow(2).sum(1).mean() / (2.0 * alpha**2)
    return total


def excess_path_length(states: list[Tensor] | Tensor) -> Tensor:
    """Straightness of trajectories: ``sum_i L_i / sum_i ||x_K^i - x_0^i|| - 1``, with the path length
    ``L_i = sum_k ||x_{k+1}^i - x_k^i||``.

    Zero exactly when every trajectory is a straight segment travelled without turning back (the
    optimal flows of the W2 proximal are); ``0.05`` means the paths are 5 % longer in total than
    the straight lines. A ratio of totals, not a mean of per-path ratios, so that points that barely
    move (tiny chords) do not dominate it. Zero when nothing moves.
    """
    lengths, chords = path_lengths(states, name="states")
    length, chord = lengths.sum(), chords.sum()
    if float(chord) == 0.0:
        return chord.new_zeros(())
    return length / chord - 1.0


def path_lengths(states: Sequence[Tensor] | Tensor, *, name: str = "trajectories") -> tuple[Tensor, Tensor]:
    """Per trajectory: the path length ``sum_k ||x_{k+1}^i - x_k^i||`` and the chord
    ``||x_K^i - x_0^i||`` (detached, each of shape ``(N,)``), from ``(K + 1, N, *data_shape)``
    or the list of states. The one place the straightness measures compute lengths. ``name`` is
    the argument the messages name."""
    if isinstance(states, Tensor):
        path = states.detach()
    elif isinstance(states, Sequence) and all(isinstance(s, Tensor) for s in states):
        if len(states) < 2:
            raise ValueError(f"{name} must hold the K + 1 >= 2 states x_0 .. x_K of a rollout, got {len(states)}")
        path = torch.stack([s.detach() for s in states])
    else:
        raise TypeError(f"{name} must be a tensor of shape (K + 1, n, *data_shape) or a list of states, got {type(states).__name__}")
    if path.dim() < 3 or path.shape[0] < 2:
        raise ValueError(f"{name} must have shape (K + 1, n, *data_shape) with K >= 1, got {tuple(path.shape)}")
    flat = path.flatten(2)  # (K + 1, N, D)
    return (flat[1:] - flat[:-1]).norm(dim=2).sum(0), (flat[-1] - flat[0]).norm(dim=1)
