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
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

import torch
from torch import Tensor

from lightning_wass.functional.otmdr import FlatBuffer
from lightning_wass.optim._grad_scaling import ScaledPasses
from lightning_wass.optim.snapshot import StateSnapshot, copy_into
from lightning_wass.optim.passes import PassInfo

Grads = list[Tensor | None]

#: ``(shape, dtype, device)`` of a tensor, read by a C loop (``map``) instead of a comprehension
layout_of_tensor = attrgetter("shape", "dtype", "device")
_grad_of = attrgetter("grad")
_data_ptr = Tensor.data_ptr


def has_none(values: list[Any]) -> bool:
    """Whether ``values`` holds a ``None`` (compared by identity in a C loop: ``None in values`` would
    call ``Tensor.__eq__`` on every tensor)."""
    return any(map(is_, values, repeat(None)))


class PassGradients(list):
    """The gradients of one pass as :meth:`StepRun.gradients` read them: entry ``i`` is the ``.grad``
    of parameter ``i`` (or later a tensor that replaced it with the same shape: a clone, a sum), so
    the list has the parameters' layout (:attr:`layout`) and :meth:`StepRun.layout_of` needs no
    per-parameter comparison. Code that puts anything else into such a list must not use this type."""

    __slots__ = ("layout",)


def _copy_without_grad(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """``destinations <- sources`` (one ``_foreach_copy_``), outside autograd (the parameters are
    leaves that require grad). Inside a step grad mode is already off: no decorator to enter."""
    if torch.is_grad_enabled():
        with torch.no_grad():
            torch._foreach_copy_(destinations, sources)
    else:
        torch._foreach_copy_(destinations, sources)


class Structure:
    """What a step needs to know about the parameter groups, derived once per structure of the groups
    and reused while it stands (a small model's step spends more on rebuilding these lists than on
    some of its kernels).

    It stands while the optimizer holds the same ``param_groups`` list, the same group dicts in it,
    each with the same ``params`` list holding the same parameters (compared by id), the same
    ``perturb`` flags and every parameter keeps its shape, dtype and device (``p.data = ...`` may
    change them: that gives the parameter new storage, whose data pointer :meth:`matches` compares,
    and a new pointer makes it compare the layout itself). :meth:`matches` checks all of that at the
    start of every step, so
    ``add_param_group``, ``load_state_dict`` (new groups), a parameter replaced or added in a group's
    list, a group's ``perturb`` flag set, or ``model.half()`` after construction rebuild it. What
    changes from step to step (which parameters have a gradient, ``rho``, ``adaptive``, the noise) is
    not part of it and is read every step. The objects compared by id are held here, so their ids
    cannot be reused by others while the structure lives.
    """

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.groups = groups
        self.group_dicts = list(groups)
        self.param_lists = [group["params"] for group in groups]
        self.perturb = [bool(group["perturb"]) for group in groups]
        self.params: list[Tensor] = [p for params in self.param_lists for p in params]
        self.ids = list(map(id, self.params))
        self.id_set = frozenset(self.ids)  # for the BatchNorm freeze (see norm_stats.frozen_running_stats)
        self.layout = list(map(layout_of_tensor, self.params))
        self.pointers = list(map(_data_ptr, self.params))
        #: ``(index, group, start, stop)`` of each perturbed group: its parameters are ``params[start:stop]``
        self.perturbed_groups: list[tuple[int, dict[str, Any], int, int]] = []
        start = 0
        for j, (group, params, flag) in enumerate(zip(self.group_dicts, self.param_lists, self.perturb)):
            if flag:
                self.perturbed_groups.append((j, group, start, start + len(params)))
            start += len(params)
        self.perturbable_index = [i for j, _, a, b in self.perturbed_groups for i in range(a, b)]
        self.all_perturbable = len(self.perturbable_index) == len(self.params)
        self.perturbable = self.params if self.all_perturbable else [self.params[i] for i in self.perturbable_index]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        #: every parameter on the CPU (their devices are part of the layout, checked every step)
        self.all_cpu = all(p.device.type == "cpu" for p in self.params)
        #: a 0-d float32 zero on the device (read, never written: the value of a check that has none)
        self.zero = torch.zeros((), dtype=torch.float32, device=self.device)
        self._theta: list[Tensor] | None = None
        self._theta_perturbable: list[Tensor] = []

    def matches(self, groups: list[dict[str, Any]]) -> bool:
        """Whether the groups still have this structure (see the class docstring)."""
        if groups is not self.groups or len(groups) != len(self.group_dicts):
            return False
        for group, kept, params in zip(groups, self.group_dicts, self.param_lists):
            if group is not kept or group["params"] is not params:
                return False
        if [bool(group["perturb"]) for group in groups] != self.perturb:
            return False
        if len(self.param_lists) == 1:
            ids = list(map(id, self.param_lists[0]))
            if ids != self.ids:
                return False
            params = self.param_lists[0]
        else:
            params = [p for group_params in self.param_lists for p in group_params]
            if list(map(id, params)) != self.ids:
                return False
        # a parameter whose storage is replaced (p.data = ..., model.half(), .to(device)) has a new data
        # pointer: then the whole layout is read again (cheaper than reading it every step)
        pointers = list(map(_data_ptr, params))
        if pointers == self.pointers:
            return True
        if list(map(layout_of_tensor, params)) != self.layout:
            return False
        self.pointers = pointers  # new storage of the same layout (p.data = p.data.clone()): still this structure
        return True

    def theta_perturbable(self, theta: list[Tensor]) -> list[Tensor]:
        """The entries of ``theta`` (aligned with :attr:`params`) of the perturbable parameters."""
        if self.all_perturbable:
            return theta
        if theta is not self._theta:
            self._theta, self._theta_perturbable = theta, [theta[i] for i in self.perturbable_index]
        return self._theta_perturbable


def describe(what: Any, args: tuple[Any, ...]) -> str:
    """The name of a checked value (see :meth:`StepRun.check`)."""
    if callable(what):
        return what(*args)
    return what.format(*args) if args else what


def current_structure(progress: Progress, groups: list[dict[str, Any]]) -> Structure:
    """The :class:`Structure` of ``groups``: the kept one while it stands, else a new one."""
    structure = progress.structure
    if structure is None or not structure.matches(groups):
        structure = progress.structure = Structure(groups)
    return structure


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
    structure: Structure | None = None  # the param groups' structure at the last step (see Structure)


def norm_buffer(progress: Progress, key: Any) -> FlatBuffer:
    """The flat copy kept for the norms of ``key`` (see :func:`lightning_wass.functional.otmdr.global_norm`)."""
    buffer = progress.norm_buffers.get(key)
    if buffer is None:
        buffer = progress.norm_buffers[key] = FlatBuffer()
    return buffer


class StepRun:
    """One step in progress: the parameters at ``theta``, what every pass computed, what to check."""

    def __init__(self, structure: Structure, step_number: int, where: str, progress: Progress) -> None:
        params = structure.params
        self.structure = structure
        self.params = params
        self.perturbable_index = structure.perturbable_index
        self.perturbable = structure.perturbable
        self.device = structure.device
        self.step_number = step_number
        self.where = where
        self.checks: list[tuple[Any, tuple[Any, ...], Tensor]] = []  # (what, its arguments, the value): see check
        self.entry: Grads = list(map(_grad_of, params))
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
        # (shape, dtype, device) of every parameter: checked by the structure at the start of the step;
        # the gradients share it
        self.layout = structure.layout
        progress.theta_buffers = copy_into(progress.theta_buffers, params, self.layout)
        self.theta: list[Tensor] = progress.theta_buffers
        self.theta_perturbable = structure.theta_perturbable(self.theta)
        # the two-step API's position in the step
        self.particle = 0
        self.ascent_step = 0
        self.history: list[Grads] = []
        self.frozen: ExitStack | None = None

    def layout_of(self, grads: list[Tensor], start: int = 0) -> list[tuple[Any, ...]] | None:
        """The layout of ``grads`` if they are the gradients of ``params[start:start + len(grads)]``
        (a gradient has its parameter's shape, dtype and device; torch checks that on assignment)."""
        if start == 0 and type(grads) is PassGradients and grads.layout is self.layout:  # type: ignore[attr-defined]
            return self.layout
        if start == 0 and len(grads) == len(self.params):
            if not all(map(is_, grads, map(_grad_of, self.params))):
                return None
            return self.layout
        params = self.params[start : start + len(grads)]
        if len(params) != len(grads) or not all(map(is_, grads, map(_grad_of, params))):
            return None
        return self.layout[start : start + len(grads)]

    @property
    def has_entry_gradients(self) -> bool:
        entry = self.entry
        if entry is not self._entry_seen:  # the entry list is replaced, never changed in place
            self._entry_seen, self._has_entry = entry, not all(map(is_, entry, repeat(None)))
        return self._has_entry

    def gradients(self) -> Grads:
        """The ``.grad`` of every parameter now (a :class:`PassGradients`: its layout is known)."""
        grads = PassGradients(map(_grad_of, self.params))
        grads.layout = self.layout
        return grads

    def check(self, what: Any, value: Tensor, *args: Any) -> None:
        """Remember a value that must be finite (checked once, at the end of the step; a one-element
        tensor of any dtype and device, converted only where the values are stacked for one read).

        ``what`` names the value: a format string for ``args``, or a callable that returns the name
        from ``args``; it is only formatted when the value is found not finite (see :func:`describe`)."""
        self.checks.append((what, args, value.detach() if value.requires_grad else value))

    def restore_theta(self) -> None:
        if self.perturbable:
            _copy_without_grad(self.perturbable, self.theta_perturbable)

    def restore_all(self) -> None:
        if self.params:
            _copy_without_grad(self.params, self.theta)

    def add_final(self, grads: Grads, copy: bool = False) -> None:
        """Add one particle's final gradient to the running sum (``copy``: the caller keeps ``grads``)."""
        if self.final_sum is None:
            if not copy and not has_none(grads):
                self.final_sum = grads  # (a PassGradients keeps its known layout)
                return
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
