"""Keep BatchNorm running statistics out of the perturbed passes of a SAM-family step.

An optimizer holds parameters, not modules, so it cannot reach the BatchNorm layers of the model
whose loss the closure computes. :func:`frozen_running_stats` therefore registers a *global*
forward pre-hook (``torch.nn.modules.module.register_module_forward_pre_hook``) for the duration
of the perturbed passes. The first time a module is called inside the block, every normalisation
layer beneath it (its ``_modules``, walked) that tracks running statistics in training mode is frozen:

- a BatchNorm layer (``_BatchNorm``: BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants) gets
  ``track_running_stats = False`` until the block ends: in training mode it then normalises with
  the batch statistics exactly as before but neither reads nor updates ``running_mean``,
  ``running_var`` or ``num_batches_tracked`` (no copies needed);
- any other layer with running statistics (InstanceNorm with ``track_running_stats=True``, whose
  forward updates them regardless) has its buffers copied, and written back when the block ends.

Walking the called module's descendants (rather than waiting for each layer's own call) is what
makes this work under ``torch.compile``: a compiled model runs its layers inside the compiled
graph, where no per-layer hook fires, but the hook still fires once for the compiled (or
``module.compile()``-d) top-level module. The changed ``track_running_stats`` attribute is guarded
by dynamo, so the model is compiled once more for the frozen passes and both graphs are cached.
Dynamo warns whenever a global hook exists while an ``OptimizedModule`` is called (the hook fires
"an extra time" for the wrapper); that extra call is exactly the one this freeze relies on, so the
warning is silenced inside the block only.

The hook costs every module call inside the block PyTorch's slow call path (a few microseconds
each, a third of a small CNN's frozen pass on the CPU). So the optimizer passes its parameters:
once the modules walked so far hold all of them (in a plain closure, right after the model's
top-level call), the hook removes itself and the remaining calls take the fast path; the layers it
froze stay frozen until the block ends. A normalisation layer in a module that holds none of the
optimizer's parameters and is first called after that point (a feature extractor kept in training
mode and called after the model) is therefore not frozen; a parameter that belongs to no module
keeps the hook for the whole block, as without ``params``.

So the running statistics end the step exactly as the first, unperturbed pass left them. This
replaces the official code's ``disable_running_stats`` (``momentum = 0``, which still counts
``num_batches_tracked`` and does not cover ``momentum=None``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Set
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_COMPILED_HOOK_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def _descendants(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and every module beneath it (a module shared by two parents may come twice).

    A plain walk of ``_modules``: ``Module.modules()`` builds a prefixed name for every module
    (``named_modules``), which costs several times more and happens on every perturbed step."""
    stack = [module]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(child for child in current._modules.values() if child is not None)


class _Freezer:
    """Freezes the normalisation layers beneath each module called inside the block, once each.

    ``watched``: the ids of the parameters whose modules must be reached (the optimizer's); once the
    walked modules hold all of them, ``covered`` is set and the hook can go."""

    def __init__(self, watched: set[int] | None) -> None:
        self.seen: set[int] = set()
        self.toggled: list[_BatchNorm] = []
        self.saved: list[tuple[nn.Module, dict[str, Tensor]]] = []
        self.pending = watched
        self.handle: RemovableHandle | None = None

    def __call__(self, module: nn.Module, args: Any) -> None:
        if id(module) in self.seen:
            return
        pending = self.pending
        for sub in _descendants(module):
            if id(sub) in self.seen:
                continue
            self.seen.add(id(sub))
            if isinstance(sub, _NormBase) and sub.training and sub.track_running_stats:
                self._freeze(sub)
            if pending:
                for parameter in sub._parameters.values():
                    if parameter is not None:
                        pending.discard(id(parameter))
        if pending is not None and not pending and self.handle is not None:
            self.handle.remove()  # every watched module is frozen: later calls take PyTorch's fast path
            self.handle = None

    def _freeze(self, layer: _NormBase) -> None:
        if isinstance(layer, _BatchNorm):
            layer.track_running_stats = False
            self.toggled.append(layer)
            return
        buffers = {name: getattr(layer, name) for name in _BUFFERS}
        self.saved.append((layer, {n: b.detach().clone() for n, b in buffers.items() if isinstance(b, Tensor)}))

    def release(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        for layer in self.toggled:
            layer.track_running_stats = True
        for layer, buffers in self.saved:
            for name, value in buffers.items():
                current = getattr(layer, name)
                if isinstance(current, Tensor):
                    current.detach().copy_(value)
        self.toggled.clear()
        self.saved.clear()


class _FrozenBlock:
    """The context manager :func:`frozen_running_stats` returns (a class: a generator-based one costs
    a few microseconds more on every perturbed step)."""

    __slots__ = ("_watched", "_freezer", "_warnings")

    def __init__(self, watched: set[int] | None) -> None:
        self._watched = watched
        self._freezer: _Freezer | None = None
        self._warnings: warnings.catch_warnings | None = None

    def __enter__(self) -> None:
        freezer = self._freezer = _Freezer(self._watched)
        freezer.handle = register_module_forward_pre_hook(freezer)
        try:
            caught = warnings.catch_warnings()
            caught.__enter__()
            self._warnings = caught
            warnings.filterwarnings("ignore", message=_COMPILED_HOOK_WARNING, category=UserWarning)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc_info: Any) -> bool:
        try:
            if self._warnings is not None:
                self._warnings.__exit__(*exc_info)
                self._warnings = None
        finally:
            if self._freezer is not None:
                self._freezer.release()
                self._freezer = None
        return False


def frozen_running_stats(params: Iterable[Tensor] | None = None, *, param_ids: Set[int] | None = None) -> AbstractContextManager[None]:
    """Inside the block, no normalisation layer's running statistics change (see module docstring).

    Args:
        params: the parameters being perturbed (the optimizer's). Once the modules called inside the
            block hold all of them, the global hook is removed; without ``params`` it stays for the
            whole block.
        param_ids: instead of ``params``, the set of their ``id``s (copied; an optimizer keeps one
            between steps instead of hashing every parameter's id on every step).
    """
    if param_ids is not None:
        watched: set[int] | None = set(param_ids)
    else:
        watched = None if params is None else set(map(id, params))
    return _FrozenBlock(watched)
