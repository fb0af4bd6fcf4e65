"""The batch convention every lightning_wass module reads.

Our datasets yield dicts ``{"x": features, "y": target, "index": dataset_index}``; ``"y"`` is
absent for unlabelled data and ``"index"`` is present only with ``return_index=True``. Modules read
batches through :func:`unpack_batch`, which also accepts what user DataModules usually yield: a
tensor ``x``, or a tuple ``(x,)``, ``(x, y)`` or ``(x, y, index)``.

Padding rows (DDP). When the training set's size ``N`` is not divisible by the number of processes
``W``, every rank still gets ``ceil(N / W)`` rows an epoch (collectives need equal shapes), so
``P = W * ceil(N / W) - N`` rows an epoch are padding. With ``return_index=True`` they are marked:
their ``index`` is :data:`PADDING_INDEX` (``-1``) and their ``x`` (and ``y``) a copy of some real
row. Anything that must see each point at most once an epoch (the particle method) drops them with
:func:`padding_mask`; over all ranks every real index then appears exactly once an epoch. Without
``return_index`` the repeats are plain copies (the DataModule warns once how many there are).
This applies to training batches: validation and test loaders are plain sequential loaders (under
DDP Lightning gives them its own ``DistributedSampler``, whose repeats are not marked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

PADDING_INDEX = -1
"""The ``index`` of a padding row: a copy of a real row that fills a rank's epoch under DDP."""


@dataclass
class Batch:
    """A batch split into its parts; ``y`` and ``index`` are ``None`` when the data has none."""

    x: Tensor
    y: Tensor | None = None
    index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def unpack_batch(batch: Any) -> Batch:
    """Split a batch in any of the accepted forms into :class:`Batch`.

    ``index`` (when present) may hold :data:`PADDING_INDEX` (``-1``) for padding rows under DDP
    (see the module docstring and :func:`padding_mask`); ``x`` and ``y`` of those rows are copies
    of real rows. Raises ``ValueError`` naming the accepted forms for anything else.
    """
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, Tensor):
        return Batch(batch)
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ValueError(f"a dict batch must have the key 'x'; got keys {sorted(batch)}")
        return Batch(batch["x"], batch.get("y"), batch.get("index"))
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3 and all(isinstance(b, Tensor) for b in batch):
        return Batch(*batch)
    raise ValueError(
        "a batch must be a tensor x, a tuple (x,), (x, y) or (x, y, index), or a dict with keys "
        f"'x' and optionally 'y' and 'index'; got {type(batch).__name__}"
    )


def require_index(batch: Batch, who: str) -> Tensor:
    """Return ``batch.index`` (long) or raise ``ValueError`` telling the user to set ``return_index=True``.

    Entries are dataset indices ``0..N-1`` of the split, or :data:`PADDING_INDEX` (``-1``) for the
    padding rows a DDP run with ``N`` not divisible by the world size carries (their ``x`` is a copy
    of a real row). A module that updates per-sample state must drop them, e.g.
    ``real = ~padding_mask(index)``, rather than index with ``-1`` (the last row).
    """
    if batch.index is None:
        raise ValueError(
            f"{who} needs each sample's dataset index in the batch: build the DataModule with "
            "return_index=True (or yield (x, y, index) / {'x', 'y', 'index'} batches)"
        )
    if batch.index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"batch index must be an integer tensor, got dtype {batch.index.dtype}")
    return batch.index.long()


def padding_mask(index: Tensor) -> Tensor:
    """Boolean mask of the padding rows of a batch: ``index == PADDING_INDEX`` (any negative index).

    Same shape and device as ``index``; all ``False`` in one process or when the world size divides
    the training set. Example: ``keep = ~padding_mask(index); x, index = x[keep], index[keep]``.
    """
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        what = getattr(index, "dtype", type(index).__name__)
        raise TypeError(f"padding_mask(index): index must be an integer tensor of dataset indices, got {what}")
    return index < 0
