"""What gradients already in ``.grad`` when ``step(closure)`` begins mean.

Three loops reach ``step(closure)`` with gradients present and a closure that does not clear them:

- Lightning's automatic optimization with ``accumulate_grad_batches > 1``: ``.grad`` holds the
  earlier micro-batches of the window and the closure back-propagates the last one. They are
  *accumulated*: every pass adds the closure's gradient to them (``ENTRY_ACCUMULATED``).
- the closure form of the davda54/sam README: the user back-propagates the batch, then calls
  ``step(closure)`` with a closure that repeats the same forward-backward without ``zero_grad``.
  ``.grad`` then already is the gradient at ``theta`` and the first pass doubles it; this is
  recognised (the first pass added exactly what was there) and the update is davda54's
  (``ENTRY_DUPLICATE``: the entry gradient is the first pass's, later passes start from zero).
- anything else (a stochastic model in the davda54 form, accumulation by hand in a plain loop) is
  ambiguous: the step refuses it and says what to change, instead of guessing.

A closure that clears the gradients (``optimizer.zero_grad()``, ``model.zero_grad()``) makes the
entry gradients irrelevant (``ENTRY_CLEARED``), as for any ``torch.optim`` closure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import FunctionType
from typing import Any

import torch
from torch import Tensor

ENTRY_NONE = "none"
ENTRY_CLEARED = "cleared"
ENTRY_ACCUMULATED = "accumulated"
ENTRY_DUPLICATE = "duplicate"

#: relative tolerance for "the first pass added exactly the gradient that was there"
DUPLICATE_RTOL = 1e-4

AMBIGUOUS = (
    "{where}: step(closure) was entered with gradients already in .grad, and the closure added its own to them "
    "without clearing them. If you back-propagated this batch before step() (the davda54/sam README's closure "
    "form), remove that backward: the closure computes the gradient at theta itself (or keep it and call "
    "optimizer.first_step() / second_step() instead of step()). If .grad holds earlier micro-batches "
    "(gradient accumulation), accumulate them inside the closure instead. A closure that clears with "
    "zero_grad(set_to_none=False) on the model cannot be told from one that adds: clear with optimizer.zero_grad(). "
    "The parameters were left unchanged."
)


def is_lightning_accumulation(closure: Callable[[], Any]) -> bool:
    """Whether ``closure`` is (or wraps) Lightning's automatic-optimization closure.

    Lightning hands it to the optimizer through ``functools.partial`` wrappers of its precision
    plugins; inside an accumulation window it does not clear the gradients by design.
    """
    if type(closure) is FunctionType:  # a plain function is neither Lightning's Closure nor a partial of one
        return False
    stack: list[Any] = [closure]
    for _ in range(32):
        if not stack:
            return False
        obj = stack.pop()
        cls = type(obj)
        if cls.__name__ == "Closure" and cls.__module__.startswith(("lightning.pytorch.loops", "pytorch_lightning.loops")):
            return True
        if isinstance(obj, functools.partial):
            stack.append(obj.func)
            stack.extend(obj.args)
    return False


def added_exactly_the_entry(after: Sequence[Tensor | None], entry: Sequence[Tensor | None]) -> bool:
    """``after == 2 * entry`` within :data:`DUPLICATE_RTOL`: the pass repeated the backward that filled ``.grad``."""
    pairs = [(a, e) for a, e in zip(after, entry) if e is not None]
    if not pairs or any(a is None for a, _ in pairs):
        return False
    diff = torch.stack([(a.float() - 2 * e.float()).norm() for a, e in pairs]).norm()
    ref = torch.stack([e.float().norm() for _, e in pairs]).norm()
    return bool(diff <= DUPLICATE_RTOL * ref + 1e-30) and bool(ref > 0)
