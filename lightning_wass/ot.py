"""Wasserstein distances, exact minibatch OT plans and barycentric maps on torch tensors.

POT (Flamary et al., JMLR 2021, https://pythonot.github.io) does the solving; this module adds
what a training loop needs around it: torch tensors in and out on the input's device, input checks
that name the bad argument, weights normalised like :func:`scipy.stats.wasserstein_distance`, an
iteration cap for the exact solver that scales with the problem, and an :class:`OTConvergenceError`
instead of POT's warning plus a wrong figure when a solver did not converge.

Definitions. For empirical measures ``mu = sum_i a_i delta_{x_i}`` and ``nu = sum_j b_j delta_{y_j}``
and the ground cost ``C_ij = ||x_i - y_j||_2^p``,

    W_p(mu, nu) = ( min_{P in U(a, b)} sum_ij P_ij C_ij )^(1/p),
    U(a, b) = {P >= 0 : P 1 = a, P^T 1 = b}.

The exact value is solved by the network simplex (``ot.emd2``; Bonneel et al. 2011). The sliced
distance (Rabin et al. 2011; Bonneel et al. 2015) averages 1-D distances of random projections,
``SW_p^p = E_theta W_p^p(theta#mu, theta#nu)``, and satisfies ``SW_p <= W_p``. The Sinkhorn figure
(Cuturi 2013, arXiv:1306.0895) is the transport cost of the entropic plan
``P_eps = argmin_P <P, C> - eps H(P)``, i.e. ``(<P_eps, C>)^(1/p) >= W_p``, with
``<P_eps, C> - W_p^p <= eps (H(a) + H(b)) <= eps log(n m)`` at convergence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import ot
import torch
from torch import Tensor

from lightning_wass._validation import check_choice, check_int, check_positive, check_tensor

METHODS: tuple[str, ...] = ("exact", "sliced", "sinkhorn")
SINKHORN_METHODS: tuple[str, ...] = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized")

# POT's own cap (100,000 pivots) is far too small beyond a few hundred points: a 2,000 x 2,000
# problem in 2-D needs millions. The cap below only bounds run time on a pathological problem.
_MIN_EXACT_ITERATIONS = 1_000_000
_EXACT_ITERATIONS_PER_ENTRY = 50
_OPTIMAL = 1  # POT's result_code for an optimal network-simplex solution

__all__ = [
    "METHODS",
    "OTConvergenceError",
    "OTOptions",
    "barycentric_map",
    "cost_matrix",
    "default_num_iter_max",
    "check_ot_options",
    "check_p",
    "check_points",
    "check_weights",
    "ot_plan",
    "wasserstein_distance",
]


class OTConvergenceError(RuntimeError):
    """An OT solver stopped before reaching the optimum (or hit a numerical failure).

    Raised instead of returning a figure that is silently wrong; the message says what to change.
    """


def default_num_iter_max(n: int, m: int) -> int:
    """Iteration cap of the exact solver for an ``n x m`` problem: ``max(10^6, 50 n m)``."""
    check_int("n", n, minimum=1)
    check_int("m", m, minimum=1)
    return max(_MIN_EXACT_ITERATIONS, _EXACT_ITERATIONS_PER_ENTRY * n * m)


# ----------------------------------------------------------------------------------- input checks
def _as_points(name: str, value: object) -> Tensor:
    """Return ``value`` as a floating ``(n, d)`` tensor (``n, d >= 1``); 1-D input is read as ``(n, 1)``.

    Integer points are converted to the default float dtype; bool and complex tensors, empty or
    non-finite point sets are refused (:func:`~lightning_wass._validation.check_tensor`).
    """
    value = check_tensor(
        name, value, shape="(n, d) or (n,)", ndim=(1, 2), item="point (n >= 1, d >= 1)", finite=False
    )
    if value.dim() == 1:
        value = value.unsqueeze(1)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    elif value.dtype in (torch.float16, torch.bfloat16):
        # POT has no half-precision backend (bf16 is refused, fp16 breaks its marginal checks):
        # half inputs (from a bf16-mixed or 16-mixed run) are solved in float32.
        value = value.float()
    return check_tensor(name, value, hint="the Wasserstein distance needs finite points")


def _check_same_dimension(x: Tensor, y: Tensor) -> None:
    """``x`` (n, d) and ``y`` (m, d) must share ``d``."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same number of dimensions d; got x of shape {tuple(x.shape)} "
            f"and y of shape {tuple(y.shape)}"
        )


