"""The DDP row exchange of worst-case generation: one GDA iteration's global batch, in and out.

Particle GDA (arXiv 2512.08176, DESIGN.md 3.1) keeps one particle ``v_i`` and momentum buffer
``g_i`` per training point. Under DDP every rank holds the whole, identical particle table, so
every rank must see the *global* batch of an iteration: which rows it reads (at the start) and what
the rows become (at the end). :class:`RowExchange` is the only place that talks to the other
processes for that:

- :meth:`RowExchange.start` (the iteration's first edge) all-gathers the dataset indices (and,
  while a lazily filled table still fills, the data), and marks the padding rows the DDP sampler
  adds when the world size does not divide the data set (``index = -1``,
  :mod:`lightning_wass.datamodules.batch`): they keep every rank's batch the same size but are no
  particles, so they are never checked and never written (no particle is updated twice an epoch);
- :meth:`RowExchange.finish` (the last edge) all-gathers the new rows ``(v_i, g_i)`` with the
  per-sample losses and the matching loss, in one packed all-gather, and drops the padding rows;
- :meth:`RowExchange.share` gives a rank its strided share ``rows[rank::world]`` of rows every rank
  drew alike (the transport map's ``m'`` particles, the gradient-norm evaluation's shards).

In one process every method is the identity (no copy, no host read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_wass.datamodules.batch import padding_mask


@dataclass
class GlobalBatch:
    """One iteration's batch: this rank's rows and what every rank knows of the global batch.

    Attributes:
        index: this rank's dataset indices, shape ``(m,)`` (padding rows: ``-1``).
        x, y: this rank's samples and targets.
        rows: the global batch's dataset indices without the padding rows (rank-major order).
        real: which rows of the gathered (rank-major) batch are dataset points; ``None`` when all are.
        padding: which of this rank's rows are padding; ``None`` when none is.
        x_all, y_all: the global batch's samples and targets (real rows only), gathered only when
            asked for (a lazily filled table registers them); else ``None``.
        world: the number of processes.
    """

    index: Tensor
    x: Tensor
    y: Tensor | None
    rows: Tensor
    real: Tensor | None
    padding: Tensor | None
    x_all: Tensor | None
    y_all: Tensor | None
    world: int

    @property
    def size(self) -> int:
        """Rows of this rank's batch ``m`` (padding included)."""
        return int(self.x.shape[0])


@dataclass
class NewRows:
    """The global batch's rows after the iteration (real rows only, rank-major order).

    ``losses`` are ``loss(theta, v_i)`` at the particles the forward pass used; ``matching`` is
    each rank's matching-loss term (one value per rank in one process, one per row under DDP).
    """

    index: Tensor
    samples: Tensor
    momentum: Tensor
    losses: Tensor
    matching: Tensor


class RowExchange:
    """All-gathers of one GDA iteration (see the module docstring) over a Trainer's strategy.

    Args:
        trainer: the Trainer whose strategy gathers and reduces, or ``None`` (one process).
    """

    def __init__(self, trainer: Any | None) -> None:
        self.trainer = trainer
        self.world = 1 if trainer is None else int(trainer.world_size)
        self.rank = 0 if trainer is None else int(trainer.global_rank)

    # ------------------------------------------------------------------ the iteration's edges
    def start(self, index: Tensor, x: Tensor, y: Tensor | None, *, with_data: bool) -> GlobalBatch:
        """Gather the global batch's indices (and its data with ``with_data``), mark the padding.

        One host read per call under DDP (whether any row is padding); none in one process.
        """
        gathered = self.gather(index)
        real = self.real_rows(gathered)
        rows = gathered if real is None else gathered[real]
        x_all = y_all = None
        if with_data:
            x_all, y_all = self.gather(x), None if y is None else self.gather(y)
            if real is not None:
                x_all, y_all = x_all[real], None if y_all is None else y_all[real]
        padding = None if real is None else index < 0
        return GlobalBatch(index, x, y, rows, real, padding, x_all, y_all, self.world)

    def finish(self, batch: GlobalBatch, samples: Tensor, momentum: Tensor, losses: Tensor, matching: Tensor) -> NewRows:
        """Gather this rank's new rows ``(v, g)``, losses and matching loss into the global batch's."""
        if self.world == 1:
            return NewRows(batch.rows, samples, momentum, losses.detach(), matching.detach().reshape(1))
        m = batch.size
        d = samples[0].numel()
        flat = [
            samples.reshape(m, -1),
            momentum.reshape(m, -1),
            losses.detach().reshape(m, 1),
            matching.detach().reshape(1, 1).expand(m, 1),
        ]
        payload = self.gather(torch.cat([t.to(samples.dtype) for t in flat], dim=1))
        v_all = payload[:, :d].reshape(-1, *samples.shape[1:])
        g_all = payload[:, d : 2 * d].reshape(-1, *samples.shape[1:])
        loss_all, match_all = payload[:, 2 * d], payload[:, 2 * d + 1]
        if batch.real is not None:  # the padding rows are no particles: never checked, never written
            v_all, g_all, loss_all, match_all = v_all[batch.real], g_all[batch.real], loss_all[batch.real], match_all[batch.real]
        return NewRows(batch.rows, v_all, g_all, loss_all, match_all)

    # ------------------------------------------------------------------ collectives
    def gather(self, tensor: Tensor) -> Tensor:
        """All-gather along the batch dimension (rank-major); the tensor itself in one process."""
        if self.world == 1:
            return tensor
        gathered = self.trainer.strategy.all_gather(tensor)
        return gathered.reshape(-1, *tensor.shape[1:])

    def real_rows(self, global_index: Tensor) -> Tensor | None:
        """The rows of the gathered batch that are dataset points, or ``None`` when all are
        (always in one process: it never pads)."""
        if self.world == 1:
            return None
        real = ~padding_mask(global_index)
        return None if bool(real.all()) else real

    def share(self, rows: Tensor) -> Tensor:
        """This rank's strided share ``rows[rank::world]`` of rows that every rank drew alike."""
        return rows if self.world == 1 else rows[self.rank :: self.world]

    def shard(self, rows: Tensor | None) -> Tensor | slice | None:
        """This rank's share of all particles (``rows=None``) or of ``rows``, for a sharded sum."""
        if rows is not None:
            return self.share(rows)
        return slice(self.rank, None, self.world) if self.world > 1 else None

    def reduce(self, tensor: Tensor, op: str) -> Tensor:
        """``op`` (``"sum"`` or ``"mean"``) over the processes; the tensor itself in one process
        unless a Trainer's strategy is there to apply it (it is the identity then too)."""
        if self.trainer is None:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op=op)
