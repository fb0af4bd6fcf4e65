"""Variational (dual) forms of f-divergences, and the one-sided gradient penalty that makes them
Wasserstein-1 proximals.

For distributions ``P`` (generated) and ``Q`` (data) and a convex ``f`` with ``f(1) = 0``,

    D_f(P || Q) = sup_phi  E_P[phi] - E_Q[f*(phi)]                  (f* the convex conjugate of f).

Restricting ``phi`` to ``L``-Lipschitz functions gives the Wasserstein-1 proximal of ``D_f``,

    D_f^L(P || Q) = inf_R { D_f(R || Q) + L W_1(P, R) } = sup_{phi L-Lipschitz} E_P[phi] - E_Q[f*(phi)],

which stays finite for mutually singular ``P`` and ``Q`` (data on a manifold): this is the W1
proximal of W1 (+) W2 proximal flows (Gu, Katsoulakis, Rey-Bellet, Zhang, arXiv:2407.11901;
the ``(f, Gamma)``-divergences of Birrell et al., arXiv:2011.05953). The Lipschitz bound is
enforced softly by the one-sided gradient penalty :func:`lipschitz_penalty`.

Every ``*_dual`` function below returns the objective ``E_P[phi] - (Q-term)`` for discriminator
scores ``phi_p = phi(x ~ P)`` and ``phi_q = phi(x ~ Q)``: the discriminator maximises it, the
generator minimises ``E_P[phi]`` (the only term that depends on it). It is a lower bound on the
divergence for every ``phi`` and equals it at the optimal ``phi* = f'(dP/dQ)``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from lightning_wass._validation import check_callable, check_positive, check_tensor
from lightning_wass.functional.penalties import input_gradient_norms, interpolate

DIVERGENCES: tuple[str, ...] = ("kl", "reverse_kl", "alpha")
"""Names accepted by :func:`f_divergence_dual`."""

__all__ = [
    "DIVERGENCES",
    "alpha_dual",
    "f_divergence_dual",
    "kl_dual",
    "lipschitz_penalty",
    "reverse_kl_dual",
]


def _scores(name: str, phi: Tensor) -> Tensor:
    if not isinstance(phi, Tensor):
        raise TypeError(f"{name} must be a tensor of discriminator scores, shape (N,) or (N, 1); got {type(phi).__name__}")
    if phi.dim() == 2 and phi.shape[1] == 1:
        phi = phi[:, 0]
    if phi.dim() != 1 or phi.numel() == 0:
        raise ValueError(f"{name} must hold one discriminator score per sample, shape (N,) or (N, 1); got {tuple(phi.shape)}")
    return phi


def kl_dual(phi_p: Tensor, phi_q: Tensor) -> Tensor:
    """Donsker-Varadhan form of ``KL(P || Q)``: ``E_P[phi] - log E_Q[exp(phi)]``.

    Tighter than the plain f-dual ``E_P[phi] - E_Q[exp(phi - 1)]`` and invariant to shifting
    ``phi``; optimal at ``phi* = log dP/dQ + c``. ``log mean exp`` is computed by ``logsumexp``.
    """
    phi_p, phi_q = _scores("phi_p", phi_p), _scores("phi_q", phi_q)
    return phi_p.mean() - (torch.logsumexp(phi_q, dim=0) - math.log(phi_q.numel()))


def reverse_kl_dual(phi_p: Tensor, phi_q: Tensor, eps: float = 1e-6) -> Tensor:
    """Dual form of the reverse KL ``KL(Q || P) = D_f(P || Q)`` with ``f(u) = -log u``.

    ``f*(y) = -1 - log(-y)`` for ``y < 0``, so the objective is ``E_P[phi] + 1 + E_Q[log(-phi)]``,
    optimal at ``phi* = -dQ/dP``. As in the official code, ``log(-phi)`` is evaluated as
    ``log(relu(-phi) + eps)``: non-negative scores are heavily penalised instead of producing NaN.
    """
    eps = check_positive("eps", eps)
    phi_p, phi_q = _scores("phi_p", phi_p), _scores("phi_q", phi_q)
    return phi_p.mean() + 1.0 + torch.log(torch.relu(-phi_q) + eps).mean()


def alpha_dual(phi_p: Tensor, phi_q: Tensor, order: float = 2.0) -> Tensor:
    """Dual form of the alpha-divergence ``D_a(P || Q) = E_Q[((dP/dQ)^a - 1)] / (a (a - 1))``, ``a > 1``.

    ``f(u) = (u^a - 1) / (a (a - 1))`` has the conjugate
    ``f*(y) = ((a - 1) y)_+^(a / (a - 1)) / a + 1 / (a (a - 1))``, so the objective is
    ``E_P[phi] - E_Q[f*(phi)]``, optimal at ``phi* = (dP/dQ)^(a - 1) / (a - 1)``. ``a = 2`` is half
    the Pearson chi^2 divergence.
    """
    a = check_positive("order", order)
    if a <= 1.0:
        raise ValueError(f"order of the alpha-divergence must be > 1, got {order!r}")
    phi_p, phi_q = _scores("phi_p", phi_p), _scores("phi_q", phi_q)
    f_star = torch.relu((a - 1.0) * phi_q).pow(a / (a - 1.0)) / a + 1.0 / (a * (a - 1.0))
    return phi_p.mean() - f_star.mean()


def f_divergence_dual(name: str, phi_p: Tensor, phi_q: Tensor, *, order: float = 2.0) -> Tensor:
    """The dual objective of the divergence ``name`` (one of :data:`DIVERGENCES`); ``order`` is the
    ``a`` of ``"alpha"``."""
    if not isinstance(name, str) or name not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(repr(d) for d in DIVERGENCES)}; got name={name!r}")
    if name == "kl":
        return kl_dual(phi_p, phi_q)
    if name == "reverse_kl":
        return reverse_kl_dual(phi_p, phi_q)
    return alpha_dual(phi_p, phi_q, order)


def lipschitz_penalty(
    discriminator: torch.nn.Module,
    real: Tensor,
    fake: Tensor,
    L: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One-sided gradient penalty ``mean_i max(0, ||grad phi(x_hat_i)||^2 - L^2)``.

    ``x_hat_i = u_i real_i + (1 - u_i) fake_i`` with ``u_i ~ U[0, 1]`` (per sample), as in the official
    W1 (+) W2 code (arXiv:2407.11901). Unlike WGAN-GP's two-sided ``(||grad|| - 1)^2`` it only
    penalises slopes above ``L``. Differentiable in the discriminator's parameters.
    """
    L = check_positive("L", L)
    check_callable("discriminator", discriminator)
    check_tensor("real", real, item="sample", finite=False)
    check_tensor("fake", fake, item="sample", finite=False)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    u = torch.rand(real.shape[0], generator=generator, device=real.device, dtype=real.dtype)
    check = partial(_scores, "discriminator output")
    norms = input_gradient_norms(discriminator, interpolate(real, fake, u), check_scores=check)
    return torch.relu(norms.square() - L**2).mean()
