"""Log the exact Wasserstein distance between a generative module's samples and held-out data."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_wass._validation import check_choice, check_int, check_positive
from lightning_wass.callbacks.sample_figure import check_name
from lightning_wass.metrics import mode_coverage
from lightning_wass.callbacks.evaluation import draw_samples, exact_distances, floor_samples, heldout_data, step_count
from lightning_wass.callbacks.every_n_steps import EveryNSteps

__all__ = ["WassersteinMonitor"]


class WassersteinMonitor(EveryNSteps):
    r"""Every ``every_n_steps`` steps, log ``W_p(samples, held-out data)`` and its sample floor.

    ``W_p(mu, nu) = (min_{P in U(1/n, 1/n)} sum_ij P_ij ||x_i - y_j||^p)^(1/p)`` is solved exactly
    (POT's network simplex, through :func:`lightning_wass.ot.wasserstein_distance`) between
    ``n = min(num_samples, size of the held-out split)`` generated points and the first ``n``
    held-out points. Beside it the monitor logs the **floor**: the same distance between those
    held-out points and ``n`` points of the training split, two independent samples of the data
    distribution (DESIGN.md section 6), averaged over ``floor_repeats`` disjoint training subsets; a
    perfect generator sits at the floor, not at zero, so judge a generator by ``ratio = W_p / floor``.

    Works with any module that has ``sample(n)`` (see :mod:`lightning_wass.callbacks.evaluation`);
    steps are the module's ``generator_step`` when it has one, else ``trainer.global_step``. The
    distance is also measured once before training (step 0) and once at the end.

    Logged (to every logger, at the module's step, and into ``trainer.callback_metrics`` so that
    ``ModelCheckpoint``/``EarlyStopping`` can monitor them): ``{prefix}/W{p}``, and when the
    training split is available ``{prefix}/W{p}_floor`` and ``{prefix}/W{p}_ratio``. Every
    measurement is also appended to :attr:`history` as a dict with ``step``, ``global_step``,
    ``seconds`` (training wall time since ``fit`` started, *excluding* the time this monitor
    spent measuring, so curves against time show the method's own cost), ``cpu_seconds`` (the
    same for this process's CPU time, which is less disturbed than wall time on a shared machine)
    and the figures.

    **Mode coverage.** When the modes of the data are known (``modes=(centres, std)`` given here,
    or else a non-``None`` ``modes`` attribute of the Trainer's DataModule, as
    :attr:`ToyDataModule.modes <lightning_wass.datamodules.ToyDataModule.modes>` of ``8gaussians``
    / ``25gaussians``), every measurement also computes :func:`lightning_wass.metrics.mode_coverage`
    of the same generated points (``num_std`` 3, ``min_share`` ``1 / (2 M)``) and logs
    ``{prefix}/modes_covered`` (the fraction of modes covered) and ``{prefix}/mode_quality`` (the
    fraction of samples within 3 std of a mode), also kept in :attr:`history` as ``modes_covered``
    and ``mode_quality``. A ring through the 8 Gaussians' modes can sit near the W2 floor; it
    cannot cover the modes. Without known modes nothing is added; a DataModule whose modes have
    ``std = 0`` (noise 0) is skipped with a warning.

    Every process computes the same figure (samples are drawn with a fixed seed and the weights
    are identical across DDP replicas), so the metric can be monitored under DDP; loggers write
    from global zero only.

    Args:
        every_n_steps: steps between measurements (>= 1).
        num_samples: at most this many generated and held-out points (exact OT costs O(n^3)).
        p: the order(s) ``p`` to measure (1 and/or 2).
        split: the held-out split (``"val"`` or ``"test"``).
        floor_repeats: the floor is the mean of ``W_p`` over this many disjoint ``n``-point subsets of
            the training split (as many as it holds, at most this many): one subset alone is noisy.
        prefix: metric name prefix.
        seed: seed of the sample draw (the same ``z`` each time) and of the floor's subset.
        modes: ``(centres (M, d), std)`` of the data's modes for the mode coverage; wins over the
            DataModule's ``modes``. ``None``: the DataModule's, if it has any.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 2000,
        p: int | Sequence[int] = 2,
        split: str = "val",
        floor_repeats: int = 5,
        prefix: str = "wasserstein",
        seed: int = 0,
        modes: tuple[torch.Tensor, float] | None = None,
    ) -> None:
        super().__init__(every_n_steps)
        self.num_samples = check_int("num_samples", num_samples, minimum=2)
        if isinstance(p, (str, bytes)) or not isinstance(p, (int, Sequence)):
            raise TypeError(f"p must be 1, 2 or a non-empty list of them, got {type(p).__name__} ({p!r})")
        orders = [p] if isinstance(p, int) else list(p)
        if not orders:
            raise ValueError("p must be 1, 2 or a non-empty list of them")
        if any(isinstance(q, bool) for q in orders):
            raise TypeError(f"p must be 1, 2 or a non-empty list of them, got a bool ({p!r})")
        self.ps = tuple(int(check_choice("p", q, (1, 2))) for q in orders)
        self.split = check_choice("split", split, ("val", "test"))
        self.floor_repeats = check_int("floor_repeats", floor_repeats, minimum=1)
        self.prefix = check_name("prefix", prefix)
        self.seed = check_int("seed", seed, minimum=0)
        self.modes = None if modes is None else _check_modes("modes", modes)
        self._warned_modes = False
        self.history: list[dict[str, float]] = []
        self._reference: torch.Tensor | None = None
        self._floor: dict[int, float] | None = None
        self._start = 0.0
        self._own_seconds = 0.0
        self._cpu_start = 0.0
        self._own_cpu_seconds = 0.0

    # ------------------------------------------------------------------ data
    def _prepare(self, trainer: pl.Trainer) -> None:
        if self._reference is not None:
            return
        self._reference = heldout_data(trainer, self.split, self.num_samples)
        if len(self._reference) < 2:
            raise ValueError(f"WassersteinMonitor needs at least 2 held-out points in split {self.split!r}")
        subsets = floor_samples(trainer, len(self._reference), repeats=self.floor_repeats, seed=self.seed)
        figures = [exact_distances(subset, self._reference, self.ps) for subset in subsets]
        self._floor = {p: sum(f[p] for f in figures) / len(figures) for p in self.ps} if figures else {}

    def elapsed(self, cpu: bool = False) -> float:
        """Training time since ``fit`` started without this monitor's measuring time: wall clock, or
        this process's CPU time with ``cpu=True``."""
        if cpu:
            return time.process_time() - self._cpu_start - self._own_cpu_seconds
        return time.perf_counter() - self._start - self._own_seconds

    @property
    def floor(self) -> dict[int, float]:
        """The sample floor ``{p: W_p(train subset, held-out)}`` (empty before training or without a train split)."""
        return dict(self._floor or {})

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._own_seconds = 0.0
        self._cpu_start = time.process_time()
        self._own_cpu_seconds = 0.0
        super().on_train_start(trainer, pl_module)
        if self.last_step < 0:  # not resumed: measure the initial model
            self.measure(trainer, pl_module, step_count(trainer, pl_module))

    def run_at(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> dict[str, float]:
        """The every-N-steps action: :meth:`measure`."""
        return self.measure(trainer, pl_module, step)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> dict[str, float]:
        """Measure now, log, append to :attr:`history` and return the figures."""
        began = time.perf_counter()
        began_cpu = time.process_time()
        self._prepare(trainer)
        assert self._reference is not None and self._floor is not None
        self.last_step = step
        generated = draw_samples(pl_module, len(self._reference), seed=self.seed)
        if tuple(generated.shape[1:]) != tuple(self._reference.shape[1:]):
            raise ValueError(
                f"{type(pl_module).__name__}.sample() returns shape {tuple(generated.shape[1:])} per sample but the "
                f"held-out data has shape {tuple(self._reference.shape[1:])}"
            )
        distances = exact_distances(generated, self._reference, self.ps)
        metrics: dict[str, float] = {}
        for p, value in distances.items():
            metrics[f"{self.prefix}/W{p}"] = value
            if p in self._floor:
                metrics[f"{self.prefix}/W{p}_floor"] = self._floor[p]
                metrics[f"{self.prefix}/W{p}_ratio"] = value / max(self._floor[p], 1e-12)
        modes = self._known_modes(trainer)
        if modes is not None:
            coverage = mode_coverage(generated.reshape(len(generated), -1), modes[0], modes[1])
            metrics[f"{self.prefix}/modes_covered"] = coverage.covered
            metrics[f"{self.prefix}/mode_quality"] = coverage.within
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for name, value in metrics.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        self._own_seconds += time.perf_counter() - began
        self._own_cpu_seconds += time.process_time() - began_cpu
        record = {
            "step": float(step),
            "global_step": float(trainer.global_step),
            "seconds": self.elapsed(),
            "cpu_seconds": self.elapsed(cpu=True),
            **{name.split("/", 1)[-1]: value for name, value in metrics.items()},
        }
        self.history.append(record)
        return metrics

    def _known_modes(self, trainer: pl.Trainer) -> tuple[torch.Tensor, float] | None:
        """The explicit ``modes``, else the DataModule's (``None`` without, or when their std is 0)."""
        if self.modes is not None:
            return self.modes
        found = getattr(getattr(trainer, "datamodule", None), "modes", None)
        if found is None:
            return None
        centres, std = found
        if float(std) <= 0:
            if not self._warned_modes:
                rank_zero_warn("WassersteinMonitor: the DataModule's modes have std 0 (noise 0); no mode coverage")
                self._warned_modes = True
            return None
        return _check_modes("the DataModule's modes", found)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history = list(state_dict.get("history", []))


def _check_modes(name: str, modes: Any) -> tuple[torch.Tensor, float]:
    """``(centres, std)`` as a float ``(M, d)`` tensor and a float ``> 0``, or a ``ValueError`` naming ``name``."""
    if not isinstance(modes, (tuple, list)) or len(modes) != 2:
        raise ValueError(f"{name} must be a pair (centres of shape (M, d), std), got {type(modes).__name__}")
    centres = torch.as_tensor(modes[0], dtype=torch.float32)
    if centres.dim() != 2 or centres.shape[0] < 1 or not bool(torch.isfinite(centres).all()):
        raise ValueError(f"{name}: centres must be a finite (M, d) tensor with M >= 1, got shape {tuple(centres.shape)}")
    std = float(modes[1]) if isinstance(modes[1], torch.Tensor) else modes[1]
    return centres, check_positive(f"{name} std", std)
