"""Training steps that are undone, not written, when they diverge.

The rule every module follows (issue 12): a training step whose result is non-finite, or beyond a
documented bound, raises :class:`~lightning_wass.DivergenceError` *before* anything is written,
and the module's in-memory state is put back to what it was when the step began. So ``last.ckpt``
and the checkpoint Lightning writes on an exception hold the last good state and resume cleanly.

A step runs inside ``with guard.step(where) as check:``. Inside it the module

- registers each optimizer before its first update of the step (``check.update(name, optimizer,
  hint)``): the parameters and the optimizer's per-parameter state are copied once;
- records what must stay finite or bounded (``check.finite(what, value, hint)``,
  ``check.bounded(what, value, bound, hint)``); nothing is read back yet;
- calls ``check.verify()`` before it writes anything that is not an optimizer's (a particle table,
  a cache): all recorded flags and, per optimizer, "parameters finite" and "moved less than
  ``max_update_ratio`` times their norm" (``||theta' - theta|| <= r max(||theta||, 1)``) are read
  back in **one** host synchronisation.

If a flag fails (at ``verify`` or at the end of the block), or any exception leaves the block,
every registered optimizer's parameters and state, the owner's buffers (BatchNorm statistics
and batch counters, spectral norm's vectors), its named counters and the Trainer's optimizer-step counters
(``global_step``) are restored; a failing flag raises :class:`DivergenceError` naming the quantity, the step and the
knob that flag names (the first failing flag in the order recorded: the cause comes before its
effects). A value that is not finite because the *data* are not is reported as a ``ValueError``.

Why not Lightning's ``detect_anomaly`` or torch's anomaly mode: they find where a NaN was made in
the backward pass, at many times the cost, and restore nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_wass._validation import DivergenceError
from lightning_wass.optim.snapshot import StateSnapshot, copy_into

RESTORED = "the module was put back to its state before this step (last.ckpt and the on-exception checkpoint hold that state)"


Hint = Union[str, Callable[[], str]]
"""What to change: a string, or a function called on failure (before the state is restored)."""


def base_optimizer(optimizer: Any) -> Optimizer:
    """The ``torch.optim.Optimizer`` inside a ``LightningOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def rms_norm(x: Tensor) -> Tensor:
    """``sqrt(mean_i ||x_i||^2)`` over the samples of a batch (a batch's scale), in float32 or wider."""
    x = x.detach()
    return (x if x.dtype == torch.float64 else x.float()).flatten(1).square().sum(1).mean().sqrt()


def rms_ratio(x: Tensor, reference: Tensor) -> Tensor:
    """``rms_norm(x) / rms_norm(reference)``: how far samples spread compared with a data batch
    (the quantity the modules' ``sample_spread_bound`` limits).

    Computed as ``||x||_F / sqrt(n)`` per batch (``sqrt(mean_i ||x_i||^2) = ||x||_F / sqrt(n)``): one
    norm kernel a batch instead of five; equal to the ``rms_norm`` quotient up to float rounding."""
    return _frobenius_rms(x) / _frobenius_rms(reference).clamp_min(1e-12)


def _frobenius_rms(x: Tensor) -> Tensor:
    """:func:`rms_norm` as ``||x||_F / sqrt(n)`` (NaN for an empty batch, as the mean over none)."""
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    n = x.shape[0] if x.dim() > 0 else 1
    return torch.linalg.vector_norm(x) / math.sqrt(n) if n > 0 else x.new_full((), math.nan)


@dataclass
class _Flag:
    what: str
    value: Tensor  # bool: True = failed
    message: str  # with {restored}, {detail} and {hint} filled in when it fails
    hint: Hint = ""
    error: type[Exception] = DivergenceError
    detail: Tensor | None = None  # a figure quoted in the message ({detail})


@dataclass
class _Update:
    name: str
    optimizer: Optimizer
    params: list[Tensor]
    before: list[Tensor]
    state: StateSnapshot
    hint: Hint
    position: int  # how many flags were recorded before it: its own flags sort there (its effects come later)
    buffers: _Buffers


@dataclass
class _Buffers:
    params: list[Tensor] | None = None
    state: StateSnapshot = field(default_factory=StateSnapshot)
    after: list[Tensor] | None = None  # scratch: the parameters after the step, then their move


