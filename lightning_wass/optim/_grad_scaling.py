"""fp16 loss scaling across the several passes of one SAM-family step.

``torch.amp.GradScaler`` is built for one backward per optimizer step: ``unscale_`` may run once
between two ``update()`` calls, and ``step`` skips the base step when that one unscale found an
inf/NaN. A SAM-family step back-propagates several times, and every pass's gradient must be
unscaled before it sets a perturbation (and before it is clipped or stepped). :class:`ScaledPasses`
does that with the scaler's own kernel and bookkeeping:

- before each pass the scaler's record for the optimizer is reset to "ready", so the pass's
  gradients are unscaled by ``scaler.unscale_(optimizer)`` after the closure (or inside it: a
  closure that calls ``scaler.unscale_(optimizer)`` itself, e.g. to clip, is honoured);
- the inf/NaN flags of all passes are summed on the device (no host synchronisation);
- at the end the total is written back as the scaler's record for the optimizer, so the user's
  ``scaler.update()`` lowers the scale after a skipped step exactly as after any other.

GradScaler has no public way to record an inf found outside ``unscale_`` or to unscale twice per
update, so this module touches its per-optimizer record (``_per_optimizer_states``: a dict with
``stage`` and ``found_inf_per_device``, unchanged since torch 1.6); it is the only place that
does, and ``tests/test_optim_fp16.py`` checks the behaviour on every torch the project admits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import OptState, _refresh_per_optimizer_state
from torch.optim import Optimizer


def is_active(scaler: Any) -> bool:
    """``True`` for an enabled ``torch.amp.GradScaler`` (a disabled one scales nothing)."""
    return scaler is not None and bool(scaler.is_enabled())


def check_scaler(scaler: Any) -> None:
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"grad_scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")


class ScaledPasses:
    """Unscales each pass of one step and collects their inf/NaN flags (see the module docstring)."""

    def __init__(self, scaler: torch.amp.GradScaler, optimizer: Optimizer) -> None:
        self.scaler = scaler
        self.optimizer = optimizer
        self._flags: list[Tensor] = []
        self._pass_done = True

    def _record(self) -> dict[str, Any]:
        return self.scaler._per_optimizer_states[id(self.optimizer)]

    def begin_pass(self) -> None:
        """Make the scaler ready to unscale this pass's gradients."""
        self.scaler._per_optimizer_states[id(self.optimizer)] = _refresh_per_optimizer_state()
        self._pass_done = False

    def unscale_pass(self) -> None:
        """Unscale the gradients of the pass that just ran (once; later calls for it do nothing)."""
        if self._pass_done:
            return
        record = self._record()
        if record["stage"] is OptState.READY:
            self.scaler.unscale_(self.optimizer)
        self._flags.extend(record["found_inf_per_device"].values())
        self._pass_done = True

    @property
    def found_inf(self) -> Tensor:
        """The number of passes (per device) that found an inf/NaN, summed: > 0 means skip the step."""
        scale = self.scaler._get_scale_async()
        if scale is None:
            raise RuntimeError("the GradScaler scaled nothing during the step: back-propagate scaler.scale(loss) in the closure")
        total = torch.zeros((), dtype=torch.float32, device=scale.device)
        for flag in self._flags:
            total = total + flag.to(total.device)
        return total

    def unscale_present(self) -> None:
        """Unscale the gradients back-propagated before the optimizer was called (the two-step API)."""
        self.begin_pass()
        self.unscale_pass()

    def agree_across_replicas(self) -> None:
        """Skip on every replica if any found an inf (needed when ascent gradients are not all-reduced)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            total = self.found_inf
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.MAX)
            self._flags = [total]

    def finish(self) -> None:
        """Leave the summed flags as the scaler's record, so ``scaler.update()`` backs off after an inf."""
        total = self.found_inf
        self.scaler._per_optimizer_states[id(self.optimizer)] = {
            "stage": OptState.STEPPED,
            "found_inf_per_device": {total.device: total},
        }
