"""InMemoryDataModule / TensorDataModule: splits, subsets, indices, sampler order, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_wass.datamodules import InMemoryDataModule, TensorDataModule, unpack_batch
from lightning_wass.datamodules.base import class_balanced_subset, holdout_split


def labelled(n_per_class: tuple[int, ...] = (60, 40, 100)) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose first column is the sample's position, so splits can be traced back."""
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(n_per_class)])
    x = torch.stack([torch.arange(len(y), dtype=torch.float32), torch.randn(len(y))], dim=1)
    return x, y


def positions(dm: InMemoryDataModule, split: str) -> set[int]:
    return set(dm.tensors(split)[0][:, 0].long().tolist())


def test_splits_are_disjoint_cover_the_pool_and_are_stratified() -> None:
    x, y = labelled()
    dm = TensorDataModule(x, y, val_fraction=0.2, test_fraction=0.1, seed=3)
    parts = [positions(dm, s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(x)
    assert set().union(*parts) == set(range(len(x)))
    # round(f * n_c) points of each class in each held-out split
    for split, fraction in (("val", 0.2), ("test", 0.1)):
        counts = torch.bincount(dm.tensors(split)[1], minlength=3).tolist()
        assert counts == [round(fraction * k) for k in (60, 40, 100)]
    # labels travel with their features
    for split in ("train", "val", "test"):
        xs, ys = dm.tensors(split)
        assert torch.equal(y[xs[:, 0].long()], ys)


def test_num_samples_is_the_train_size_class_balanced_and_leaves_held_out_splits_alone() -> None:
    x, y = labelled((300, 300, 300, 300))
    small = TensorDataModule(x, y, num_samples=100, seed=1)
    large = TensorDataModule(x, y, num_samples=600, seed=1)
    assert small.train_size == 100 and large.train_size == 600
    assert torch.bincount(small.tensors()[1]).tolist() == [25, 25, 25, 25]
    assert torch.bincount(large.tensors()[1]).tolist() == [150, 150, 150, 150]
    # 102 = 4 * 25 + 2: the first two classes get one point more
    assert torch.bincount(TensorDataModule(x, y, num_samples=102).tensors()[1]).tolist() == [26, 26, 25, 25]
    for split in ("val", "test"):
        assert positions(small, split) == positions(large, split)
    assert not positions(small, "train") & (positions(small, "val") | positions(small, "test"))


def test_same_seed_same_splits_other_seed_other_splits() -> None:
    x, y = labelled()
    a, b, c = (TensorDataModule(x, y, num_samples=90, seed=s) for s in (5, 5, 6))
    for split in ("train", "val", "test"):
        assert positions(a, split) == positions(b, split)
    assert positions(a, "train") != positions(c, "train")


def test_unlabelled_and_float_targets_split_uniformly() -> None:
    x = torch.randn(50, 3)
    dm = TensorDataModule(x, val_fraction=0.2, test_fraction=0.2, num_samples=20)
    assert [len(dm.tensors(s)[0]) for s in ("train", "val", "test")] == [20, 10, 10]
    assert dm.tensors()[1] is None and dm.num_classes is None
    reg = TensorDataModule(x, torch.randn(50), val_fraction=0.1)
    assert reg.num_classes is None and reg.tensors("val")[1].dtype == torch.float32


def test_separate_test_set_is_kept_whole() -> None:
    x, y = labelled()
    xt, yt = torch.randn(17, 2), torch.randint(0, 3, (17,))
    dm = TensorDataModule(x, y, x_test=xt, y_test=yt, val_fraction=0.25)
    assert torch.equal(dm.tensors("test")[0], xt) and torch.equal(dm.tensors("test")[1], yt)
    assert len(dm.tensors("train")[0]) + len(dm.tensors("val")[0]) == len(x)


def test_holdout_split_fractions_and_class_balanced_subset_directly() -> None:
    y = torch.tensor([0] * 10 + [1] * 30)
    g = torch.Generator().manual_seed(0)
    test, val, rest = holdout_split(y, 40, (0.1, 0.5), g)
    assert torch.bincount(y[test]).tolist() == [1, 3]
    assert torch.bincount(y[val]).tolist() == [5, 15]
    assert len(rest) == 16
    with pytest.raises(ValueError, match="class 0"):
        class_balanced_subset(y, 30, g)  # 15 of class 0 needed, 10 exist


def test_uint8_pools_become_float_in_unit_interval() -> None:
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    dm = TensorDataModule(images, torch.arange(40) % 2, val_fraction=0.0, test_fraction=0.25)
    x = dm.tensors()[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 4, 4) and dm.data_shape == (1, 4, 4)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # each float image is some uint8 image divided by 255
    assert all(any(torch.equal(row, img.float() / 255) for img in images) for row in x[:5])


def test_return_index_indexes_the_split() -> None:
    x, y = labelled()
    dm = TensorDataModule(x, y, batch_size=16, return_index=True, seed=2)
    xs, ys = dm.tensors("train")
    for batch in dm.train_dataloader():
        b = unpack_batch(batch)
        assert b.index is not None and b.index.dtype == torch.long
        assert torch.equal(xs[b.index], b.x) and torch.equal(ys[b.index], b.y)
    val_batch = next(iter(dm.val_dataloader()))
    assert torch.equal(val_batch["index"], torch.arange(len(val_batch["x"])))
    assert "index" not in next(iter(TensorDataModule(x, y).train_dataloader()))


def epoch_order(dm: TensorDataModule, world: int, rank: int, epoch: int) -> list[torch.Tensor]:
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # what the loaders read
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    loader.sampler.set_epoch(epoch)
    return [batch["index"] for batch in loader]


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_replicas_of_batch_b_interleave_to_one_replica_of_batch_2b(epoch: int) -> None:
    x = torch.randn(96, 2)
    b = 8
    one = epoch_order(TensorDataModule(x, batch_size=2 * b, val_fraction=0.0, test_fraction=0.0, return_index=True, seed=7), 1, 0, epoch)
    two = [epoch_order(TensorDataModule(x, batch_size=b, val_fraction=0.0, test_fraction=0.0, return_index=True, seed=7), 2, r, epoch) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 96 // (2 * b)
    for k, big in enumerate(one):
        assert torch.equal(big[0::2], two[0][k]) and torch.equal(big[1::2], two[1][k])
    assert sorted(torch.cat(one).tolist()) == list(range(96))


def test_order_depends_only_on_seed_and_epoch() -> None:
    x = torch.randn(64, 2)
    make = lambda seed: TensorDataModule(x, batch_size=64, val_fraction=0.0, test_fraction=0.0, return_index=True, seed=seed)  # noqa: E731
    assert torch.equal(epoch_order(make(1), 1, 0, 2)[0], epoch_order(make(1), 1, 0, 2)[0])
    assert not torch.equal(epoch_order(make(1), 1, 0, 2)[0], epoch_order(make(1), 1, 0, 3)[0])
    assert not torch.equal(epoch_order(make(1), 1, 0, 2)[0], epoch_order(make(2), 1, 0, 2)[0])


class IndexRecorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append([])
        self.seen[-1].extend(batch["index"].tolist())
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_keeps_our_sampler_and_sets_its_epoch() -> None:
    x = torch.randn(40, 2)
    dm = TensorDataModule(x, batch_size=8, val_fraction=0.0, test_fraction=0.0, return_index=True, seed=4)
    model = IndexRecorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    for epoch in (0, 1):
        sampler = DistributedSampler(range(40), num_replicas=1, rank=0, shuffle=True, seed=4)
        sampler.set_epoch(epoch)
        assert model.seen[epoch] == list(sampler)
    assert model.seen[0] != model.seen[1]


def test_non_finite_data_is_refused_before_training() -> None:
    x = torch.randn(30, 2)
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        TensorDataModule(x).setup()
    y = torch.randn(30)
    y[0] = float("inf")
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        TensorDataModule(torch.randn(30, 2), y).setup()
    bad = torch.randn(30, 2)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=1).fit(IndexRecorder(), datamodule=TensorDataModule(bad, return_index=True))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(num_workers=-1), "num_workers"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(test_fraction=1.5), "test_fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "val_fraction \\+ test_fraction"),
        (dict(num_samples=0), "num_samples"),
    ],
)
def test_bad_common_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        TensorDataModule(torch.randn(10, 2), **kwargs)