def check_points(x: object, y: object) -> tuple[Tensor, Tensor]:
    """Check two point clouds and bring them to one floating dtype: ``(n, d)`` and ``(m, d)`` tensors.

    1-D input is read as ``(n, 1)``; integer points become the default float dtype and half
    precision becomes ``float32`` (POT has no half backend); both are promoted to a common dtype.
    ``TypeError`` / ``ValueError`` naming ``x`` or ``y`` for a non-tensor, a bool or complex dtype,
    no point or no coordinate, NaN / Inf, different ``d`` or different devices. This is the input
    check of :func:`wasserstein_distance`, :func:`ot_plan` and :func:`barycentric_map`.
    """
    x = _as_points("x", x)
    y = _as_points("y", y)
    _check_same_dimension(x, y)
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device; got x on {x.device} and y on {y.device}")
    if x.dtype != y.dtype:
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
    return x, y


def check_weights(value: object, like: Tensor, name: str = "a") -> Tensor:
    """Return the histogram ``value`` of the points ``like`` normalised to sum 1 (``1/n`` when ``None``).

    ``a_i = value_i / sum_j value_j`` for the ``n = like.shape[0]`` points, in ``like``'s dtype and
    on its device. Weights are normalised rather than required to sum to 1 (as in
    ``scipy.stats.wasserstein_distance``), so counts or unnormalised masses can be passed directly.
    ``ValueError`` naming ``name`` for a wrong shape or device, NaN / Inf, a negative weight or a
    zero sum.
    """
    like = check_tensor("like", like, shape="(n, d)", ndim=(1, 2), allow_integer=False, finite=False)
    n = like.shape[0]
    if value is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    value = check_tensor(name, value, shape=f"({n},) or None", finite=False)
    if value.dim() != 1 or value.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one weight a point), got shape {tuple(value.shape)}")
    if value.device != like.device:
        raise ValueError(f"{name} must be on the points' device {like.device}, got {value.device}")
    value = check_tensor(name, value.to(like.dtype), hint="weights must be finite and non-negative")
    if bool((value < 0).any()):
        raise ValueError(f"{name} must be non-negative, got a minimum of {float(value.min())}")
    total = value.sum()
    if not float(total) > 0:
        raise ValueError(f"{name} must have a positive sum, got {float(total)}")
    return value / total


def check_p(p: object) -> float:
    """The order ``p`` of ``W_p``: a finite number ``>= 1``."""
    p = check_positive("p", p)
    if p < 1:
        raise ValueError(f"p must be >= 1 (W_p is a distance only for p >= 1), got {p}")
    return p


