"""The particle table of worst-case generation: one particle and momentum buffer per training point.

Particle GDA (arXiv 2512.08176, DESIGN.md 3.1) keeps, for every training point ``x_i``, its
worst-case particle ``v_i`` (initialised ``v_i = x_i``), the particle's heavy-ball momentum buffer
``g_i`` and its target ``y_i``. Each iteration reads and rewrites only the rows of its batch.

The tables are plain tensor attributes, not registered buffers: DDP broadcasts registered buffers
from rank 0 at every forward (``broadcast_buffers=True``), which would copy the whole table each
step. Instead they travel through ``get_extra_state`` / ``set_extra_state`` (so ``state_dict``,
checkpoints and ``load_from_checkpoint`` hold every particle), and ``_apply`` moves them with the
module (``.to(device)``, ``.double()``). Under DDP every rank writes the all-gathered rows of the
global batch, so each rank holds the whole, identical table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class WorstCaseParticles(NamedTuple):
    """The worst-case sample: ``samples[i] = v_i``, with ``targets[i] = y_i`` and ``origins[i] = x_i``."""

    samples: Tensor
    targets: Tensor | None
    origins: Tensor


_TABLES = ("samples", "momentum", "origins", "targets", "seen")


class ParticleTable(nn.Module):
    """Per-training-point state ``(v_i, g_i, x_i, y_i)`` indexed by the dataset index ``i``.

    Filled either at once from the training tensors (:meth:`fill`) or lazily, row by row, from the
    batches that arrive (:meth:`register`) when only the number of points is known.
    """

    def __init__(self) -> None:
        super().__init__()
        self.size: int = 0
        self.samples: Tensor | None = None
        self.momentum: Tensor | None = None
        self.origins: Tensor | None = None
        self.targets: Tensor | None = None
        self.seen: Tensor | None = None  # bool (n,): rows filled so far (lazy filling)
        self.complete: bool = False
        self._probe = torch.zeros(0)  # follows .to() / .double() so empty tables know their device

    # ------------------------------------------------------------------ allocation
    @property
    def allocated(self) -> bool:
        return self.samples is not None

    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def dtype(self) -> torch.dtype:
        return self.samples.dtype if self.samples is not None else self._probe.dtype

    def fill(self, x: Tensor, y: Tensor | None) -> None:
        """Initialise every row from the training set: ``v_i = x_i``, ``g_i = 0`` (in the module's dtype)."""
        x = x.to(self.device, self._probe.dtype if x.is_floating_point() else None)
        self.size = int(x.shape[0])
        self.origins = x.clone()
        self.samples = x.clone()
        self.momentum = torch.zeros_like(x)
        self.targets = None if y is None else y.to(self.device).clone()
        self.seen = torch.ones(self.size, dtype=torch.bool, device=self.device)
        self.complete = True

    def allocate(self, size: int, x: Tensor, y: Tensor | None) -> None:
        """Reserve ``size`` empty rows shaped like the batch ``(x, y)``; rows are filled by :meth:`register`."""
        self.size = int(size)
        shape = (self.size, *x.shape[1:])
        self.origins = torch.zeros(shape, dtype=self._probe.dtype, device=x.device)
        self.samples = torch.zeros_like(self.origins)
        self.momentum = torch.zeros_like(self.origins)
        self.targets = None if y is None else torch.zeros((self.size, *y.shape[1:]), dtype=y.dtype, device=y.device)
        self.seen = torch.zeros(self.size, dtype=torch.bool, device=x.device)
        self.complete = False

    def register(self, index: Tensor, x: Tensor, y: Tensor | None) -> None:
        """Fill the rows of ``index`` not seen before with ``v = x``, ``g = 0``, ``y`` (no host sync)."""
        assert self.seen is not None and self.samples is not None and self.momentum is not None and self.origins is not None
        new = ~self.seen[index]
        shape = (-1,) + (1,) * (x.dim() - 1)
        mask = new.reshape(shape)
        x = x.to(self.origins.dtype)
        self.origins[index] = torch.where(mask, x, self.origins[index])
        self.samples[index] = torch.where(mask, x, self.samples[index])
        self.momentum[index] = torch.where(mask, torch.zeros_like(x), self.momentum[index])
        if self.targets is not None and y is not None:
            tmask = new.reshape((-1,) + (1,) * (y.dim() - 1))
            self.targets[index] = torch.where(tmask, y.to(self.targets.dtype), self.targets[index])
        self.seen[index] = True

    def update_complete(self) -> bool:
        """Check (one host sync) whether every row has been seen; cache the answer."""
        if not self.complete and self.seen is not None:
            self.complete = bool(self.seen.all())
        return self.complete

    def seen_rows(self) -> Tensor | None:
        """Indices of the filled rows, or ``None`` when all are filled."""
        if self.update_complete() or self.seen is None:
            return None
        return torch.nonzero(self.seen).flatten()

    # ------------------------------------------------------------------ rows
    def read(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The particles and momentum buffers ``(v, g)`` of the rows ``index`` (copies)."""
        assert self.samples is not None and self.momentum is not None
        return self.samples[index], self.momentum[index]

    def write(self, index: Tensor, samples: Tensor, momentum: Tensor, *, undo: list[tuple[Tensor, Tensor, Tensor]] | None = None) -> None:
        """Overwrite the particles and momentum buffers of ``index`` (O(len(index)), in place).

        With ``undo`` (a list), the rows' previous values are appended to it first, so that
        :meth:`rollback` can put them back (a step of several iterations that fails).
        """
        assert self.samples is not None and self.momentum is not None
        if undo is not None:
            undo.append((index, *self.read(index)))
        self.samples.index_copy_(0, index, samples.to(self.samples.dtype))
        self.momentum.index_copy_(0, index, momentum.to(self.momentum.dtype))

    def rollback(self, undo: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Undo the writes recorded in ``undo`` (latest first), then empty it."""
        while undo:
            index, samples, momentum = undo.pop()
            self.write(index, samples, momentum)

    def export(self) -> WorstCaseParticles:
        """The particles with their targets and origins (copies of the filled rows)."""
        if self.samples is None or self.origins is None:
            raise RuntimeError("the particle table is empty: fit the WorstCaseGenerator first")
        rows = self.seen_rows()
        pick = (lambda t: t.clone()) if rows is None else (lambda t: t[rows])
        return WorstCaseParticles(pick(self.samples), None if self.targets is None else pick(self.targets), pick(self.origins))

    # ------------------------------------------------------------------ nn.Module plumbing
    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"size": self.size, "complete": self.complete}
        for name in _TABLES:
            state[name] = getattr(self, name)
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.size = int(state["size"])
        for name in _TABLES:
            value = state.get(name)
            setattr(self, name, None if value is None else value.to(self.device))
        self.complete = bool(state.get("complete", False))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "ParticleTable":
        super()._apply(fn, recurse)
        self._probe = fn(self._probe)
        for name in _TABLES:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))
        return self

    def extra_repr(self) -> str:
        shape = None if self.samples is None else tuple(self.samples.shape)
        return f"size={self.size}, shape={shape}, complete={self.complete}"
