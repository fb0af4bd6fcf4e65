r"""Forward-Euler targets of the W2 gradient flow (W2-FE; Huang & Malik 2024, arXiv:2406.13619).

The flow ``dY_t/dt = -grad phi_t(Y_t) = T_t(Y_t) - Y_t``, where ``phi_t`` is the Kantorovich potential
from the law of ``Y_t`` to the data and ``T_t = id - grad phi_t`` the optimal (Brenier) map, is the
W2 gradient flow of ``W2^2(., P_data) / 2``. One forward-Euler step of size ``dt`` moves each
generated point ``y = G(z)`` to

    y_hat = y + dt (T(y) - y),

and the generator is then regressed onto the targets (``min_G mean ||G(z) - y_hat||^2``). ``T`` is
estimated by one of

- exact minibatch OT (:func:`minibatch_ot_targets`): the barycentric projection of the optimal plan
  between the generated and data batches;
- a learned potential on the semi-dual with a minibatch c-transform (:func:`semi_dual_loss`), with
  ``T(y) = y - grad phi(y)``;
- **the paper's estimator**, a potential pair trained adversarially as in W2-GAN
  (:func:`w2gan_dual_loss`, :func:`adversarial_map`): Huang & Malik build W2-FE on the W2-GAN
  discriminator of Leygonie et al. (*Adversarial computation of optimal transport maps*, 2019,
  arXiv:1906.09691), whose objective is the L2-regularised Kantorovich dual.

Pure torch; no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_wass._validation import check_callable, check_positive, check_tensor
from lightning_wass.ot import barycentric_map, cost_matrix


def _batches(generated: Tensor, data: Tensor, *, finite: bool = False) -> None:
    """Two non-empty batches with the same number of features per sample."""
    check_tensor("generated", generated, item="sample", finite=finite)
    check_tensor("data", data, item="sample", finite=finite)
    if generated.ndim < 1 or data.ndim < 1 or generated[0].numel() != data[0].numel():
        raise ValueError(
            f"generated and data must have the same number of features per sample, got shapes "
            f"{tuple(generated.shape)} and {tuple(data.shape)}"
        )


def forward_euler_targets(y: Tensor, mapped: Tensor, dt: float) -> Tensor:
    """``y + dt (mapped - y)``: one forward-Euler step of the flow ``dy/dt = T(y) - y`` (detached)."""
    dt = check_positive("dt", dt)
    check_tensor("y", y, allow_empty=True, finite=False)
    check_tensor("mapped", mapped, allow_empty=True, finite=False)
    if y.shape != mapped.shape:
        raise ValueError(f"y and mapped must have the same shape, got {tuple(y.shape)} and {tuple(mapped.shape)}")
    return (y + dt * (mapped - y)).detach()


@torch.no_grad()
def minibatch_ot_targets(generated: Tensor, data: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """Forward-Euler targets with ``T`` the exact minibatch OT map (barycentric projection of ``ot.emd``).

    ``generated`` and ``data`` are batches of any per-sample shape (flattened for the OT problem).
    Returns ``(targets, w2)``: targets of ``generated``'s shape and the minibatch ``W2`` between the
    two batches, ``sqrt(mean ||T(y) - y||^2)`` (exact for equal batch sizes, where the plan is a
    matching).
    """
    dt = check_positive("dt", dt)
    _batches(generated, data, finite=True)
    y = generated.detach().flatten(1)
    x = data.detach().flatten(1).to(y.dtype)
    mapped = barycentric_map(y, x)
    w2 = (mapped - y).square().sum(1).mean().sqrt()
    return forward_euler_targets(y, mapped, dt).reshape(generated.shape), w2


def semi_dual_loss(potential: Callable[[Tensor], Tensor], generated: Tensor, data: Tensor) -> Tensor:
    r"""Negative semi-dual of ``W2^2 / 2`` with a minibatch c-transform (to be minimised over ``phi``).

    ``W2^2(mu, nu) / 2 = max_phi E_mu phi(y) + E_nu phi^c(x)`` with
    ``phi^c(x) = min_y ||x - y||^2 / 2 - phi(y)``, the minimum taken over the generated batch.
    The maximiser gives the optimal map ``T(y) = y - grad phi(y)`` from ``mu`` (generated) to ``nu``.
    """
    check_callable("potential", potential)
    _batches(generated, data)
    y = generated.detach().flatten(1)
    x = data.detach().flatten(1).to(y.dtype)
    phi = potential(generated.detach()).reshape(-1)
    cost = cost_matrix(x, y, 2) / 2  # (m data, n generated)
    phi_c = (cost - phi.unsqueeze(0)).min(dim=1).values
    return -(phi.mean() + phi_c.mean())


def w2gan_dual_loss(
    phi: Callable[[Tensor], Tensor],
    psi: Callable[[Tensor], Tensor],
    data: Tensor,
    generated: Tensor,
    penalty: float,
) -> Tensor:
    r"""Negative W2-GAN objective (to be minimised over the potential pair ``(phi, psi)``).

    The Kantorovich dual of ``W2^2 / 2`` with cost ``c(x, y) = ||x - y||^2 / 2``, its constraint
    ``phi(x) + psi(y) <= c(x, y)`` replaced by a quadratic penalty on independent pairs
    ``(x_i, y_i) ~ P (x) mu`` (Leygonie et al. 2019, arXiv:1906.09691, eq. (5): the L2-regularised
    dual of Seguy et al. 2018, ``penalty = 1 / (4 eps)``):

        max_{phi, psi}  mean_i phi(x_i) + mean_i psi(y_i) - penalty * mean_i (phi(x_i) + psi(y_i) - c(x_i, y_i))_+^2,

    ``x`` the data batch, ``y`` the generated batch (pairs formed by position: the two batches are
    independent draws, so position pairing samples the product measure). At the optimum
    ``psi`` is the potential on the generated side and the optimal map is ``T(y) = y - grad psi(y)``
    (:func:`adversarial_map`). Returns ``-objective``.
    """
    check_callable("phi", phi)
    check_callable("psi", psi)
    check_tensor("data", data, item="sample", finite=False)
    check_tensor("generated", generated, item="sample", finite=False)
    penalty = check_positive("penalty", penalty, allow_zero=True)
    x = data.detach()
    y = generated.detach().to(x.dtype) if generated.dtype != x.dtype else generated.detach()
    if x.shape != y.shape:
        raise ValueError(f"data and generated batches must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    u, v = phi(x).reshape(-1), psi(y).reshape(-1)
    cost = 0.5 * (x - y).flatten(1).square().sum(1)
    violation = torch.relu(u + v - cost)
    return -(u.mean() + v.mean()) + penalty * violation.square().mean()


def adversarial_map(psi: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """``T(y) = y - grad psi(y)``: the transport map of the generated-side W2-GAN potential (detached)."""
    return potential_map(check_callable("psi", psi), y)


def potential_map(potential: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """``T(y) = y - grad phi(y)`` for a learned potential ``phi`` (detached)."""
    check_callable("potential", potential)
    check_tensor("y", y, allow_empty=True, allow_integer=False, finite=False)
    x = y.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(potential(x).sum(), x)
    return (x - grad).detach()
