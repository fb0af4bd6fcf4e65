"""A radius schedule tied to the learning-rate schedule: GSAM's ``rho_t``.

Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", ICLR 2022 (arXiv:2203.08065),
sec. 5: the perturbation radius follows the learning rate linearly,

    rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min),

so that a cosine or linear learning-rate decay shrinks the neighbourhood with it. GSAM's code calls
this a ``ProportionScheduler``. :class:`ProportionalRho` reads each param group's current ``lr``
(whatever set it) and writes ``group["rho"]``; step it after the learning-rate scheduler (in
Lightning, list it after that scheduler with the same ``interval``).
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightning_wass._validation import check_int, check_positive


class ProportionalRho(LRScheduler):
    """Sets ``group["rho"]`` from the group's current learning rate (GSAM's ``rho_t``, module docstring).

    Args:
        optimizer: a SAM-family optimizer (any optimizer whose groups carry ``rho``).
        rho_max: the radius at ``lr = lr_max``.
        rho_min: the radius at ``lr = lr_min``.
        lr_max: the learning rate that gives ``rho_max`` (default: each group's initial ``lr``).
        lr_min: the learning rate that gives ``rho_min`` (default 0).
        last_epoch: as for any ``LRScheduler``.

    It subclasses ``LRScheduler`` so that Lightning steps it like any scheduler; it never changes a
    learning rate (``get_last_lr`` reports them unchanged), and ``get_last_rho`` the radii it set.

    Example::

        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        rho = ProportionalRho(optimizer, rho_max=0.05, rho_min=0.01)
        for epoch in range(epochs):
            train_one_epoch()
            cosine.step()
            rho.step()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        rho_max: float,
        rho_min: float = 0.0,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer (a SAM-family one), got {type(optimizer).__name__}")
        last_epoch = check_int("last_epoch", last_epoch, minimum=-1)
        if last_epoch >= 0 and any("initial_lr" not in g for g in optimizer.param_groups):
            raise ValueError(
                f"last_epoch={last_epoch} resumes a schedule, but the optimizer's param groups have no 'initial_lr' "
                "(set by a scheduler built with last_epoch=-1); build it with last_epoch=-1 and load its state_dict to resume"
            )
        for i, group in enumerate(optimizer.param_groups):
            if "rho" not in group:
                raise ValueError(f"ProportionalRho needs an optimizer whose param groups have 'rho' (group {i} has none)")
        self.rho_max = check_positive("rho_max", rho_max, allow_zero=True)
        self.rho_min = check_positive("rho_min", rho_min, allow_zero=True)
        self.lr_min = check_positive("lr_min", lr_min, allow_zero=True)
        if lr_max is None:
            self.lr_maxes = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        else:
            self.lr_maxes = [check_positive("lr_max", lr_max)] * len(optimizer.param_groups)
        for i, top in enumerate(self.lr_maxes):
            if not top > self.lr_min:
                raise ValueError(f"lr_max must exceed lr_min={self.lr_min}; param group {i} has lr_max={top}")
        self._last_rho: list[float] = []
        super().__init__(optimizer, last_epoch)

    def rho_for(self, lr: float, lr_max: float) -> float:
        """``rho_t`` for a learning rate (clamped to the segment between ``rho_min`` and ``rho_max``)."""
        fraction = min(max((lr - self.lr_min) / (lr_max - self.lr_min), 0.0), 1.0)
        return self.rho_min + (self.rho_max - self.rho_min) * fraction

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def step(self, epoch: Any = None) -> None:  # type: ignore[override]
        self.last_epoch += 1
        self._last_rho = []
        for group, lr_max in zip(self.optimizer.param_groups, self.lr_maxes):
            group["rho"] = self.rho_for(float(group["lr"]), lr_max)
            self._last_rho.append(group["rho"])
        self._last_lr = self.get_lr()

    def get_last_rho(self) -> list[float]:
        """The radius each param group got at the last ``step``."""
        return list(self._last_rho)
