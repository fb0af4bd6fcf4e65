"""Sample-quality measures: the Wasserstein distance between all samples seen of two distributions
(a torchmetrics metric) and the mode coverage of samples of a mixture with known modes."""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_wass._validation import check_choice, check_fraction, check_int, check_positive, check_tensor
from lightning_wass.ot import METHODS, OTOptions, check_p, wasserstein_distance


class WassersteinDistance(Metric):
    """``W_p`` between the empirical measures of every ``x`` and every ``y`` passed to :meth:`update`.

    ``W_p(mu_x, nu_y) = (min_{P in U(1/n, 1/m)} sum_ij P_ij ||x_i - y_j||^p)^(1/p)``, computed by
    :func:`lightning_wass.ot.wasserstein_distance` (exact network simplex by default; POT underneath)
    over all accumulated samples. The distance of a union is not a function of per-batch distances,
    so the metric stores the samples themselves: two list states with ``dist_reduce_fx="cat"``,
    which torchmetrics gathers from every process before :meth:`compute` under DDP. The figure
    therefore equals the single-process figure on the same samples (the exact distance does not
    depend on the order of the points). Samples are stored flattened to 1-D in ``float64`` (the
    metric's dtype; POT solves in ``float64`` anyway), with the feature width in a ``max``-reduced
    state: torchmetrics fills the state of a process that saw no sample with a 1-D empty tensor of
    the metric's dtype, and the gather needs every process's state to match it in rank and dtype.
    :meth:`compute` returns a ``float64`` tensor.
    With ``method="sliced"`` the directions are seeded (``seed`` defaults to 0 here) so that every
    process computes the same figure.

    Memory and time: the metric holds ``(n + m) d`` numbers per process (gathered to every process
    at ``compute``), and the exact solve builds an ``n x m`` cost matrix (POT copies it to float64:
    ``8 n m`` bytes) and runs a network simplex whose time grows faster than ``n^2`` (0.6 s at
    n = m = 2,000 in 2-D on one idle CPU core, tens of seconds at 5,000; see docs/ot.md). Keep ``n``
    in the low thousands, or set ``max_samples``, or use ``method="sliced"``. Pass
    ``compute_on_cpu=True`` (a torchmetrics option) to keep the stored samples off the GPU.

    Args:
        p: order ``p >= 1``.
        method: ``"exact"`` | ``"sliced"`` | ``"sinkhorn"`` (see :func:`wasserstein_distance`).
        max_samples: keep at most this many samples of each distribution per process (the first
            ones seen; later ones are dropped with a warning). ``None`` keeps all.
        num_projections, reg, num_iter_max, stop_threshold, sinkhorn_method, seed: passed to
            :func:`wasserstein_distance` (each applies to the methods documented there); kept,
            checked, as :attr:`options` (an :class:`~lightning_wass.ot.OTOptions`).
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``compute_on_cpu``, ...).

    Samples of more than one dimension per point (e.g. images ``(N, C, H, W)``) are flattened to
    ``(N, C*H*W)``; 1-D batches ``(N,)`` are read as ``(N, 1)``.

    Example::

        metric = WassersteinDistance(p=2)
        for real, fake in batches:
            metric.update(real, fake)
        w2 = metric.compute()
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    x: list[Tensor]
    y: list[Tensor]

    def __init__(
        self,
        p: float = 2,
        method: Literal["exact", "sliced", "sinkhorn"] = "exact",
        max_samples: int | None = None,
        *,
        num_projections: int | None = None,
        reg: float | None = None,
        num_iter_max: int | None = None,
        stop_threshold: float | None = None,
        sinkhorn_method: str | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.p = check_p(p)
        self.method = check_choice("method", method, METHODS)
        self.max_samples = None if max_samples is None else check_int("max_samples", max_samples, minimum=1)
        if method == "sliced" and seed is None:
            seed = 0  # every process must draw the same directions
        self.options = OTOptions(method, num_projections, reg, num_iter_max, stop_threshold, sinkhorn_method, seed)
        self.add_state("x", default=[], dist_reduce_fx="cat")
        self.add_state("y", default=[], dist_reduce_fx="cat")
        self.add_state("width", default=torch.tensor(0), dist_reduce_fx="max")
        self.set_dtype(torch.float64)
        self._warned_full = False

    def _prepare(self, name: str, value: object, stored: list[Tensor]) -> Tensor:
        # A batch of 0 samples is allowed (a process may see none); bool / complex samples are not.
        value = check_tensor(name, value, shape="(N, ...)", allow_empty=True, finite=False)
        if value.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension, got a 0-dim tensor")
        value = value.detach()
        value = value.unsqueeze(1) if value.dim() == 1 else value.flatten(1)
        if value.shape[1] == 0:
            raise ValueError(f"{name} must have at least one feature a sample, got shape {tuple(value.shape)}")
        value = check_tensor(
            name, value.to(self.dtype), allow_empty=True, hint="the Wasserstein distance needs finite samples"
        )
        width = self._width()
        if width is not None and value.shape[1] != width:
            raise ValueError(
                f"{name} must have {width} features a sample (as in earlier updates), got shape {tuple(value.shape)}"
            )
        if self.max_samples is not None:
            room = self.max_samples - sum(int(t.numel()) for t in stored) // max(value.shape[1], 1)
            if value.shape[0] > room:
                if not self._warned_full:
                    rank_zero_warn(
                        f"WassersteinDistance: max_samples={self.max_samples} reached; further samples are dropped"
                    )
                    self._warned_full = True
                value = value[: max(room, 0)]
        return value

    def _width(self) -> int | None:
        width = int(self.width)
        return width if width > 0 else None

    def update(self, x: Tensor, y: Tensor) -> None:  # type: ignore[override]
        """Add a batch of samples ``x`` of the first and ``y`` of the second distribution.

        The two batches may have different sizes; each point carries weight 1/(total count).
        """
        x = self._prepare("x", x, self.x)
        y = self._prepare("y", y, self.y)
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"x and y must have the same number of features a sample; got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
        self.width = torch.tensor(x.shape[1], device=self.width.device)
        if x.shape[0]:
            self.x.append(x.reshape(-1))
        if y.shape[0]:
            self.y.append(y.reshape(-1))

    def compute(self) -> Tensor:
        """``W_p`` over all samples stored (gathered from every process under DDP)."""
        if (isinstance(self.x, list) and not self.x) or (isinstance(self.y, list) and not self.y):
            raise ValueError("WassersteinDistance has no samples of x or y: call update(x, y) before compute()")
        width = int(self.width)
        x = dim_zero_cat(self.x).reshape(-1, width)
        y = dim_zero_cat(self.y).reshape(-1, width)
        if len(x) == 0 or len(y) == 0:
            raise ValueError("WassersteinDistance has no samples of x or y: call update(x, y) before compute()")
        return wasserstein_distance(x, y, self.p, self.method, **self.options.solver_kwargs())

    def reset(self) -> None:
        super().reset()
        self._warned_full = False


class ModeCoverage(NamedTuple):
    """The result of :func:`mode_coverage`."""

    covered: float
    """Fraction of the modes holding at least ``min_share`` of the samples (within-samples only)."""
    within: float
    """Fraction of the samples within ``num_std * std`` of their nearest mode ("high-quality" samples)."""
    counts: Tensor
    """``(M,)`` long: the number of within-samples assigned to each mode (their nearest mode)."""


def mode_coverage(
    samples: Tensor,
    modes: Tensor,
    std: float,
    *,
    min_share: float | None = None,
    num_std: float = 3.0,
) -> ModeCoverage:
    r"""How many modes of a mixture with known centres the ``samples`` cover, and how well.

    Each sample ``x_i`` is assigned to its nearest mode ``m(i) = argmin_m ||x_i - c_m||`` (ties: the
    lowest index) and counts for that mode only if it lies within ``num_std * std`` of it:

    ``counts[m] = #{i : m(i) = m, ||x_i - c_m|| <= num_std * std}``,
    ``within = sum_m counts[m] / n``,
    ``covered = #{m : counts[m] / n >= min_share} / M``,

    with ``min_share = 1 / (2 M)`` (half the uniform share) by default. A perfect sampler of
    ``M`` equal-weight isotropic Gaussians has ``covered = 1`` and ``within`` near the mass of a
    2-D Gaussian within 3 std, ``1 - exp(-9/2) = 0.989``; a ring through the modes of 8 Gaussians
    passes a ``W2 <= 1.5 x floor`` bar but has ``within`` near 0.19 and ``covered = 0`` (see
    ``tests/test_mode_coverage.py``). Non-finite samples count as outside every mode.

    This is the "modes covered / high-quality samples" measure of the 2-D mixture-of-Gaussians
    experiments (8 on a ring, 25 on a grid) that the unrolled-GAN paper (Metz et al., "Unrolled
    Generative Adversarial Networks") made the mode-collapse benchmark and that VEEGAN (Srivastava
    et al.) and PacGAN (Lin et al.) score this way: a sample is high quality within 3 standard
    deviations of its nearest mode, and a mode is covered when enough high-quality samples land on
    it. Those papers use an absolute count of samples for "enough"; the share here
    (``min_share``) makes the figure independent of ``n``.

    Args:
        samples: ``(n, d)`` points, ``n >= 1``.
        modes: ``(M, d)`` mode centres (finite).
        std: the modes' standard deviation, ``> 0``.
        min_share: share of all ``n`` samples a mode needs to be covered, in ``(0, 1]``;
            ``None`` gives ``1 / (2 M)``.
        num_std: radius of a mode in standard deviations, ``> 0``.

    Example::

        centres, std = toy_modes("8gaussians")
        covered, within, counts = mode_coverage(model.sample(2000), centres, std)
    """
    if not isinstance(samples, Tensor):
        raise ValueError(f"samples must be a tensor of shape (n, d) with n >= 1, got {type(samples).__name__}")
    # non-finite samples are allowed (they count as outside every mode); bool / complex are not
    samples = check_tensor("samples", samples, shape="(n, d)", ndim=2, item="point (n >= 1, d >= 1)", finite=False)
    if not isinstance(modes, Tensor):
        raise ValueError(f"modes must be a tensor of shape (M, d) with M >= 1, got {type(modes).__name__}")
    modes = check_tensor("modes", modes, shape="(M, d)", ndim=2, item="mode (M >= 1)", hint="modes must be finite")
    if modes.shape[1] != samples.shape[1]:
        raise ValueError(
            f"modes must be a tensor of shape (M, d) with M >= 1 and the samples' d = {samples.shape[1]}, "
            f"got {tuple(modes.shape)}"
        )
    std = check_positive("std", std)
    num_std = check_positive("num_std", num_std)
    count = modes.shape[0]
    share = 1.0 / (2 * count) if min_share is None else check_fraction("min_share", min_share, allow_zero=False, allow_one=True)
    x = samples.detach().to(torch.float64)
    centres = modes.detach().to(device=x.device, dtype=torch.float64)
    distance = torch.cdist(x, centres, compute_mode="donot_use_mm_for_euclid_dist")
    distance = torch.nan_to_num(distance, nan=math.inf)
    nearest_distance, nearest = distance.min(dim=1)
    inside = nearest_distance <= num_std * std
    counts = torch.bincount(nearest[inside], minlength=count).cpu()
    n = samples.shape[0]
    covered = float((counts.double() / n >= share).double().mean())
    return ModeCoverage(covered=covered, within=float(inside.double().mean()), counts=counts)
