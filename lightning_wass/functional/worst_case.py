"""The math of worst-case generation for Wasserstein DRO by particle GDA (no Lightning here).

Zhu, Cheng, Xie, Zhu, "Worst-case generation via minimax optimization in Wasserstein space",
arXiv 2512.08176. The penalty form of Wasserstein DRO, for ``gamma > 0``::

    min_theta max_T  L(theta, T) = E_{x~P}[ loss(theta, T(x)) - ||T(x) - x||^2 / (2 gamma) ]

On a sample ``x_1..x_n`` the map ``T`` is represented by particles ``v_i = T(x_i)``. The partial
derivatives are ``d_theta L = (1/n) sum_i d_theta loss(theta, v_i)`` and
``d_T L(x_i) = d_v loss(theta, v_i) - (v_i - x_i) / gamma`` (the per-particle ascent direction).
Gradient descent-ascent (GDA) with heavy-ball momentum moves ``theta`` down and each ``v_i`` up;
:func:`heavy_ball_ascent` is the particle half, ``torch.optim.SGD(momentum=mu, dampening=0)``
(``h <- mu h + grad; theta <- theta - lr h``) the model half.

Optimality is measured by the two gradient norms of :func:`gradient_norms` over all particles,
and for linear regression with squared loss the fixed point is known in closed form
(:func:`linear_regression_worst_case`, :func:`robust_linear_regression`).

Everything here is plain PyTorch; :class:`lightning_wass.WorstCaseGenerator` orchestrates it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_wass._validation import check_choice, check_int, check_positive
from lightning_wass.nn.modes import eval_mode

LossFn = Callable[[Tensor, Tensor | None], Tensor]
"""A per-sample loss ``loss(output, target) -> Tensor`` of shape ``(N,)``."""

LOSSES = ("mse", "cross_entropy")


def mse_per_sample(output: Tensor, target: Tensor | None) -> Tensor:
    """Squared error of each sample, averaged over the output features: ``mean_j (f_j - y_j)^2``.

    For one output this is ``(f - y)^2``, the loss of the closed form in DESIGN.md 3.1. Targets of
    shape ``(N,)`` are matched to outputs of shape ``(N, 1)``.
    """
    if target is None:
        raise ValueError("loss 'mse' needs targets: the batch has no 'y'")
    if not target.is_floating_point():
        raise ValueError(f"loss 'mse' needs float targets, got dtype {target.dtype}")
    if output.shape != target.shape:
        if output.ndim >= 1 and target.ndim >= 1 and output.shape[0] == target.shape[0] and output.numel() == target.numel():
            target = target.reshape(output.shape)
        else:
            raise ValueError(
                f"loss 'mse': the model output of shape {tuple(output.shape)} does not fit targets of shape "
                f"{tuple(target.shape)} (they must have the same shape, or (N, 1) outputs for (N,) targets)"
            )
    return (output - target.to(output.dtype)).pow(2).reshape(output.shape[0], -1).mean(dim=1)


def cross_entropy_per_sample(output: Tensor, target: Tensor | None) -> Tensor:
    """Cross-entropy ``-log softmax(f)_y`` of each sample; ``output`` are logits ``(N, C)``, ``target`` labels ``(N,)``."""
    if target is None:
        raise ValueError("loss 'cross_entropy' needs class labels: the batch has no 'y'")
    if output.ndim != 2 or output.shape[1] < 2:
        raise ValueError(
            f"loss 'cross_entropy' needs model outputs of shape (N, num_classes >= 2), got {tuple(output.shape)}"
        )
    if target.is_floating_point() or target.ndim != 1 or target.shape[0] != output.shape[0]:
        raise ValueError(
            f"loss 'cross_entropy' needs integer labels of shape ({output.shape[0]},), got dtype {target.dtype} "
            f"and shape {tuple(target.shape)}"
        )
    return F.cross_entropy(output, target.long(), reduction="none")


def resolve_loss(loss: str | LossFn) -> LossFn:
    """``"mse"``, ``"cross_entropy"`` or a callable ``loss(output, target) -> (N,)`` per-sample losses."""
    if callable(loss):
        return loss
    check_choice("loss", loss, LOSSES)
    return mse_per_sample if loss == "mse" else cross_entropy_per_sample


def checked_losses(loss_fn: LossFn, output: Tensor, target: Tensor | None, batch_size: int) -> Tensor:
    """Apply ``loss_fn`` and check that it returned one loss per sample."""
    losses = loss_fn(output, target)
    if not isinstance(losses, Tensor) or losses.shape != (batch_size,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"the loss must return per-sample losses of shape ({batch_size},), got {shape}")
    return losses


def squared_distance(v: Tensor, x: Tensor) -> Tensor:
    """``||v_i - x_i||^2`` for each sample (summed over all feature dimensions), shape ``(N,)``."""
    return (v - x).pow(2).reshape(v.shape[0], -1).sum(dim=1)


def transport_penalty(v: Tensor, x: Tensor, gamma: float) -> Tensor:
    """The Wasserstein penalty ``||v_i - x_i||^2 / (2 gamma)`` of each particle, shape ``(N,)``."""
    return squared_distance(v, x) / (2.0 * gamma)


def ascent_direction(grad_v: Tensor, v: Tensor, x: Tensor, gamma: float) -> Tensor:
    """``d_T L(x_i) = d_v loss(theta, v_i) - (v_i - x_i) / gamma``: the particles' gradient of the objective."""
    return grad_v - (v - x) / gamma


