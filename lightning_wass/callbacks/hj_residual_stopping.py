"""Stop a W1 (+) W2 proximal flow when its Hamilton-Jacobi optimality indicators are small.

The flow's optimality conditions (arXiv:2407.11901) are the Hamilton-Jacobi equation
``d_t U - ||grad U||^2 / (2 alpha) = 0`` along the trajectories and the terminal condition
``grad U(., T) = grad phi``; :class:`~lightning_wass.W1W2ProximalFlow` logs their residuals at
validation as ``val/hj_residual`` and ``val/terminal_error``, and their scale-free versions
``val/hj_residual_relative`` (the residual divided by the Hamiltonian term ``alpha * KE`` it
balances) and ``val/terminal_error_relative`` (divided by ``mean ||grad phi(x_T)||``). The paper
proposes them as real-time indicators for terminating training; the official code never stops on
them. This callback does: training stops once the HJ residual (and, if ``terminal_tol`` is given,
the terminal error) has stayed below its tolerance for ``patience`` consecutive validations.

By default it monitors the *relative* residual: the absolute one scales with the squared velocity
and is exactly 0 for a flow that does not move (e.g. a zero-initialised potential before training),
so an absolute tolerance can stop a run that has not started; the relative one is 1 there.

Which figures compare with the paper's: only the official-convention ones,
``val/hj_residual_official`` and ``val/terminal_error_official`` (evaluated as the official code
does: at ``(x_{k+1}, t_k)``, with its ``+`` sign and no centring, and the terminal error as
``||.||_F / N``, on ``indicator_samples=5000`` reference samples as the official runs;
:mod:`lightning_wass.functional.proximal_flow.indicators`). Ours, ``val/hj_residual`` and ``val/terminal_error``,
have the sign derived for ``v = -grad U / alpha``, are centred, and the terminal error is a mean
per-sample norm (about ``sqrt(N)`` times the official figure): they vanish at the optimum of our
flow, but their absolute values are not the paper's. ``official=True`` monitors the official pair
(absolute values, so they share the pitfall above: combine them with ``Trainer(min_steps=...)``);
``monitor=`` / ``terminal_monitor=`` name any other logged metric.

Under DDP every rank evaluates the criterion on the (synced) logged metrics and the decision is
combined with ``trainer.strategy.reduce_boolean_decision(all=True)``, so all ranks count the same
validations and stop at the same step. ``wait_count`` and the stopping point are checkpointed.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_wass._validation import check_int, check_positive

__all__ = ["HJResidualStopping"]


class HJResidualStopping(pl.Callback):
    """Stop when ``monitor < tol`` (and ``terminal_monitor < terminal_tol``) for ``patience`` validations in a row.

    Args:
        tol: tolerance of the monitored HJ residual (``> 0``; 0.1 = 10 % of the Hamiltonian term for
            the default relative residual).
        patience: consecutive validations that must satisfy the criterion (``>= 1``).
        monitor: the logged HJ residual (default ``"val/hj_residual_relative"``, or
            ``"val/hj_residual_official"`` with ``official=True``).
        terminal_tol: optional tolerance of the terminal-condition error; ``None`` ignores it.
        terminal_monitor: the logged terminal error (default ``"val/terminal_error_relative"``, or
            ``"val/terminal_error_official"`` with ``official=True``).
        official: default the two monitors to the official-convention indicators, the figures
            comparable with the paper's (an explicit ``monitor`` / ``terminal_monitor`` wins).
        strict: raise ``RuntimeError`` when a monitored metric is missing (else skip that validation).
        verbose: print a line when training is stopped.

    Attributes (checkpointed): ``wait_count``, ``stopped_step`` / ``stopped_epoch`` (``-1`` until it
    stops), ``last`` (the values seen at the last validation).

    Example::

        trainer = pl.Trainer(max_epochs=500, callbacks=[HJResidualStopping(tol=0.1, patience=3)])
    """

    def __init__(
        self,
        tol: float = 0.1,
        patience: int = 3,
        monitor: str | None = None,
        terminal_tol: float | None = None,
        terminal_monitor: str | None = None,
        strict: bool = True,
        verbose: bool = True,
        official: bool = False,
    ) -> None:
        super().__init__()
        self.official = bool(official)
        if monitor is None:
            monitor = "val/hj_residual_official" if self.official else "val/hj_residual_relative"
        if terminal_monitor is None:
            terminal_monitor = "val/terminal_error_official" if self.official else "val/terminal_error_relative"
        self.tol = check_positive("tol", tol)
        self.patience = check_int("patience", patience, minimum=1)
        _check_metric_name("monitor", monitor)
        self.monitor = monitor
        self.terminal_tol = None if terminal_tol is None else check_positive("terminal_tol", terminal_tol)
        _check_metric_name("terminal_monitor", terminal_monitor)
        self.terminal_monitor = terminal_monitor
        self.strict = bool(strict)
        self.verbose = bool(verbose)
        self.wait_count = 0
        self.stopped_step = -1
        self.stopped_epoch = -1
        self.last: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, tol=self.tol, terminal_tol=self.terminal_tol)

    def _monitored(self) -> list[tuple[str, float]]:
        pairs = [(self.monitor, self.tol)]
        if self.terminal_tol is not None:
            pairs.append((self.terminal_monitor, self.terminal_tol))
        return pairs

    def criterion_met(self, metrics: dict[str, Any]) -> bool | None:
        """``True`` if every monitored value is finite and below its tolerance; ``None`` if one is missing."""
        met = True
        for name, tol in self._monitored():
            if name not in metrics:
                if self.strict:
                    raise RuntimeError(
                        f"HJResidualStopping monitors {name!r}, which was not logged; available metrics: "
                        f"{sorted(metrics)}. W1W2ProximalFlow logs 'val/hj_residual', 'val/terminal_error', their "
                        "'_relative' and their '_official' versions at validation (is there a validation loop?)"
                    )
                return None
            value = float(metrics[name])
            self.last[name] = value
            met = met and math.isfinite(value) and value < tol
        return met

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or trainer.fast_dev_run:
            return
        met = self.criterion_met(dict(trainer.callback_metrics))
        if met is None:
            return
        # every rank must agree (the metrics are synced, but the decision must be identical anyway)
        met = bool(trainer.strategy.reduce_boolean_decision(bool(met), all=True))
        self.wait_count = self.wait_count + 1 if met else 0
        if self.wait_count >= self.patience and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_step = int(trainer.global_step)
            self.stopped_epoch = int(trainer.current_epoch)
            if self.verbose:
                values = ", ".join(f"{k} = {v:.4g}" for k, v in self.last.items())
                rank_zero_info(
                    f"HJResidualStopping: optimality indicators below tolerance for {self.patience} validation(s) "
                    f"({values}); stopping at step {self.stopped_step}"
                )

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_step": self.stopped_step,
            "stopped_epoch": self.stopped_epoch,
            "last": dict(self.last),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_step = int(state_dict.get("stopped_step", -1))
        self.stopped_epoch = int(state_dict.get("stopped_epoch", -1))
        self.last = dict(state_dict.get("last", {}))


def _check_metric_name(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty metric name (a str), got {type(value).__name__} ({value!r})")
    if not value:
        raise ValueError(f"{name} must be a non-empty metric name, got {value!r}")
