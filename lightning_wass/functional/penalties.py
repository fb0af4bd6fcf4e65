r"""Gradients of a critic at random interpolates: the one helper behind every gradient penalty.

Both Lipschitz penalties of the library are built on

    x_hat_i = u_i a_i + (1 - u_i) b_i,      g_i = grad_x f(x_hat_i),

with one weight ``u_i`` in ``[0, 1]`` per sample, and differ only in what they take of ``||g_i||``:

- WGAN-GP's two-sided penalty (Gulrajani et al. 2017, arXiv:1704.00028), ``mean_i (||g_i|| - 1)^2``
  (:func:`lightning_wass.functional.wgan.gradient_penalty`);
- the W1 proximal's one-sided penalty (arXiv:2407.11901), ``mean_i max(0, ||g_i||^2 - L^2)``
  (:func:`lightning_wass.functional.proximal_flow.lipschitz_penalty`).

The weights are the caller's (drawn from a seeded generator, so a draw is reproducible); the
gradient keeps its graph (``create_graph=True``) so that the penalty trains the critic, and is
never accumulated into any ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["interpolate", "input_gradient_norms"]


def interpolate(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """``weights_i a_i + (1 - weights_i) b_i`` (detached from ``a`` and ``b``), with ``weights`` of shape ``(n,)``."""
    w = weights.reshape(-1, *([1] * (a.ndim - 1))).to(a)
    return w * a.detach() + (1 - w) * b.detach()


def input_gradient_norms(
    critic: Callable[[Tensor], Tensor],
    points: Tensor,
    *,
    create_graph: bool = True,
    check_scores: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``||grad_x f(x_i)||_2`` for every row ``x_i`` of ``points``, shape ``(n,)``.

    With ``create_graph`` (a penalty) the norms are differentiable in the critic's weights;
    ``check_scores`` (the caller's validation of the critic's output) sees the scores before they are summed.
    """
    x = points.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scores = critic(x)
        if check_scores is not None:
            scores = check_scores(scores)
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=create_graph)
    return grad.flatten(1).norm(dim=1)
