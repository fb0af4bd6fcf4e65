"""Copies of parameters and optimizer state kept between steps, to undo a step whose result is not finite.

Used by the SAM family's own step (``optim/_step_run.py``) and by the divergence guard
(:mod:`lightning_wass.guard`), which undoes a whole training step.

A SAM-family step checks every loss and gradient it computed, but a finite gradient can still give
non-finite parameters (an ``lr`` a scheduler set to ``inf``, an update that overflows). So the
parameters and the base optimizer's per-parameter state are copied before the base step and put
back if anything in the step (or the parameters after it) is not finite. The copies live in
buffers kept between steps (one ``_foreach_copy_`` each way): allocating fresh memory every step
costs more than the copy. The buffers of one device and dtype are views of one flat tensor
(:attr:`Buffers.flats`), so a norm over all of them is one kernel instead of one per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import methodcaller
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_wass.functional.otmdr import flat_views

__all__ = ["Buffers", "StateSnapshot", "copy_into"]

_values = methodcaller("values")


def _layout(tensors: Sequence[Tensor]) -> list[tuple[Any, ...]]:
    return [(t.shape, t.dtype, t.device) for t in tensors]


class Buffers(list):
    """Copies kept between steps (a list of tensors, one per source tensor), with the layout
    (shapes, dtypes, devices) they were made for and the flat tensors they are views of: one per
    (device, dtype), in order of first appearance."""

    layout: list[tuple[Any, ...]]
    flats: list[Tensor]


def _allocate(tensors: Sequence[Tensor]) -> Buffers:
    """Buffers shaped like ``tensors``: contiguous views of one flat tensor per (device, dtype)."""
    flats, views = flat_views(tensors)
    buffers = Buffers(views)
    buffers.flats = flats
    return buffers


def copy_into(buffers: list[Tensor] | None, tensors: Sequence[Tensor], layout: list[tuple[Any, ...]] | None = None) -> list[Tensor]:
    """Copy ``tensors`` into ``buffers`` (re-allocated when shapes, dtypes or devices changed).

    Returns a :class:`Buffers` (views of one flat tensor per device and dtype). ``layout``: the
    tensors' ``(shape, dtype, device)`` list when the caller has already read it.
    """
    tensors = list(tensors)
    if not tensors:
        return []
    if layout is None:
        layout = _layout(tensors)
    if not isinstance(buffers, Buffers) or buffers.layout != layout:
        buffers = _allocate(tensors)
        buffers.layout = layout
    torch._foreach_copy_(buffers, tensors)
    return buffers


class StateSnapshot:
    """The base optimizer's per-parameter state, saved before its step and restorable after it.

    Saving walks ``optimizer.state.items()`` (hashing a tensor key is a Python call, so looking each
    parameter up costs more than the copy); the copy reuses its buffers without re-reading their
    layout while the state holds the same tensor objects as at the last save (torch's optimizers
    update their state in place, so that is every step after the first)."""

    def __init__(self) -> None:
        self._buffers: list[Tensor] | None = None
        self._sources: list[Tensor] = []
        self._params: list[Tensor] = []
        self._saved: list[tuple[Tensor, dict[str, Any]]] = []
        self._values: list[Any] = []
        self._value_ids: list[int] = []
        self._param_ids: list[int] = []
        self._param_ids_given: list[int] | None = None
        self._state_count = 0

    def save(self, optimizer: Optimizer, params: Sequence[Tensor], param_ids: list[int] | None = None) -> None:
        """Remember ``optimizer.state[p]`` for every ``p`` (tensors copied, other values kept as they are).

        ``param_ids``: ``list(map(id, params))`` when the caller keeps it and never changes it (a new
        list for other parameters); the same list object as at the last save then stands for the
        same parameters without comparing them."""
        if self._unchanged(optimizer, params, param_ids):
            torch._foreach_copy_(self._buffers, self._sources)  # type: ignore[arg-type]
            return
        wanted = {id(p) for p in params}
        saved: list[tuple[Tensor, dict[str, Any]]] = []
        tensors: list[Tensor] = []
        for p, state in optimizer.state.items():
            if id(p) not in wanted:
                continue
            entry: dict[str, Any] = {}
            for key, value in state.items():
                if isinstance(value, Tensor):
                    entry[key] = len(tensors)
                    tensors.append(value)
                else:
                    entry[key] = ("value", value)
            saved.append((p, entry))
        sources = self._sources
        if self._buffers and len(sources) == len(tensors) and all(a is b for a, b in zip(sources, tensors)):
            torch._foreach_copy_(self._buffers, tensors)
        else:
            self._buffers = copy_into(self._buffers, tensors)
            self._sources = tensors
        self._params = list(params)
        self._saved = saved
        self._values = [v for state in optimizer.state.values() for v in state.values()]
        self._value_ids = list(map(id, self._values))
        self._param_ids = list(map(id, self._params))
        self._param_ids_given = param_ids
        self._state_count = len(optimizer.state)

    def _unchanged(self, optimizer: Optimizer, params: Sequence[Tensor], param_ids: list[int] | None = None) -> bool:
        """Whether the state holds the same objects, in the same order, as at the last save, for the
        same parameters: then the saved layout stands and only the tensors' values need copying.
        (Every value is compared, so a non-tensor value, which a step replaces, takes the full path.)"""
        if not self._buffers or len(optimizer.state) != self._state_count or len(params) != len(self._params):
            return False
        # ids compared as lists (C loops): the objects of the last save are held here, so their ids
        # cannot have been reused by other objects
        values = chain.from_iterable(map(_values, optimizer.state.values()))
        if list(map(id, values)) != self._value_ids:
            return False
        if param_ids is not None and param_ids is self._param_ids_given:
            return True
        return list(map(id, params)) == self._param_ids

    def restore(self, optimizer: Optimizer) -> None:
        """Put the saved state back (state created by the step is removed)."""
        buffers = self._buffers or []
        kept = set()
        for p, entry in self._saved:
            kept.add(id(p))
            optimizer.state[p] = {
                key: (value[1] if isinstance(value, tuple) else buffers[value].clone()) for key, value in entry.items()
            }
        for p in self._params:
            if id(p) not in kept:
                optimizer.state.pop(p, None)