class StepCheck:
    """The checks of one training step (see the module docstring)."""

    def __init__(self, guard: "UpdateGuard", where: str, owner: Any, counters: Sequence[str]) -> None:
        self.guard = guard
        self.where = where
        self._flags: list[_Flag] = []
        self._updates: dict[str, _Update] = {}
        self._owner = owner
        self._counters = {name: getattr(owner, name) for name in counters} if owner is not None else {}
        self._progress = [(p, _fields(p)) for p in _step_progress(owner)]
        # buffers a forward pass changes (BatchNorm statistics and batch counter, spectral norm's vectors)
        self._module_buffers = list(owner.buffers()) if isinstance(owner, torch.nn.Module) else []
        if self._module_buffers:
            kept = guard._buffers.setdefault("<module buffers>", _Buffers())
            kept.params = copy_into(kept.params, [b.detach() for b in self._module_buffers])
            self._module_buffers_before = kept.params
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ recording
    def finite(self, what: str, value: Tensor, hint: Hint, *, error: type[Exception] = DivergenceError) -> None:
        """``value`` must be finite everywhere; ``hint`` says what to change if it is not (a string, or
        a function called only on failure, to derive the advice from the state that blew up)."""
        value = value.detach()
        bad = ~torch.isfinite(value).all() if value.is_floating_point() else torch.zeros((), dtype=torch.bool, device=value.device)
        if error is DivergenceError:
            message = f"{what} became non-finite (NaN or Inf) in {self.where}; {{restored}}. {{hint}}"
        else:
            message = f"{what} holds non-finite values (NaN or Inf) in {self.where}; {{hint}}"
        self._add(_Flag(what, bad, message, hint, error))

    def bounded(self, what: str, value: Tensor, bound: float, hint: Hint) -> None:
        """The scalar ``value`` must be finite and at most ``bound`` (a documented divergence bound)."""
        value = value.detach().float().reshape(())
        bad = ~(torch.isfinite(value) & (value <= bound))
        message = f"{what} reached {{detail:.3g}}, beyond its bound {bound:g}, in {self.where}; {{restored}}. {{hint}}"
        self._add(_Flag(what, bad, message, hint, DivergenceError, value))

    def update(self, name: str, optimizer: Any, hint: Hint) -> None:
        """Register ``optimizer`` before its first update in this step (later calls do nothing)."""
        if name in self._updates:
            return
        optimizer = base_optimizer(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        buffers = self.guard._buffers.setdefault(name, _Buffers())
        with torch.no_grad():
            buffers.params = copy_into(buffers.params, params)
            buffers.state.save(optimizer, params)
        self._updates[name] = _Update(name, optimizer, params, buffers.params, buffers.state, hint, len(self._flags), buffers)
        if self._device is None and params:
            self._device = params[0].device

    def _add(self, flag: _Flag) -> None:
        if self._device is None:
            self._device = flag.value.device
        self._flags.append(flag)

    # ------------------------------------------------------------------ verdict
    def _ordered_flags(self) -> list[_Flag]:
        """The recorded flags with each optimizer's flags placed where it was registered."""
        ordered: list[_Flag] = []
        start = 0
        for update in sorted(self._updates.values(), key=lambda u: u.position):
            ordered += self._flags[start : update.position] + self._update_flags(update)
            start = update.position
        return ordered + self._flags[start:]

    def _update_flags(self, update: _Update) -> list[_Flag]:
        """"Parameters finite" and "moved at most ``max_update_ratio`` times their norm" for one optimizer.

        The parameters after the step are copied into a scratch buffer laid out like the copy made
        before it (flat tensors, one per device and dtype), so each norm is one kernel per flat
        tensor rather than one per parameter, and ``theta' - theta`` is one in-place subtraction."""
        if not update.params:
            return []
        ratio_bound = self.guard.max_update_ratio
        kept = update.buffers
        with torch.no_grad():  # (copies read the parameters as they are: no detached aliases needed)
            kept.after = copy_into(kept.after, update.params)
        after_flats, before_flats = kept.after.flats, update.before.flats  # type: ignore[attr-defined]
        flags = [_Flag(
            f"the {update.name}'s parameters", ~torch.isfinite(_norm(after_flats)),
            f"the {update.name}'s parameters became non-finite (NaN or Inf) in {self.where}; {{restored}}. {{hint}}",
            update.hint,
        )]
        if ratio_bound is not None:
            with torch.no_grad():
                for moved, before in zip(after_flats, before_flats):
                    moved.sub_(before)
            ratio = _norm(after_flats) / _norm(before_flats).clamp_min(1.0)
            flags.append(_Flag(
                f"the {update.name}'s update", ~(ratio <= ratio_bound),
                f"the {update.name}'s update in {self.where} moved its parameters {{detail:.3g}} times their norm "
                f"(bound: max_update_ratio={ratio_bound:g}); {{restored}}. {{hint}}",
                update.hint, DivergenceError, ratio,
            ))
        return flags

    def verify(self) -> None:
        """Read every flag back at once; on a failure restore the step's state and raise."""
        flags = self._ordered_flags()
        self._flags = []
        for update in self._updates.values():
            update.position = 0
        if not flags:
            return
        device = self._device or flags[0].value.device
        values = torch.stack([f.value.to(device).reshape(()) for f in flags]).tolist()
        failed = [f for f, bad in zip(flags, values) if bad]
        if not failed:
            return
        first = failed[0]
        hint = first.hint() if callable(first.hint) else first.hint  # before the restore: it may read the state
        detail = float(first.detail) if first.detail is not None else math.nan
        self.restore()
        raise first.error(first.message.format(restored=RESTORED, detail=detail, hint=hint))

    def restore(self) -> None:
        """Put back every registered optimizer's parameters and state, and the owner's counters."""
        for update in self._updates.values():
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in update.params], update.before)
            update.state.restore(update.optimizer)
        if self._module_buffers:
            with torch.no_grad():
                torch._foreach_copy_(self._module_buffers, self._module_buffers_before)
        for name, value in self._counters.items():
            setattr(self._owner, name, value)
        for progress, state in self._progress:
            _put_back(progress, state)