# -------------------------------------------------------------------------------------- cost matrix
def cost_matrix(x: Tensor, y: Tensor, p: float = 2) -> Tensor:
    """Ground cost ``C_ij = ||x_i - y_j||_2^p`` of shape ``(n, m)``, differentiable in ``x`` and ``y``.

    For ``p = 2`` it is ``|x_i|^2 + |y_j|^2 - 2 <x_i, y_j>`` in one ``addmm`` (clamped at 0, as
    ``ot.dist`` does); otherwise ``torch.cdist(x, y) ** p``. Inputs are floating ``(n, d)`` and
    ``(m, d)`` tensors of one dtype; their type, shape and dtype are checked here (``TypeError`` /
    ``ValueError`` naming ``x`` or ``y``), their values are not (no host sync: it runs in training
    steps; use :func:`wasserstein_distance` or :func:`ot_plan` for fully checked entry).
    """
    for name, value in (("x", x), ("y", y)):
        check_tensor(name, value, shape="(n, d)", ndim=2, allow_integer=False, allow_empty=True, finite=False)
    _check_same_dimension(x, y)
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    p = check_positive("p", p)
    if p == 2:
        x_sq = x.square().sum(1, keepdim=True)
        y_sq = y.square().sum(1).unsqueeze(0)
        return torch.addmm(x_sq + y_sq, x, y.T, beta=1.0, alpha=-2.0).clamp_min_(0.0)
    distances = torch.cdist(x, y)
    return distances if p == 1 else distances.pow(p)


# ------------------------------------------------------------------------------------ exact solver
def _emd(a: Tensor, b: Tensor, cost: Tensor, num_iter_max: int | None, *, plan: bool) -> Tensor:
    """Run ``ot.emd`` (plan) or ``ot.emd2`` (cost) and raise :class:`OTConvergenceError` if not optimal."""
    n, m = cost.shape
    cap = default_num_iter_max(n, m) if num_iter_max is None else num_iter_max
    with warnings.catch_warnings():
        # POT warns and returns the last iterate; we raise below instead.
        warnings.filterwarnings("ignore", message="numItermax reached", category=UserWarning)
        if plan:
            result, log = ot.emd(a, b, cost, numItermax=cap, log=True)
        else:
            result, log = ot.emd2(a, b, cost, numItermax=cap, log=True)
    code = int(log["result_code"])
    if code != _OPTIMAL:
        reason = log.get("warning") or f"result code {code}"
        raise OTConvergenceError(
            f"exact OT (network simplex, {n} x {m}) did not reach the optimum: {reason} "
            f"(num_iter_max={cap}); increase num_iter_max, or use method='sliced' or 'sinkhorn' "
            "for an approximation"
        )
    return result


