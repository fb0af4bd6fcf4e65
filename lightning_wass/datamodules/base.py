"""In-memory DataModule base class shared by every lightning_wass DataModule.

All our data sets fit in memory (the papers use 200 to 6,000 points; CIFAR-10 is 150 MB as uint8),
so each DataModule loads its splits as tensors once and serves batches by tensor indexing
(``__getitems__``), which is many times faster than collating one dict per sample.

Split rules, the same for every subclass:
- the subclass's :meth:`load_pools` returns a ``"train"`` pool and optionally ``"test"`` and
  ``"val"`` pools;
- without a test pool, ``test_fraction`` of the train pool is held out as the test split, and
  without a val pool ``val_fraction`` of it as the validation split (fractions of the whole pool,
  stratified by class when labelled, seeded by ``seed``);
- ``num_samples`` then draws a class-balanced training subset of exactly that size from what is
  left, so ``train_size == num_samples`` and the val/test splits do not depend on ``num_samples``
  (runs on 1,000 and on 6,000 points are scored on the same held-out images);
- ``uint8`` features (raw images) stay ``uint8`` until the subset is drawn and are then scaled to
  float32 in ``[0, 1]`` (``x / 255``), so a 1,000-image subset of CIFAR-10 never holds the
  50,000-image pool as floats.

The training sampler is a ``DistributedSampler`` (:class:`~lightning_wass.datamodules.sampler.TrainingSampler`)
built here from ``seed`` and the Trainer's world size and rank, so the sample order depends only on
``(seed, epoch)``: a run resumed from a checkpoint sees the same batches as an uninterrupted one,
and a 2-process run sees the same global batches as a 1-process run with twice the batch size.
When the world size ``W`` does not divide the training-set size ``N``, each rank still gets
``ceil(N / W)`` rows an epoch: with ``return_index=True`` the ``W ceil(N / W) - N`` extra rows are
marked as padding (``index == -1``, see :mod:`~lightning_wass.datamodules.batch`), otherwise they
are repeats of real points and a ``UserWarning`` says how many.

Empty data is refused, never trained on silently: ``setup`` raises ``ValueError`` when the splits
leave no training point, or no validation / test point although ``val_fraction`` /
``test_fraction`` asked for some; building the train loader raises when ``batch_size`` with
``drop_last=True`` leaves no batch. Each message names the argument to change and the sizes.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_wass._validation import check_fraction, check_int, check_tensor
from lightning_wass.datamodules.batch import PADDING_INDEX
from lightning_wass.datamodules.sampler import TrainingSampler, decode_padding

SPLITS = ("train", "val", "test")


class TensorDictDataset(Dataset):
    """Dataset over in-memory tensors that yields ``{"x", "y"?, "index"?}`` dicts.

    ``__getitems__`` returns a whole batch at once (a dict of stacked tensors); the DataLoader's
    :func:`collate_batched` passes it through unchanged.

    Batched reads (``__getitems__``, what the DataLoader calls) take the indices of
    :class:`~lightning_wass.datamodules.sampler.TrainingSampler`: a negative entry is a padding
    code, ``-(r + 1)`` yields row ``r``'s ``x`` (and ``y``) with ``index = -1`` (``PADDING_INDEX``).
    A single read ``dataset[i]`` is plain Python indexing (``dataset[-1]`` is the last row, with
    ``index = N - 1``; out of range raises ``IndexError``).
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, *, return_index: bool = False) -> None:
        for name, value in (("x", x), ("y", y)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a tensor (one row a sample), got {type(value).__name__} ({value!r})")
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        self.x = x
        self.y = y
        self.return_index = return_index

    def __len__(self) -> int:
        return len(self.x)

    def _item(self, index: Tensor | int) -> dict[str, Tensor]:
        index = torch.as_tensor(index, dtype=torch.long)
        rows, is_padding = decode_padding(index)
        item = {"x": self.x[rows]}
        if self.y is not None:
            item["y"] = self.y[rows]
        if self.return_index:
            item["index"] = torch.where(is_padding, PADDING_INDEX, index)
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} samples")
        return self._item(index % n)

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        return self._item(torch.as_tensor(indices, dtype=torch.long))


