"""Skip Lightning's backward and optimizer-step wrappers where they add nothing.

A manual-optimization module calls ``self.manual_backward(loss)`` and ``optimizer.step()`` (a
``LightningOptimizer``). On one device, with plain 32- or 64-bit precision, Lightning's do-nothing
profiler and no overridden hook, those wrappers end in ``loss.backward()`` and the base
optimizer's step between the loop's step counters, after several layers of calls (the strategy,
the precision plugin, the hooks of the module and of every callback): about 0.1-0.3 ms a call on
a CPU. :class:`DirectLightningPath` decides once per Trainer whether that holds and then does
exactly what the wrappers would; otherwise it calls them. Used by the generative modules and
:class:`~lightning_wass.modules.worst_case.WorstCaseGenerator`; the tests compare both paths'
iterates and counters bit for bit.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import DoublePrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

LIGHTNING_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
"""The Lightning hooks ``manual_backward`` and ``LightningOptimizer.step`` call around a backward
and an optimizer step (see :meth:`DirectLightningPath.direct_lightning_path`)."""


class DirectLightningPath:
    """``direct_lightning_path`` / ``run_backward`` / ``step_optimizer`` for a ``LightningModule`` (a mixin)."""

    def direct_lightning_path(self) -> bool:
        """Whether :meth:`run_backward` and :meth:`step_optimizer` may skip Lightning's wrappers.

        They then do exactly what the wrappers do in that case: ``loss.backward()``, and the base
        optimizer's step between the manual loop's step counters (``global_step``). That holds when
        no wrapper adds anything: one device (no DDP gradient hooks), plain 32- or 64-bit precision
        (no loss scaling, no autocast of the backward), Lightning's do-nothing profiler, and neither
        this module nor a callback overriding ``backward`` / ``manual_backward`` or one of
        :data:`LIGHTNING_STEP_HOOKS`. Decided once per Trainer and callback list.
        """
        trainer = self._trainer
        if trainer is None:
            return False
        # ids only (the module stays picklable); the types too, so that a later Trainer that reuses
        # a freed one's address is not mistaken for it unless it is built alike
        key = (
            id(trainer), id(type(trainer.strategy)), id(type(trainer.precision_plugin)), id(type(trainer.profiler)),
            tuple(map(id, trainer.callbacks)),
        )
        cached = self.__dict__.get("_direct_path_key")
        if cached is not None and cached[0] == key:
            return cached[1]
        direct = (
            type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.precision_plugin) in (Precision, DoublePrecision)
            and type(trainer.profiler) is PassThroughProfiler
            and type(self).manual_backward is pl.LightningModule.manual_backward
            and not any(is_overridden(hook, self) for hook in ("backward", *LIGHTNING_STEP_HOOKS))
            and not any(is_overridden(hook, callback) for callback in trainer.callbacks for hook in LIGHTNING_STEP_HOOKS)
            and all(hasattr(opt, "_on_before_step") and hasattr(opt, "_on_after_step") for opt in trainer.strategy._lightning_optimizers)
        )
        self.__dict__["_direct_path_key"] = (key, direct)
        return direct

    def run_backward(self, loss: Tensor, direct: bool | None = None) -> None:
        """``self.manual_backward(loss)``, or ``loss.backward()`` where that is all it does
        (:meth:`direct_lightning_path`; ``direct``: its answer, when the caller has it already)."""
        if self.direct_lightning_path() if direct is None else direct:
            loss.backward()
        else:
            self.manual_backward(loss)

    def step_optimizer(self, optimizer: Any, direct: bool | None = None) -> None:
        """``optimizer.step()`` of a ``LightningOptimizer`` (counted in ``global_step``), or, where
        Lightning's wrappers add nothing (:meth:`direct_lightning_path`; ``direct``: its answer, when
        the caller has it already), what that step then does: the loop's step counter before and
        after the base optimizer's step."""
        if (self.direct_lightning_path() if direct is None else direct) and hasattr(optimizer, "_on_before_step"):
            optimizer._on_before_step()
            optimizer.optimizer.step()
            optimizer._on_after_step()
        else:
            optimizer.step()