def test_bad_data_arguments() -> None:
    with pytest.raises(TypeError, match="batch_size"):
        TensorDataModule(torch.randn(10, 2), batch_size=2.5)
    with pytest.raises(TypeError, match="x must be"):
        TensorDataModule("not data")
    with pytest.raises(ValueError, match="same number of samples"):
        TensorDataModule(torch.randn(10, 2), torch.zeros(9))
    with pytest.raises(ValueError, match="num_samples=500 exceeds"):
        TensorDataModule(torch.randn(100, 2), num_samples=500).setup()
    with pytest.raises(ValueError, match="split must be one of"):
        TensorDataModule(torch.randn(10, 2)).tensors("training")
    np_dm = TensorDataModule(np.zeros((20, 2)), np.arange(20) % 2)
    assert np_dm.tensors()[0].dtype == torch.float32 and np_dm.num_classes == 2


def test_tensor_datamodule_refuses_what_would_fail_later() -> None:
    with pytest.raises(ValueError, match="x_test samples must have the shape of x's samples"):
        TensorDataModule(torch.randn(20, 2), torch.zeros(20), x_test=torch.randn(5, 3), y_test=torch.zeros(5))
    with pytest.raises(ValueError, match="x must hold at least one sample"):
        TensorDataModule(torch.zeros(0, 2))
    with pytest.raises(TypeError, match="x must hold numbers"):
        TensorDataModule(np.array([["a", "b"], ["c", "d"]], dtype=object))
    with pytest.raises(ValueError, match="seed must be <= "):
        TensorDataModule(torch.randn(20, 2), seed=2**70)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        TensorDataModule(torch.randn(20, 2), seed=-1)