def collate_batched(batch: Any) -> Any:
    """Pass through a batch that :meth:`TensorDictDataset.__getitems__` already stacked."""
    if isinstance(batch, dict):
        return batch
    return torch.utils.data.default_collate(batch)


def class_balanced_subset(y: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """Sorted indices of ``num_samples`` points of ``y`` with (as nearly as possible) equal counts per class.

    With ``C`` classes, the first ``num_samples % C`` classes (in sorted order) get one point more.
    Raises ``ValueError`` when the pool, or one class of it, is too small.
    """
    n = len(y)
    if num_samples > n:
        raise ValueError(f"num_samples={num_samples} exceeds the {n} training points available")
    classes = torch.unique(y)
    per_class = [num_samples // len(classes) + (1 if i < num_samples % len(classes) else 0) for i in range(len(classes))]
    chosen = []
    for c, count in zip(classes.tolist(), per_class):
        members = torch.nonzero(y == c).flatten()
        if count > len(members):
            raise ValueError(
                f"num_samples={num_samples} needs {count} training points of class {c} but only "
                f"{len(members)} exist; lower num_samples (at most about {len(classes) * min_class_count(y)})"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.sort(torch.cat(chosen)).values


def min_class_count(y: Tensor) -> int:
    """Size of the smallest class of ``y``."""
    return int(torch.unique(y, return_counts=True)[1].min())


def is_class_labels(y: Tensor | None) -> bool:
    """True for integer class labels of shape ``(N,)`` (the labels class balance applies to)."""
    return y is not None and not y.is_floating_point() and y.ndim == 1


def holdout_split(
    y: Tensor | None, n: int, fractions: tuple[float, ...], generator: torch.Generator
) -> list[Tensor]:
    """Split ``range(n)`` into ``len(fractions) + 1`` sorted index tensors: one part of each held-out
    fraction of ``n`` (in order), then the rest.

    Stratified by class for class labels ``y`` (each class contributes ``round(f * n_c)`` points to
    the part of fraction ``f``); otherwise a uniform random split in which a nonzero fraction gets
    at least one point.
    """
    groups = [torch.nonzero(y == c).flatten() for c in torch.unique(y).tolist()] if is_class_labels(y) else [torch.arange(n)]
    parts: list[list[Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for members in groups:
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for k, fraction in enumerate(fractions):
            count = round(fraction * len(members))
            if len(groups) == 1 and fraction > 0:
                count = max(1, count)
            parts[k].append(members[start : start + count])
            start += count
        parts[-1].append(members[start:])
    return [torch.sort(torch.cat(p)).values for p in parts]


def to_float_features(x: Tensor) -> Tensor:
    """``uint8`` images to float32 in ``[0, 1]`` (``x / 255``); other floats to float32; integers kept."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.is_floating_point() and x.dtype != torch.float32:
        return x.float()
    return x


class InMemoryDataModule(pl.LightningDataModule):
    """Base class: common arguments, seeded splits, in-memory batching, dataset indices.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes (0 = load in the main process; our data is in memory).
        val_fraction: fraction of the train pool held out for validation, in [0, 1) (unused when the
            subclass provides a val pool).
        test_fraction: fraction of the train pool held out for testing when the subclass provides
            no test pool, in [0, 1); ``val_fraction + test_fraction`` must be below 1.
        num_samples: size of the class-balanced training subset drawn from what the held-out splits
            leave (``None`` = all of it).
        seed: seeds the subset, the splits and the shuffling order.
        return_index: add each sample's index within its split to the batch (``batch["index"]``);
            particle methods need it to find each sample's particle.
        drop_last: drop the last incomplete training batch.

    Subclasses implement :meth:`load_pools` and may set :attr:`name`.
    """

    name: str = "data"

    def __init__(
        self,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        num_samples: int | None = None,
        seed: int = 0,
        return_index: bool = False,
        drop_last: bool = False,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (something must be left to train on), "
                f"got val_fraction={self.val_fraction} and test_fraction={self.test_fraction}"
            )
        self.num_samples = None if num_samples is None else check_int("num_samples", num_samples, minimum=1)
        self.seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)
        self.return_index = bool(return_index)
        self.drop_last = bool(drop_last)
        self._splits: dict[str, tuple[Tensor, Tensor | None]] | None = None
        self._warned_padding = False

    # ----------------------------------------------------------------- subclass hooks
    def load_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Return ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` as tensors.

        ``"val"`` and ``"test"`` are optional (missing ones are held out of ``"train"``); ``y`` may be
        ``None``. ``x`` is float, or ``uint8`` images (scaled to ``[0, 1]`` after subsetting), with
        shape ``(N, C, H, W)`` for images; ``y`` is long class labels, float targets, or ``None``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load_pools()")

    # ----------------------------------------------------------------- splitting
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        pools = self.load_pools()
        if "train" not in pools:
            raise ValueError(f"{type(self).__name__}.load_pools() must return a 'train' pool")
        unknown = sorted(set(pools) - set(SPLITS))
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_pools() returned unknown pools {unknown}; allowed: {SPLITS}")
        for split, (x, y) in pools.items():
            self.check_pool(split, x, y)
        generator = torch.Generator().manual_seed(self.seed)
        x, y = pools["train"]
        held_out = [split for split in ("test", "val") if split not in pools]
        fractions = tuple(self.test_fraction if split == "test" else self.val_fraction for split in held_out)
        *held_indices, kept = holdout_split(y, len(x), fractions, generator)
        splits: dict[str, tuple[Tensor, Tensor | None]] = {
            split: pools[split] for split in ("test", "val") if split in pools
        }
        for split, index in zip(held_out, held_indices):
            splits[split] = (x[index], None if y is None else y[index])
        self._check_held_out(len(x), held_out, fractions, [len(i) for i in held_indices], len(kept))
        x, y = x[kept], (None if y is None else y[kept])
        if self.num_samples is not None:
            if is_class_labels(y):
                assert y is not None
                keep = class_balanced_subset(y, self.num_samples, generator)
            else:
                if self.num_samples > len(x):
                    raise ValueError(
                        f"num_samples={self.num_samples} exceeds the {len(x)} training points available"
                    )
                keep = torch.sort(torch.randperm(len(x), generator=generator)[: self.num_samples]).values
            x, y = x[keep], (None if y is None else y[keep])
        splits["train"] = (x, y)
        self._splits = {split: (to_float_features(x), y) for split, (x, y) in splits.items()}

    def check_pool(self, split: str, x: Any, y: Any) -> None:
        """Refuse a pool of :meth:`load_pools` that would train on nothing or on garbage.

        ``ValueError`` / ``TypeError`` naming the pool: ``x`` / ``y`` not tensors, bool or complex
        features or targets, ``x`` without a sample dimension, an empty train pool, ``x`` and ``y`` of
        different lengths, NaN / Inf, negative class labels. Subclasses that read files check them
        with the path first; this is the last line for every DataModule.
        """
        what = f"{self.name} {split} pool"
        x = check_tensor(f"{what} features (x)", x, shape="(N, ...)", allow_empty=True, finite=False)
        if x.ndim == 0:
            raise ValueError(f"{what} features (x) must have a leading sample dimension, got a scalar")
        if split == "train" and len(x) == 0:
            raise ValueError(f"{what} is empty (0 samples): there is nothing to train on")
        check_tensor(f"{what} features (x)", x, allow_empty=True, hint="clean the data first")
        if y is None:
            return
        y = check_tensor(f"{what} targets (y)", y, shape="(N, ...)", allow_empty=True, finite=False)
        if y.ndim == 0 or len(y) != len(x):
            raise ValueError(f"{what}: x has {len(x)} samples but the targets y have shape {tuple(y.shape)}")
        check_tensor(f"{what} targets (y)", y, allow_empty=True, hint="clean the data first")
        if is_class_labels(y) and len(y) and int(y.min()) < 0:
            raise ValueError(
                f"{what} class labels (y) must be >= 0 (classes 0..C-1), got a minimum of {int(y.min())}"
            )

    def _check_held_out(
        self, pool_size: int, held_out: list[str], fractions: tuple[float, ...], sizes: list[int], kept: int
    ) -> None:
        """``ValueError`` when the held-out splits leave no training point, or a held-out split that
        its fraction asked for got none (stratified rounding of small classes)."""
        taken = ", ".join(
            f"{split}_fraction={f} holds out {k}" for split, f, k in zip(held_out, fractions, sizes) if f > 0
        ) or "nothing is held out"
        if kept == 0:
            raise ValueError(
                f"{type(self).__name__}: the {self.name} train pool has {pool_size} sample(s) and "
                f"{taken}, leaving 0 to train on; lower val_fraction / test_fraction or give more data"
            )
        for split, fraction, size in zip(held_out, fractions, sizes):
            if fraction > 0 and size == 0:
                raise ValueError(
                    f"{type(self).__name__}: {split}_fraction={fraction} of the {pool_size}-sample {self.name} "
                    f"train pool gives 0 {split} samples (each class contributes round({split}_fraction x its "
                    f"count)); raise {split}_fraction, give more data, or set {split}_fraction=0 for no "
                    f"{split} split"
                )

    def tensors(self, split: str = "train") -> tuple[Tensor, Tensor | None]:
        """The whole split as tensors ``(x, y)``; ``y`` is ``None`` for unlabelled data."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits[split]

    def dataset(self, split: str = "train") -> TensorDictDataset:
        x, y = self.tensors(split)
        return TensorDictDataset(x, y, return_index=self.return_index)

    # ----------------------------------------------------------------- facts about the data
    @property
    def train_size(self) -> int:
        """Number of training points (the number of particles a particle method keeps)."""
        return len(self.tensors("train")[0])

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features ``x``."""
        return tuple(self.tensors("train")[0].shape[1:])

    @property
    def num_classes(self) -> int | None:
        """Number of classes for labelled data, ``None`` otherwise."""
        y = self.tensors("train")[1]
        if y is None or y.is_floating_point():
            return None
        return int(max(int(self.tensors(s)[1].max()) for s in SPLITS if len(self.tensors(s)[1])) + 1)

    # ----------------------------------------------------------------- loaders
    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_batched,
            persistent_workers=self.num_workers > 0,
        )
        if shuffle:
            trainer = getattr(self, "trainer", None)
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = TrainingSampler(
                dataset, world, rank, shuffle=True, seed=self.seed, mark_padding=dataset.return_index
            )
            self._check_train_loader(len(dataset), world, sampler)
            return DataLoader(dataset, sampler=sampler, drop_last=self.drop_last, **kwargs)
        return DataLoader(dataset, shuffle=False, **kwargs)

    def _check_train_loader(self, n: int, world: int, sampler: TrainingSampler) -> None:
        """Refuse a train loader with no batch; warn (once, rank 0) about unmarked DDP repeats."""
        per_rank = sampler.num_samples
        where = f" ({per_rank} per process, {world} processes)" if world > 1 else ""
        if n == 0:
            raise ValueError(f"{type(self).__name__}: the train split is empty (0 samples): there is nothing to train on")
        if self.drop_last and per_rank < self.batch_size:
            raise ValueError(
                f"{type(self).__name__}: batch_size={self.batch_size} with drop_last=True leaves no training "
                f"batch: the train split has N={n} samples{where}; lower batch_size "
                "or set drop_last=False"
            )
        if sampler.padding and not self.return_index and not self._warned_padding:
            self._warned_padding = True
            rank_zero_warn(
                f"{type(self).__name__}: the world size {world} does not divide the {n} training samples, so "
                f"each process gets {per_rank} and {sampler.padding} sample(s) an epoch are repeats of real "
                "points (seen twice). return_index=True marks them (batch['index'] == -1, see "
                "lightning_wass.datamodules.batch.padding_mask) so they can be dropped",
                category=UserWarning,
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