def heavy_ball_ascent(v: Tensor, momentum_buffer: Tensor, direction: Tensor, lr: float, momentum: float) -> tuple[Tensor, Tensor]:
    """One heavy-ball ascent step: ``g <- mu g + d``, ``v <- v + lr g``. Returns the new ``(v, g)``.

    This is ``torch.optim.SGD(momentum=mu, dampening=0)`` run uphill (its buffer starts at the first
    gradient, which is ``mu * 0 + d``), written out because it acts on a subset of the rows of a
    table.
    """
    new_buffer = momentum_buffer * momentum + direction
    return v + lr * new_buffer, new_buffer


def gradient_norms(
    model: nn.Module,
    loss_fn: LossFn,
    samples: Tensor,
    origins: Tensor,
    targets: Tensor | None,
    gamma: float,
    *,
    parameters: Sequence[Tensor] = (),
    weight_decay: float = 0.0,
    chunk_size: int = 4096,
    rows: Tensor | slice | None = None,
    total: int | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The optimality measures of the GDA fixed point over all particles (paper's GN):

        GN_theta = || (1/n) sum_i d_theta loss(theta, v_i) + wd * theta ||
        GN_T     = sqrt( (1/n) sum_i || d_v loss(theta, v_i) - (v_i - x_i) / gamma ||^2 )

    Args:
        model, loss_fn: the model and its per-sample loss.
        samples, origins, targets: the particles ``v``, the data ``x`` and the targets ``y`` (or None).
        gamma: the penalty parameter.
        parameters: the trained parameters ``theta`` (empty: ``GN_theta`` is not computed, as for
            a frozen model).
        weight_decay: the model optimizer's L2 weight decay, part of its objective.
        chunk_size: particles per forward/backward pass. The evaluation streams over the particles
            in chunks (rows given as indices are gathered one chunk at a time), so its memory is
            one chunk's activations plus the parameter-sized sums, flat in ``n``; the result does
            not depend on ``chunk_size`` (up to the floating-point order of the sums).
        rows: evaluate only these rows (a shard, indices or a slice; ``reduce`` then sums the
            shards) and divide by ``total`` particles.
        reduce: sums a tensor across processes (``None`` = a single process).

    Uses ``torch.autograd.grad``, so no ``.grad`` is touched (safe inside a DDP step). The model
    runs in eval mode (restored after): BatchNorm uses its running statistics, dropout is off, and
    the evaluation changes neither the statistics nor the random state.
    """
    check_int("chunk_size", chunk_size, minimum=1)
    n = int(samples.shape[0]) if total is None else int(total)
    if isinstance(rows, slice):  # a strided view: no copy
        samples, origins = samples[rows], origins[rows]
        targets = None if targets is None else targets[rows]
        rows = None
    count = int(samples.shape[0]) if rows is None else int(rows.shape[0])
    params = [p for p in parameters]
    param_sums = [torch.zeros_like(p) for p in params]
    ascent_sq = samples.new_zeros(())
    with torch.enable_grad(), eval_mode(model):  # eval: no BatchNorm statistics update, no dropout
        for start in range(0, count, chunk_size):
            # one chunk of rows at a time (gathered here when rows are given): memory flat in n
            pick = slice(start, start + chunk_size) if rows is None else rows[start : start + chunk_size]
            v = samples[pick].detach().requires_grad_(True)
            x = origins[pick]
            y = None if targets is None else targets[pick]
            losses = checked_losses(loss_fn, model(v), y, v.shape[0])
            grads = torch.autograd.grad(losses.sum(), [v, *params], allow_unused=True)
            grad_v = torch.zeros_like(v) if grads[0] is None else grads[0]
            ascent_sq = ascent_sq + ascent_direction(grad_v, v.detach(), x, gamma).pow(2).sum()
            for acc, g in zip(param_sums, grads[1:]):
                if g is not None:
                    acc.add_(g)
    flat = torch.cat([ascent_sq.reshape(1)] + [g.reshape(-1).to(ascent_sq.dtype) for g in param_sums])
    if reduce is not None:
        flat = reduce(flat)
    result = {"gn_T": (flat[0] / n).clamp_min(0).sqrt()}
    if params:
        offset, parts = 1, []
        for p in params:
            g = flat[offset : offset + p.numel()].reshape(p.shape) / n
            if weight_decay:
                g = g + weight_decay * p.detach().to(g.dtype)
            parts.append(g.reshape(-1))
            offset += p.numel()
        result["gn_theta"] = torch.linalg.vector_norm(torch.cat(parts))
    return result


# ----------------------------------------------------------------------------- closed form
def linear_regression_worst_case(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor | float, gamma: float) -> Tensor:
    """The exact inner maximiser for a linear model and squared loss, features-only transport:

        v_i = x_i + 2 gamma r_i w / (1 - 2 gamma ||w||^2),   r_i = w^T x_i + b - y_i,

    the unique maximiser of ``(w^T v + b - y_i)^2 - ||v - x_i||^2 / (2 gamma)`` while
    ``2 gamma ||w||^2 < 1`` (the objective is strongly concave in ``v`` exactly then).
    """
    gamma = check_positive("gamma", gamma)
    w = weight.reshape(-1)
    c = 1.0 - 2.0 * gamma * float(w.pow(2).sum())
    if c <= 0:
        raise ValueError(f"the inner maximum is unbounded: 2 gamma ||w||^2 = {1 - c:.4g} >= 1; use a smaller gamma")
    residual = x.reshape(x.shape[0], -1) @ w + bias - y.reshape(-1)
    return x + (2.0 * gamma / c) * residual[:, None] * w


def robust_linear_regression(x: Tensor, y: Tensor, gamma: float, *, tol: float = 1e-13, max_iter: int = 10_000) -> tuple[Tensor, Tensor]:
    """The saddle point ``(w*, b*)`` of the penalised DRO problem for linear regression, squared loss.

    Substituting the inner maximiser gives the robust objective ``mean_i r_i^2 / (1 - 2 gamma ||w||^2)``,
    whose stationarity conditions are ``b = mean(y - X w)`` and ``(S + lambda(w) I) w = s`` with
    ``S = cov(X)``, ``s = cov(X, y)`` and ``lambda(w) = 2 gamma mean(r^2) / (1 - 2 gamma ||w||^2)``.
    Solved by the fixed-point iteration on ``lambda`` in float64; returns ``(w, b)``.
    """
    gamma = check_positive("gamma", gamma)
    x64 = x.reshape(x.shape[0], -1).double()
    y64 = y.reshape(-1).double()
    xc = x64 - x64.mean(0)
    yc = y64 - y64.mean()
    n = x64.shape[0]
    cov = xc.T @ xc / n
    cross = xc.T @ yc / n
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    w = torch.linalg.solve(cov, cross)
    for _ in range(max_iter):
        c = 1.0 - 2.0 * gamma * float(w.pow(2).sum())
        if c <= 0:
            raise ValueError("robust_linear_regression: 2 gamma ||w||^2 >= 1 along the iteration; use a smaller gamma")
        lam = 2.0 * gamma * float((xc @ w - yc).pow(2).mean()) / c
        w_next = torch.linalg.solve(cov + lam * eye, cross)
        if float((w_next - w).abs().max()) < tol:
            w = w_next
            break
        w = w_next
    else:
        raise RuntimeError("robust_linear_regression did not converge")
    b = (y64 - x64 @ w).mean()
    return w, b