# ------------------------------------------------------------------------------ public functions
def wasserstein_distance(
    x: Tensor,
    y: Tensor,
    p: float = 2,
    method: Literal["exact", "sliced", "sinkhorn"] = "exact",
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    num_projections: int | None = None,
    reg: float | None = None,
    num_iter_max: int | None = None,
    stop_threshold: float | None = None,
    sinkhorn_method: str | None = None,
    seed: int | None = None,
) -> Tensor:
    """Wasserstein distance ``W_p`` (not ``W_p^p``) between two weighted point clouds.

    ``W_p(mu, nu) = (min_{P in U(a, b)} sum_ij P_ij ||x_i - y_j||^p)^(1/p)`` for
    ``mu = sum_i a_i delta_{x_i}``, ``nu = sum_j b_j delta_{y_j}``.

    Args:
        x: ``(n, d)`` points of the first measure (``(n,)`` is read as ``(n, 1)``).
        y: ``(m, d)`` points of the second measure, same ``d`` and device as ``x``.
        p: order ``p >= 1`` of the distance; the ground cost is ``||x - y||_2^p``.
        method: ``"exact"``: network simplex (``ot.emd2``; in 1-D the sorted-sample formula
            ``ot.wasserstein_1d``, which is exact and O(n log n)). ``"sliced"``: Monte-Carlo sliced
            distance ``(mean_k W_p^p(<theta_k, x>, <theta_k, y>))^(1/p) <= W_p`` over random unit
            directions (``ot.sliced_wasserstein_distance``). ``"sinkhorn"``: ``(<P_eps, C>)^(1/p)``,
            the transport cost of the entropic plan (``ot.sinkhorn2``; Cuturi 2013, arXiv:1306.0895),
            which is ``>= W_p`` and within ``eps log(n m)`` of ``W_p^p``. It is *not* the Sinkhorn
            divergence and does not vanish for ``x == y``.
        a, b: non-negative weights of the points (default uniform); normalised to sum 1.
        num_projections: sliced only; number of random directions (default 50, as POT).
        reg: sinkhorn only; entropic regularisation ``eps`` in cost units. Default ``None`` means
            ``0.05 * mean(C)``, which keeps ``exp(-C / eps)`` representable whatever the data's scale.
        num_iter_max: exact: network-simplex iteration cap (default
            :func:`default_num_iter_max`, ``max(10^6, 50 n m)``); sinkhorn: iteration cap
            (default 10,000; POT's 1,000 left 2 of 10 random 200-point
            pairs short of ``stop_threshold``).
        stop_threshold: sinkhorn only; stop when the marginal violation ``||P^T 1 - b||_2`` is below
            it (default ``1e-6``, reachable in float32; POT's own ``1e-9`` is often not reached in
            1,000 iterations, and in the log domain not at all).
        sinkhorn_method: sinkhorn only; ``"sinkhorn"`` (default), ``"sinkhorn_log"`` (log domain,
            stable for small ``reg``) or ``"sinkhorn_stabilized"``.
        seed: sliced only; seed of the directions (POT's generator). ``None`` draws them from
            torch's global generator, so ``lightning.seed_everything`` makes the figure reproducible.

    Returns:
        A 0-dim tensor on the input's device and dtype. It is differentiable in ``x`` and ``y`` when
        they require grad (POT's torch backend supplies the gradient of the optimal cost).

    Raises:
        TypeError / ValueError: bad input, naming the argument: not a tensor, a bool or complex
            dtype (integer points and weights are converted to float), no point or no coordinate,
            different ``d``, NaN / Inf, weights of the wrong shape, negative or summing to 0.
        OTConvergenceError: the exact solver hit ``num_iter_max``, or Sinkhorn did not reach
            ``stop_threshold`` in ``num_iter_max`` iterations or failed numerically.
    """
    method = check_choice("method", method, METHODS)
    p = check_p(p)
    x, y = check_points(x, y)
    options = OTOptions(method, num_projections, reg, num_iter_max, stop_threshold, sinkhorn_method, seed)

    if method == "sliced":
        return _sliced(x, y, p, a, b, options)

    a_w = check_weights(a, x, "a")
    b_w = check_weights(b, y, "b")
    if method == "exact":
        if x.shape[1] == 1:
            # (n, 1) columns: POT's batched 1-D path (1-D tensors trigger a torch deprecation in POT).
            cost = ot.wasserstein_1d(x, y, a_w, b_w, p=p)[0]
        else:
            cost = _emd(a_w, b_w, cost_matrix(x, y, p), options.num_iter_max, plan=False)
        return cost.clamp_min(0.0).pow(1.0 / p)
    return _sinkhorn(x, y, p, a_w, b_w, options)


# Which methods use each solver option (an option given to another method is refused).
_OPTION_METHODS: dict[str, tuple[str, ...]] = {
    "num_projections": ("sliced",),
    "seed": ("sliced",),
    "reg": ("sinkhorn",),
    "stop_threshold": ("sinkhorn",),
    "sinkhorn_method": ("sinkhorn",),
    "num_iter_max": ("exact", "sinkhorn"),
}


