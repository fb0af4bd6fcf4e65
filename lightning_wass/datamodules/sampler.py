"""The training sampler: torch's ``DistributedSampler`` order, with the padding rows marked.

Under DDP with ``W`` processes and ``N`` training points, torch's ``DistributedSampler`` shuffles
``range(N)`` by a generator seeded with ``seed + epoch`` and, when ``W`` does not divide ``N``,
appends ``P = W * ceil(N / W) - N`` copies of the first indices of that order, so that every
process gets ``ceil(N / W)`` points (equal batch counts: collectives such as ``all_gather`` need
equal shapes on every rank). Those ``P`` points are then seen twice an epoch.

:class:`TrainingSampler` yields exactly that order. With ``mark_padding=True`` (the DataModules
set it with ``return_index=True``) the ``P`` appended entries are *padding codes* instead of
plain indices: the code of a copy of row ``r`` is ``-(r + 1)``, always negative.
:class:`~lightning_wass.datamodules.base.TensorDictDataset` serves a code as the features (and
target) of row ``r`` with ``index = -1`` (:data:`~lightning_wass.datamodules.batch.PADDING_INDEX`),
so every rank keeps ``ceil(N / W)`` rows an epoch while a module that reads indices can drop the
padding rows with :func:`~lightning_wass.datamodules.batch.padding_mask`: over all ranks, every
real index then appears exactly once an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler

from lightning_wass._validation import check_int


def padding_code(row: int) -> int:
    """The sampler's code of a padding copy of row ``row``: ``-(row + 1)`` (negative)."""
    return -(int(row) + 1)


def decode_padding(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, is_padding)`` of sampler output ``index``: a code ``-(r + 1)`` is a copy of row ``r``."""
    is_padding = index < 0
    return torch.where(is_padding, -index - 1, index), is_padding


class TrainingSampler(DistributedSampler):
    """``DistributedSampler(dataset, num_replicas, rank, shuffle, seed)`` with optional marked padding.

    The global order of an epoch is that of torch's sampler: ``randperm(N)`` of a generator seeded
    with ``seed + epoch`` (``range(N)`` without ``shuffle``), then ``P = W * ceil(N / W) - N``
    repeats of its first entries (cycling when ``P > N``); rank ``k`` takes positions
    ``k, k + W, k + 2W, ...``. So the order depends only on ``(seed, epoch)``, and ``W`` ranks with
    batch ``b`` see the same global batches as one rank with batch ``W b``.

    Args:
        dataset: anything with ``len()``.
        num_replicas, rank: the world size ``W`` and this process's rank.
        shuffle: shuffle each epoch (else the order ``0..N-1``).
        seed: seed of the shuffling.
        mark_padding: yield the ``P`` repeats as padding codes ``-(r + 1)`` (see the module
            docstring) instead of the indices ``r``.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int,
        rank: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        mark_padding: bool = False,
    ) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError(f"dataset must have a length (a Dataset or a sequence), got {type(dataset).__name__}")
        check_int("num_replicas", num_replicas, minimum=1)
        check_int("rank", rank, minimum=0, maximum=num_replicas - 1)
        check_int("seed", seed)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)  # type: ignore[arg-type]
        self.mark_padding = bool(mark_padding)

    @property
    def padding(self) -> int:
        """``P``: entries added an epoch so that every rank gets ``ceil(N / W)`` (0 when ``W`` divides ``N``)."""
        return self.total_size - len(self.dataset)  # type: ignore[arg-type]

    def global_order(self) -> list[int]:
        """The order of the epoch over all ranks (length ``W * ceil(N / W)``), padding included."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n
        if pad > 0:
            repeats = (order * math.ceil(pad / n))[:pad]
            order += [padding_code(r) for r in repeats] if self.mark_padding else repeats
        return order

    def __iter__(self) -> Iterator[int]:
        own = self.global_order()[self.rank : self.total_size : self.num_replicas]
        if len(own) != self.num_samples:  # pragma: no cover - guarded by construction
            raise AssertionError(f"rank {self.rank} got {len(own)} indices, expected {self.num_samples}")
        return iter(own)
