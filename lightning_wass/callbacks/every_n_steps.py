"""The one "every N steps" schedule of the generative callbacks.

:class:`EveryNSteps` acts at step 0 bookkeeping, after every training batch that crosses a multiple
of ``every_n_steps`` and once more at the end of training (unless that step was already done).
Steps are :func:`~lightning_wass.callbacks.evaluation.step_count`'s: the module's ``generator_step``
when it has one, else ``trainer.global_step``. Formally, with ``s`` the step after a batch and
``b = floor(s / N)``, the callback acts when ``b > b_last`` and ``s > 0`` (then ``b_last <- b``);
``b_last`` starts at ``floor(s_0 / N)`` for the step ``s_0`` training starts from, so a resumed run
acts at the same steps as an uninterrupted one. ``last_bucket`` and ``last_step`` are the
callback's checkpointed state.

Subclasses implement :meth:`EveryNSteps.run_at` (and set :attr:`EveryNSteps.last_step` there):
:class:`~lightning_wass.callbacks.SampleFigure` writes a figure,
:class:`~lightning_wass.callbacks.WassersteinMonitor` measures ``W_p``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_wass._validation import check_int
from lightning_wass.callbacks.evaluation import step_count

__all__ = ["EveryNSteps"]


class EveryNSteps(pl.Callback):
    """Base of callbacks that act every ``every_n_steps`` generator steps and at the end of training.

    Args:
        every_n_steps: steps between actions (``>= 1``).

    Attributes (checkpointed through :meth:`state_dict`): ``last_bucket`` (``floor(step / N)`` of
    the last action, ``-1`` before training) and ``last_step`` (the step of the last action, ``-1``
    before the first).
    """

    def __init__(self, every_n_steps: int = 500) -> None:
        super().__init__()
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        self.last_bucket = -1
        self.last_step = -1

    def run_at(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> Any:
        """Act now for ``step`` (set :attr:`last_step` to ``step``); implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_at(trainer, pl_module, step)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = step_count(trainer, pl_module)
        self.last_bucket = max(self.last_bucket, step // self.every_n_steps)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = step_count(trainer, pl_module)
        bucket = step // self.every_n_steps
        if bucket > self.last_bucket and step > 0:
            self.last_bucket = bucket
            self.run_at(trainer, pl_module, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = step_count(trainer, pl_module)
        if step != self.last_step:
            self.run_at(trainer, pl_module, step)

    def state_dict(self) -> dict[str, Any]:
        return {"last_bucket": self.last_bucket, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_bucket = int(state_dict.get("last_bucket", -1))
        self.last_step = int(state_dict.get("last_step", -1))