def _norm(flats: Sequence[Tensor]) -> Tensor:
    """``||(f_1, ..., f_n)||_2`` of flat tensors as a float32 scalar on the first one's device (each
    norm in its own dtype, half precisions in float32)."""
    norms = [
        torch.linalg.vector_norm(f, dtype=torch.float32 if f.dtype in (torch.float16, torch.bfloat16) else None).float()
        for f in flats
    ]
    if len(norms) == 1:
        return norms[0]
    return torch.stack([n.to(norms[0].device) for n in norms]).norm()


class _Fields(list):
    """The saved fields of one dataclass: ``(name, value)`` pairs, a nested one as ``_Fields``."""


_PLAIN = (int, float, bool, str, type(None))


def _fields(obj: Any) -> _Fields:
    """Every field of the dataclass ``obj`` (Lightning's progress trackers), nested dataclasses
    included: what ``obj.state_dict()`` (``dataclasses.asdict``) holds, read without building
    and deep-copying dictionaries (values other than numbers and strings are deep-copied)."""
    saved = _Fields()
    for name, value in vars(obj).items():
        if hasattr(value, "__dataclass_fields__"):
            saved.append((name, _fields(value)))
        else:
            saved.append((name, value if isinstance(value, _PLAIN) else copy.deepcopy(value)))
    return saved


def _put_back(obj: Any, saved: _Fields) -> None:
    """Restore what :func:`_fields` saved, into the same objects."""
    for name, value in saved:
        if isinstance(value, _Fields):
            _put_back(getattr(obj, name), value)
        else:
            setattr(obj, name, value)


def _step_progress(owner: Any) -> list[Any]:
    """The Trainer's optimizer-step counters of ``owner`` (a LightningModule), if it is attached.

    ``trainer.global_step`` counts the steps of Lightning's optimizers, taken before ``verify`` can
    see their result; restoring these counters with the parameters keeps the on-exception
    checkpoint's ``global_step`` that of the restored state, so a resume repeats the failed step.
    """
    trainer = getattr(owner, "_trainer", None)
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None:
        return []
    return [loop.manual_optimization.optim_step_progress, loop.automatic_optimization.optim_progress]


class UpdateGuard:
    """Undoable training steps for one module.

    Args:
        max_update_ratio: the documented bound on one step's update, ``||theta' - theta|| <=
            max_update_ratio * max(||theta||, 1)`` per optimizer (``None``: no bound). No useful
            step moves a network by a thousand times its own norm; an lr that does diverges.

    The copies of the parameters and optimizer states live in buffers kept between steps.
    """

    def __init__(self, max_update_ratio: float | None = 1e3) -> None:
        self.max_update_ratio = max_update_ratio
        self._buffers: dict[str, _Buffers] = {}

    @contextmanager
    def step(self, where: str, *, owner: Any = None, counters: Iterable[str] = ()) -> Iterator[StepCheck]:
        """One guarded step; ``owner``'s attributes ``counters`` are restored with the parameters."""
        check = StepCheck(self, where, owner, tuple(counters))
        try:
            yield check
            check.verify()
        except DivergenceError as error:
            check.restore()
            if RESTORED not in str(error):
                raise DivergenceError(f"{error}; {RESTORED}") from error
            raise
        except BaseException:
            check.restore()
            raise

    @classmethod
    def of(cls, owner: Any, max_update_ratio: float | None = 1e3) -> "UpdateGuard":
        """The guard kept on ``owner`` (created on first use; kept out of ``state_dict`` and pickles)."""
        guard = owner.__dict__.get("_guard")
        if guard is None:
            guard = owner.__dict__["_guard"] = cls()
        guard.max_update_ratio = max_update_ratio
        return guard

    def __getstate__(self) -> dict[str, Any]:
        # the buffers are scratch space: never pickled (ddp_spawn, deepcopy of a module)
        return {"max_update_ratio": self.max_update_ratio, "_buffers": {}}


def guarded_optimizer_step(module: Any, optimizer: Any, closure: Any, *, name: str, hint: Hint, where: str) -> None:
    """``optimizer.step(closure=closure)`` for an automatic-optimization LightningModule's
    ``optimizer_step``, undone when it diverges (the loss is checked by the module's own step; here
    the parameters: finite, and moved at most ``module.max_update_ratio`` times their norm)."""
    guard = UpdateGuard.of(module, getattr(module, "max_update_ratio", 1e3))
    with guard.step(where, owner=module) as check:
        check.update(name, optimizer, hint)
        optimizer.step(closure=closure)