@dataclass(frozen=True)
class OTOptions:
    """The solver options of one Wasserstein method, checked once: what :func:`wasserstein_distance`
    and :class:`~lightning_wass.metrics.WassersteinDistance` take as keyword arguments.

    ``None`` is each option's default (documented in :func:`wasserstein_distance`): sliced uses
    ``num_projections`` (50) and ``seed``; sinkhorn (Cuturi 2013, arXiv:1306.0895) uses ``reg``
    (``0.05 mean(C)``), ``num_iter_max`` (10,000), ``stop_threshold`` (1e-6) and
    ``sinkhorn_method`` ("sinkhorn"); exact uses ``num_iter_max`` (``max(10^6, 50 n m)``).

    Raises ``ValueError`` for an option given to a method that does not use it, and ``TypeError`` /
    ``ValueError`` naming the option for a bad value.

    Example::

        options = OTOptions("sinkhorn", reg=0.1)
        wasserstein_distance(x, y, 2, options.method, **options.solver_kwargs())
    """

    method: Literal["exact", "sliced", "sinkhorn"] = "exact"
    num_projections: int | None = None
    reg: float | None = None
    num_iter_max: int | None = None
    stop_threshold: float | None = None
    sinkhorn_method: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        for name, methods in _OPTION_METHODS.items():
            if getattr(self, name) is not None and self.method not in methods:
                allowed = " or ".join(repr(m) for m in methods)
                raise ValueError(f"{name} applies only to method={allowed}; got method={self.method!r}")
        for name in ("num_projections", "num_iter_max"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        for name in ("reg", "stop_threshold"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.sinkhorn_method is not None:
            check_choice("sinkhorn_method", self.sinkhorn_method, SINKHORN_METHODS)
        if self.seed is not None:
            check_int("seed", self.seed)

    def solver_kwargs(self) -> dict[str, Any]:
        """The six solver options as keyword arguments of :func:`wasserstein_distance` (``method`` excluded)."""
        return {name: getattr(self, name) for name in _OPTION_METHODS}


def check_ot_options(
    method: str,
    num_projections: int | None = None,
    reg: float | None = None,
    num_iter_max: int | None = None,
    stop_threshold: float | None = None,
    sinkhorn_method: str | None = None,
    seed: int | None = None,
) -> OTOptions:
    """Check the solver options of :func:`wasserstein_distance` (and the metric built on it).

    ``ValueError`` for an option given to a method that does not use it; ``TypeError`` /
    ``ValueError`` naming the option for a bad value (``None`` is each option's default).
    Returns them as one :class:`OTOptions`.
    """
    return OTOptions(method, num_projections, reg, num_iter_max, stop_threshold, sinkhorn_method, seed)


def _sliced(x: Tensor, y: Tensor, p: float, a: Tensor | None, b: Tensor | None, options: OTOptions) -> Tensor:
    k = 50 if options.num_projections is None else options.num_projections
    seed = options.seed
    a_w = None if a is None else check_weights(a, x, "a")
    b_w = None if b is None else check_weights(b, y, "b")
    projections = None
    if seed is None:
        # Draw from torch's global generator (seeded by seed_everything) rather than POT's own.
        directions = torch.randn(x.shape[1], k, dtype=x.dtype, device=x.device)
        projections = directions / directions.norm(dim=0, keepdim=True)
    else:
        seed = check_int("seed", seed, minimum=0)
    return ot.sliced_wasserstein_distance(x, y, a_w, b_w, n_projections=k, p=p, projections=projections, seed=seed)


def _sinkhorn(x: Tensor, y: Tensor, p: float, a: Tensor, b: Tensor, options: OTOptions) -> Tensor:
    solver = "sinkhorn" if options.sinkhorn_method is None else options.sinkhorn_method
    iterations = 10_000 if options.num_iter_max is None else options.num_iter_max
    threshold = 1e-6 if options.stop_threshold is None else float(options.stop_threshold)
    reg = options.reg
    cost = cost_matrix(x, y, p)
    if reg is None:
        mean_cost = float(cost.detach().mean())
        if mean_cost == 0.0:  # every x_i equals every y_j: the (entropic) cost is 0
            return cost.sum() * 0.0
        eps = 0.05 * mean_cost
    else:
        eps = check_positive("reg", reg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*numerical errors.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*did not converge.*", category=UserWarning)
        value, log = ot.sinkhorn2(
            a, b, cost, eps, method=solver, numItermax=iterations, stopThr=threshold, log=True, warn=False
        )
    errors = log.get("err", [])
    final_error = float(errors[-1]) if len(errors) else math.inf
    if not bool(torch.isfinite(value)) or not final_error < threshold:
        raise OTConvergenceError(
            f"Sinkhorn ({solver}, reg={eps:.4g}, {x.shape[0]} x {y.shape[0]}) did not converge: marginal "
            f"error {final_error:.3g} > stop_threshold {threshold:.3g} after at most {iterations} iterations "
            f"(W_p estimate {float(value.clamp_min(0.0)) ** (1.0 / p):.6g}); increase num_iter_max or reg, or use sinkhorn_method='sinkhorn_log'"
        )
    return value.clamp_min(0.0).pow(1.0 / p)


@torch.no_grad()
def ot_plan(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    p: float = 2,
    *,
    num_iter_max: int | None = None,
) -> Tensor:
    """Exact optimal transport plan ``P`` of shape ``(n, m)`` between two (minibatch) point clouds.

    ``P = argmin_{P in U(a, b)} sum_ij P_ij ||x_i - y_j||^p`` by the network simplex (``ot.emd``).
    Rows sum to ``a`` and columns to ``b`` (uniform by default; weights are normalised to sum 1).
    With ``n == m`` and uniform weights the plan is ``1/n`` times a permutation matrix (the optimal
    matching), because the simplex returns a vertex of the Birkhoff polytope.

    The plan is piecewise constant in the points, so it carries no gradient: it is computed under
    ``torch.no_grad`` and returned detached, in the dtype and on the device of ``x``.
    Raises :class:`OTConvergenceError` if the solver hits ``num_iter_max``.
    """
    p = check_p(p)
    x, y = check_points(x, y)
    if num_iter_max is not None:
        check_int("num_iter_max", num_iter_max, minimum=1)
    a_w = check_weights(a, x, "a")
    b_w = check_weights(b, y, "b")
    return _emd(a_w, b_w, cost_matrix(x, y, p), num_iter_max, plan=True)


@torch.no_grad()
def barycentric_map(
    x: Tensor,
    y: Tensor,
    plan: Tensor | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
    p: float = 2,
) -> Tensor:
    """Barycentric projection of an OT plan: ``T(x_i) = sum_j P_ij y_j / sum_j P_ij``, shape ``(n, d)``.

    The standard estimator of the optimal transport map from minibatch OT (e.g. the forward-Euler
    targets of the W2 gradient flow, ``y_hat = y + dt (T(y) - y)``). ``plan`` defaults to
    :func:`ot_plan` ``(x, y, a, b, p)``; for ``n == m`` with uniform weights it is the optimal
    matching ``T(x_i) = y_{sigma(i)}``. A row without mass (``a_i = 0``) is mapped to ``x_i``.
    Computed under ``torch.no_grad`` (targets, not a differentiable map); returned in ``x``'s dtype.
    """
    x, y = check_points(x, y)
    if plan is None:
        plan = ot_plan(x, y, a, b, p)
    else:
        if a is not None or b is not None:
            raise ValueError("a and b are used only to compute the plan; pass either plan or a/b, not both")
        plan = check_tensor("plan", plan, shape="(n, m) or None", finite=False)
        if plan.shape != (x.shape[0], y.shape[0]):
            raise ValueError(
                f"plan must have shape (n, m) = {(x.shape[0], y.shape[0])} for x {tuple(x.shape)} and "
                f"y {tuple(y.shape)}, got {tuple(plan.shape)}"
            )
        plan = plan.to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(plan).all()) or bool((plan < 0).any()):
            raise ValueError("plan must be finite and non-negative (a transport plan)")
    mass = plan.sum(1, keepdim=True)
    mapped = (plan @ y) / mass.clamp_min(torch.finfo(plan.dtype).tiny)
    return torch.where(mass > 0, mapped, x)
