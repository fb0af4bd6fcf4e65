"""Stop min-max training at a first-order stationary point: all gradient norms below a tolerance.

Worst-case generation (arXiv 2512.08176) declares its GDA converged when both optimality measures
over all particles are small (paper: 1e-5)::

    GN_theta = || (1/n) sum_i d_theta loss(theta, v_i) + wd * theta ||
    GN_T     = sqrt( (1/n) sum_i || d_v loss(theta, v_i) - (v_i - x_i) / gamma ||^2 )

``GN_theta`` includes the weight-decay term ``wd * theta`` when the module's ``model_weight_decay``
``wd > 0`` (the gradient of the objective the model's optimizer descends); with ``wd = 0`` it is the
paper's measure. The module computes them (periodically, over all particles: an O(n) pass the callback does not
repeat) and exposes the protocol this callback reads:

- ``gradient_norms``: a dict ``{name: float}`` of the latest evaluation (e.g. ``gn_theta``, ``gn_T``);
- ``gradient_norms_iteration``: the iteration of that evaluation (``None`` before the first).

:class:`lightning_wass.WorstCaseGenerator` implements it; any LightningModule can. Like Lightning's
``EarlyStopping``, the decision is combined across processes with
``trainer.strategy.reduce_boolean_decision`` and the callback's state is checkpointed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_wass._validation import check_int, check_positive


class GradientNormStopping(Callback):
    """Stop training once every monitored gradient norm is below ``tol`` for ``patience`` evaluations.

    Args:
        tol: the tolerance (paper: 1e-5).
        patience: number of consecutive evaluations that must all be below ``tol``.
        monitor: names of the norms to check (default: every norm the module reports; a frozen
            model reports only ``gn_T``).
        verbose: print a line when training stops.

    A :class:`~lightning_wass.WorstCaseGenerator` with ``gradient_norm_every=0`` never evaluates
    the norms; ``setup`` refuses it with a ``ValueError`` (the callback would never stop training).
    """

    def __init__(self, tol: float = 1e-5, patience: int = 1, monitor: Sequence[str] | None = None, verbose: bool = True) -> None:
        super().__init__()
        self.tol = check_positive("tol", tol)
        self.patience = check_int("patience", patience, minimum=1)
        if monitor is not None and (
            isinstance(monitor, str) or not isinstance(monitor, Sequence) or not all(isinstance(m, str) for m in monitor)
        ):
            raise TypeError(f"monitor must be a sequence of metric names (e.g. ['gn_theta', 'gn_T']), got {monitor!r}")
        if monitor is not None and len(monitor) == 0:
            raise ValueError("monitor must name at least one norm (e.g. ['gn_T']), or be None for every norm the module reports")
        self.monitor = None if monitor is None else list(monitor)
        self.verbose = bool(verbose)
        self.wait_count = 0
        self.last_checked_iteration: int | None = None
        self.stopped_iteration: int | None = None
        self.last_norms: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tol=self.tol, monitor=self.monitor)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not hasattr(pl_module, "gradient_norms_iteration"):
            raise TypeError(
                f"GradientNormStopping needs a module that exposes gradient_norms and gradient_norms_iteration "
                f"(such as WorstCaseGenerator); {type(pl_module).__name__} does not"
            )
        hparams = getattr(pl_module, "hparams", None)
        every = hparams.get("gradient_norm_every") if hasattr(hparams, "get") else None
        if stage == "fit" and every == 0:
            raise ValueError(
                f"GradientNormStopping needs gradient norm evaluations, but {type(pl_module).__name__} has "
                "gradient_norm_every=0 (never evaluated): it would never stop training; set gradient_norm_every >= 1"
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        iteration = getattr(pl_module, "gradient_norms_iteration", None)
        if iteration is None or iteration == self.last_checked_iteration:
            return  # no new evaluation since the last check
        self.last_checked_iteration = int(iteration)
        norms: dict[str, float] = dict(pl_module.gradient_norms)
        keys = list(norms) if self.monitor is None else self.monitor
        missing = [k for k in keys if k not in norms]
        if missing:
            raise KeyError(f"GradientNormStopping monitors {missing}, but the module reports only {sorted(norms)}")
        self.last_norms = {k: float(norms[k]) for k in keys}
        below = bool(keys) and all(math.isfinite(v) and v < self.tol for v in self.last_norms.values())
        below = trainer.strategy.reduce_boolean_decision(below, all=True)
        self.wait_count = self.wait_count + 1 if below else 0
        if self.wait_count >= self.patience:
            trainer.should_stop = True
            self.stopped_iteration = int(iteration)
            if self.verbose:
                shown = ", ".join(f"{k}={v:.3g}" for k, v in self.last_norms.items())
                rank_zero_info(f"GradientNormStopping: {shown} < tol={self.tol:g} at iteration {iteration}; stopping")

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "last_checked_iteration": self.last_checked_iteration,
            "stopped_iteration": self.stopped_iteration,
            "last_norms": dict(self.last_norms),
            "tol": self.tol,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.last_checked_iteration = state_dict["last_checked_iteration"]
        self.stopped_iteration = state_dict["stopped_iteration"]
        self.last_norms = dict(state_dict["last_norms"])
