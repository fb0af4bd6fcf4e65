"""The bookkeeping of a SAM-family optimizer: across steps (:class:`Progress`) and within one step
in progress (:class:`StepRun`).

Lightning hands ``training_step`` a ``LightningOptimizer`` that forwards attribute *reads* to the
optimizer but keeps attribute *writes* to itself; the two-step API (``first_step`` /
``second_step``) is called on that wrapper. So everything the optimizer changes while running lives
in one :class:`Progress` object that is mutated, never rebound: the wrapper and the optimizer then
always see the same state.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_wass.functional.otmdr import FlatBuffer
from lightning_wass.optim._grad_scaling import ScaledPasses
from lightning_wass.optim.snapshot import StateSnapshot, copy_into
from lightning_wass.optim.passes import PassInfo

Grads = list[Tensor | None]


class KeptGradients:
    """The gradient lists kept across passes, with their data pointers.

    A later pass whose gradients share memory with a kept one would overwrite it (this happens with
    ``DistributedDataParallel(gradient_as_bucket_view=True)``); :meth:`check` refuses that.
    """

    def __init__(self) -> None:
        self._pointers: dict[str, set[int]] = {}

    def keep(self, name: str, tensors: Grads | None) -> None:
        if tensors is None:
            self._pointers.pop(name, None)
            return
        self._pointers[name] = {t.data_ptr() for t in tensors if t is not None and t.numel()}

    @property
    def active(self) -> bool:
        """Whether any gradient is kept (else :meth:`check` has nothing to compare)."""
        return any(self._pointers.values())

    def check(self, grads: Grads) -> None:
        pointer_sets = [s for s in self._pointers.values() if s]
        if not pointer_sets:
            return
        for g in grads:
            if g is not None and g.numel() and any(g.data_ptr() in s for s in pointer_sets):
                raise RuntimeError(
                    "the gradients of two passes share memory, so the optimizer cannot keep one pass's gradient while "
                    "computing the next. This happens with DistributedDataParallel(gradient_as_bucket_view=True): "
                    "use gradient_as_bucket_view=False (the default)."
                )


@dataclass
class Progress:
    """Everything a SAM-family optimizer changes between and during steps (see the module docstring)."""

    completed_steps: int = 0
    skipped_steps: int = 0
    last_step_skipped: bool = False
    zero_grad_calls: int = 0
    current_pass: PassInfo | None = None
    run: StepRun | None = None
    selected: bool = False
    warned: set[str] = field(default_factory=set)
    theta_buffers: list[Tensor] | None = None
    after_buffers: list[Tensor] | None = None  # the parameters after the base step (the verdict's flat copy)
    # flat copies for gradient norms on the CPU, one per use ("stepped", or a param group's index)
    norm_buffers: dict[Any, FlatBuffer] = field(default_factory=dict)
    state_snapshot: StateSnapshot = field(default_factory=StateSnapshot)
    grad_scaler: Any = None
    update_attached_scaler: bool = False
    no_sync: Any = None


def norm_buffer(progress: Progress, key: Any) -> FlatBuffer:
    """The flat copy kept for the norms of ``key`` (see :func:`lightning_wass.functional.otmdr.global_norm`)."""
    buffer = progress.norm_buffers.get(key)
    if buffer is None:
        buffer = progress.norm_buffers[key] = FlatBuffer()
    return buffer


class StepRun:
    """One step in progress: the parameters at ``theta``, what every pass computed, what to check."""

    def __init__(self, params: list[Tensor], perturb: list[bool], step_number: int, where: str, progress: Progress) -> None:
        self.params = params
        self.perturbable_index = [i for i, flag in enumerate(perturb) if flag]
        self.perturbable = [params[i] for i in self.perturbable_index]
        self.device = params[0].device if params else torch.device("cpu")
        self.step_number = step_number
        self.where = where
        self.checks: list[tuple[str, Tensor]] = []
        self.entry: Grads = [p.grad for p in params]
        self._entry_seen: Grads | None = None
        self._has_entry = False
        self.kept = KeptGradients()
        self.scaling: ScaledPasses | None = None
        self.final_sum: Grads | None = None
        self.loss: Tensor | None = None
        self.pass_count = 0
        self.two_step = False
        self.lightning_accumulation = False
        self.update_scaler = False
        # the parameters at theta (all of them: the rollback needs the ones that are never perturbed too)
        # (shape, dtype, device) of every parameter, read once a step: the gradients share it
        self.layout = [(p.shape, p.dtype, p.device) for p in params]
        progress.theta_buffers = copy_into(progress.theta_buffers, params, self.layout)
        self.theta: list[Tensor] = progress.theta_buffers
        self.theta_perturbable = [self.theta[i] for i in self.perturbable_index]
        # the two-step API's position in the step
        self.particle = 0
        self.ascent_step = 0
        self.history: list[Grads] = []
        self.frozen: ExitStack | None = None

    def layout_of(self, grads: list[Tensor], start: int = 0) -> list[tuple[Any, ...]] | None:
        """The layout of ``grads`` if they are the gradients of ``params[start:start + len(grads)]``
        (a gradient has its parameter's shape, dtype and device; torch checks that on assignment)."""
        params = self.params[start : start + len(grads)]
        if len(params) != len(grads) or any(g is not p.grad for g, p in zip(grads, params)):
            return None
        return self.layout[start : start + len(grads)]

    @property
    def has_entry_gradients(self) -> bool:
        entry = self.entry
        if entry is not self._entry_seen:  # the entry list is replaced, never changed in place
            self._entry_seen, self._has_entry = entry, any(g is not None for g in entry)
        return self._has_entry

    def gradients(self) -> Grads:
        return [p.grad for p in self.params]

    def check(self, what: str, value: Tensor) -> None:
        """Remember a value that must be finite (checked once, at the end of the step; a one-element
        tensor of any dtype and device, converted only where the values are stacked for one read)."""
        self.checks.append((what, value.detach()))

    @torch.no_grad()
    def restore_theta(self) -> None:
        if self.perturbable:
            torch._foreach_copy_(self.perturbable, self.theta_perturbable)

    @torch.no_grad()
    def restore_all(self) -> None:
        if self.params:
            torch._foreach_copy_(self.params, self.theta)

    def add_final(self, grads: Grads, copy: bool = False) -> None:
        """Add one particle's final gradient to the running sum (``copy``: the caller keeps ``grads``)."""
        if self.final_sum is None:
            self.final_sum = [None if g is None else (g.clone() if copy else g) for g in grads]
            return
        total = self.final_sum
        both = [i for i, (t, g) in enumerate(zip(total, grads)) if t is not None and g is not None]
        if both:
            torch._foreach_add_([total[i] for i in both], [grads[i] for i in both])  # type: ignore[misc]
        for i, (t, g) in enumerate(zip(total, grads)):
            if t is None and g is not None:
                total[i] = g.clone() if copy else g

    def release(self) -> None:
        if self.frozen is not None:
            self.frozen.close()
            self.frozen = None
