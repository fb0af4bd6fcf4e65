"""Silent data problems (issue 12): bad data and OT / metric inputs raise errors naming the argument,
and DDP padding rows are marked (``return_index=True``) or warned about, never trained on silently.

References are independent of our code path: torch's ``DistributedSampler`` for the sample order,
``scipy.stats.wasserstein_distance`` for weighted 1-D distances, hand-written IDX files.
"""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import pytest
import scipy.stats
import torch
from torch.utils.data import DistributedSampler

from lightning_wass.callbacks import ReleaseSpawnedProcessGroup
from lightning_wass.datamodules import DigitsDataModule, InMemoryDataModule, MNISTDataModule, TensorDataModule, ToyDataModule
from lightning_wass.datamodules.base import TensorDictDataset
from lightning_wass.datamodules.batch import PADDING_INDEX, padding_mask
from lightning_wass.datamodules.sampler import TrainingSampler
from lightning_wass.metrics import WassersteinDistance, mode_coverage
from lightning_wass.ot import barycentric_map, cost_matrix, ot_plan, wasserstein_distance

NAN, INF = float("nan"), float("inf")


def _with(x: torch.Tensor, value: float, at: tuple[int, ...] = (0, 0)) -> torch.Tensor:
    x = x.clone()
    x[at] = value
    return x


class Pools(InMemoryDataModule):
    """A DataModule whose ``load_pools`` returns exactly what it is given (a user's subclass)."""

    name = "pools"

    def __init__(self, pools: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pools = pools

    def load_pools(self) -> dict:
        return self.pools


def _fake_ddp(dm: InMemoryDataModule, world: int, rank: int) -> InMemoryDataModule:
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # what the loaders read
    return dm


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX by hand: bytes 0, 0, type 0x08 (uint8), ndim; big-endian int32 sizes; raw bytes."""
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes())


def _mnist(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> MNISTDataModule:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    return MNISTDataModule(str(tmp_path), test_set_only=True, val_fraction=0.0, test_fraction=0.0)


# ------------------------------------------------------------------ DataModules: table of bad inputs
LABELS_10 = torch.arange(10)  # ten classes of one point: stratified fractions round to 0 per class
DATA_CASES: list[tuple[str, Callable[[], Any], type, str]] = [
    # splits that leave nothing to train on, or an asked-for split empty
    ("0 train points", lambda: TensorDataModule(torch.randn(2, 2), val_fraction=0.5).setup(), ValueError, r"val_fraction=0\.5 holds out 1.*leaving 0 to train on"),
    ("1 point, all held out", lambda: TensorDataModule(torch.randn(1, 2), val_fraction=0.0).setup(), ValueError, r"has 1 sample\(s\) and test_fraction=0\.1 holds out 1, leaving 0 to train on"),
    ("val asked, 0 given", lambda: TensorDataModule(torch.randn(10, 2), LABELS_10, val_fraction=0.2, test_fraction=0.0).setup(), ValueError, r"val_fraction=0\.2 of the 10-sample .* gives 0 val samples"),
    ("test asked, 0 given", lambda: TensorDataModule(torch.randn(10, 2), LABELS_10, val_fraction=0.0, test_fraction=0.3).setup(), ValueError, r"test_fraction=0\.3 .* gives 0 test samples"),
    ("drop_last leaves no batch", lambda: TensorDataModule(torch.randn(10, 2), batch_size=64, drop_last=True, val_fraction=0.0, test_fraction=0.0).train_dataloader(), ValueError, r"batch_size=64 with drop_last=True .*N=10"),
    ("drop_last under DDP", lambda: _fake_ddp(TensorDataModule(torch.randn(10, 2), batch_size=6, drop_last=True, val_fraction=0.0, test_fraction=0.0), 2, 1).train_dataloader(), ValueError, r"batch_size=6 with drop_last=True .*N=10 samples \(5 per process, 2 processes\)"),
    ("toy drop_last", lambda: ToyDataModule("moons", train_size=100, batch_size=128, drop_last=True).train_dataloader(), ValueError, r"batch_size=128 with drop_last=True.*N=100"),
    ("num_samples 0", lambda: TensorDataModule(torch.randn(10, 2), num_samples=0), ValueError, "num_samples must be >= 1"),
    ("digits num_samples 0", lambda: DigitsDataModule(num_samples=0), ValueError, "num_samples must be >= 1"),
    ("toy train_size 0", lambda: ToyDataModule(train_size=0), ValueError, "train_size must be >= 1"),
    # values that would train on garbage
    ("bool x", lambda: TensorDataModule(torch.zeros(10, 2, dtype=torch.bool)), TypeError, "x must hold numbers, got a bool tensor"),
    ("complex x", lambda: TensorDataModule(torch.zeros(10, 2, dtype=torch.complex64)), TypeError, "x must be real"),
    ("bool y", lambda: TensorDataModule(torch.randn(10, 2), torch.zeros(10, dtype=torch.bool)), TypeError, "y must hold numbers"),
    ("complex y", lambda: TensorDataModule(torch.randn(10, 2), torch.zeros(10, dtype=torch.complex64)), TypeError, "y must be real"),
    ("NaN x", lambda: TensorDataModule(_with(torch.randn(10, 2), NAN)), ValueError, r"x contains NaN or Inf \(1 non-finite"),
    ("Inf x_test", lambda: TensorDataModule(torch.randn(10, 2), x_test=_with(torch.randn(3, 2), -INF)), ValueError, "x_test contains NaN or Inf"),
    ("NaN y_test", lambda: TensorDataModule(torch.randn(10, 2), torch.randn(10), x_test=torch.randn(3, 2), y_test=_with(torch.randn(3), NAN, (1,))), ValueError, "y_test contains NaN"),
    ("empty x_test", lambda: TensorDataModule(torch.randn(10, 2), x_test=torch.zeros(0, 2)), ValueError, "x_test must hold at least one sample"),
    ("negative labels", lambda: TensorDataModule(torch.randn(10, 2), torch.arange(10) % 3 - 1), ValueError, "y: class labels must be >= 0"),
    ("labels vs float y_test", lambda: TensorDataModule(torch.randn(10, 2), torch.arange(10) % 2, x_test=torch.randn(3, 2), y_test=torch.randn(3)), ValueError, "y_test must be targets of y's kind"),
    ("y_test per-sample shape", lambda: TensorDataModule(torch.randn(10, 2), torch.randn(10, 2), x_test=torch.randn(3, 2), y_test=torch.randn(3, 3)), ValueError, r"y_test must be targets of y's kind and per-sample shape"),
    ("y length", lambda: TensorDataModule(torch.randn(10, 2), torch.zeros(9)), ValueError, "x and y must have the same number of samples"),
    # a user's load_pools
    ("empty train pool", lambda: Pools({"train": (torch.zeros(0, 2), None)}).setup(), ValueError, "pools train pool is empty"),
    ("list pool", lambda: Pools({"train": ([[0.0, 1.0]], None)}).setup(), TypeError, r"pools train pool features \(x\) must be a torch.Tensor"),
    ("bool pool", lambda: Pools({"train": (torch.ones(8, 2, dtype=torch.bool), None)}).setup(), TypeError, r"pools train pool features \(x\) must hold numbers"),
    ("NaN val pool", lambda: Pools({"train": (torch.randn(8, 2), None), "val": (_with(torch.randn(3, 2), NAN), None)}).setup(), ValueError, r"pools val pool features \(x\) contains NaN"),
    ("pool y length", lambda: Pools({"train": (torch.randn(8, 2), torch.zeros(7, dtype=torch.long))}).setup(), ValueError, r"pools train pool: x has 8 samples but the targets y have shape \(7,\)"),
    ("pool negative labels", lambda: Pools({"train": (torch.randn(8, 2), -torch.ones(8, dtype=torch.long))}).setup(), ValueError, r"pools train pool class labels \(y\) must be >= 0"),
    ("scalar pool", lambda: Pools({"train": (torch.tensor(1.0), None)}).setup(), ValueError, "leading sample dimension"),
]


@pytest.mark.parametrize(("build", "error", "match"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_raises_naming_the_argument(build: Callable[[], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_good_neighbours_of_the_bad_cases_still_work() -> None:
    # the boundaries: one training point left, a fraction that gives one point per class, drop_last with one batch
    dm = TensorDataModule(torch.randn(3, 2), val_fraction=0.3, test_fraction=0.3)
    assert [len(dm.tensors(s)[0]) for s in ("train", "val", "test")] == [1, 1, 1]
    dm = TensorDataModule(torch.randn(20, 2), torch.arange(20) % 10, val_fraction=0.5, test_fraction=0.0)
    assert sorted(dm.tensors("val")[1].tolist()) == list(range(10))
    loader = TensorDataModule(torch.randn(10, 2), batch_size=10, drop_last=True, val_fraction=0.0, test_fraction=0.0).train_dataloader()
    assert len(loader) == 1
    assert TensorDataModule(torch.arange(12).reshape(6, 2), val_fraction=0.0, test_fraction=0.0).tensors()[0].dtype == torch.long


def test_idx_files_that_are_empty_or_hold_wrong_labels_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{empty / 't10k-images-idx3-ubyte'} holds no image")):
        _mnist(empty, np.zeros((0, 28, 28)), np.zeros(0)).setup()
    wrong = tmp_path / "labels"
    wrong.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{wrong / 't10k-labels-idx1-ubyte'}: labels must lie in 0..9") + ".*got 0\\.\\.12"):
        _mnist(wrong, np.zeros((13, 28, 28)), np.arange(13)).setup()
    short = tmp_path / "short"
    short.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{short / 't10k-images-idx3-ubyte'} / ") + ".*expected N x H x W uint8 images and N labels"):
        _mnist(short, np.zeros((5, 28, 28)), np.zeros(4)).setup()
    good = tmp_path / "good"
    good.mkdir()
    dm = _mnist(good, np.full((20, 28, 28), 255), np.arange(20) % 10)
    assert dm.train_size == 20 and float(dm.tensors()[0].max()) == 1.0


# ------------------------------------------------------------------ OT and metrics: table of bad inputs
X, Y = torch.randn(3, 2), torch.randn(4, 2)
BOOL, CPLX = torch.ones(3, 2, dtype=torch.bool), torch.ones(3, 2, dtype=torch.complex64)


def _metric_update(x: Any, y: Any) -> None:
    WassersteinDistance().update(x, y)


OT_CASES: list[tuple[str, Callable[[], Any], type, str]] = [
    ("wd bool x", lambda: wasserstein_distance(BOOL, Y), TypeError, "x must hold numbers, got a bool tensor"),
    ("wd bool y", lambda: wasserstein_distance(X, Y.bool()), TypeError, "y must hold numbers"),
    ("wd complex x", lambda: wasserstein_distance(CPLX, Y), TypeError, "x must be real"),
    ("wd dims", lambda: wasserstein_distance(X, torch.randn(4, 3)), ValueError, "x and y must have the same number of dimensions"),
    ("wd empty y", lambda: wasserstein_distance(X, torch.zeros(0, 2)), ValueError, "y must hold at least one point"),
    ("wd 0 coordinates", lambda: wasserstein_distance(torch.zeros(3, 0), torch.zeros(4, 0)), ValueError, r"x must hold at least one point \(n >= 1, d >= 1\), got shape \(3, 0\)"),
    ("wd NaN x", lambda: wasserstein_distance(_with(X, NAN), Y), ValueError, "x contains NaN or Inf"),
    ("wd Inf y sinkhorn", lambda: wasserstein_distance(X, _with(Y, INF), method="sinkhorn"), ValueError, "y contains NaN or Inf"),
    ("wd bool a", lambda: wasserstein_distance(X, Y, a=torch.ones(3, dtype=torch.bool)), TypeError, "a must hold numbers"),
    ("wd complex b", lambda: wasserstein_distance(X, Y, b=torch.ones(4, dtype=torch.complex64)), TypeError, "b must be real"),
    ("wd list a", lambda: wasserstein_distance(X, Y, a=[1.0, 1.0, 1.0]), TypeError, "a must be a torch.Tensor"),
    ("wd NaN a", lambda: wasserstein_distance(X, Y, a=_with(torch.ones(3), NAN, (1,))), ValueError, "a contains NaN or Inf"),
    ("wd negative b", lambda: wasserstein_distance(X, Y, b=torch.tensor([1.0, -0.5, 1.0, 1.0])), ValueError, "b must be non-negative"),
    ("wd negative a sliced", lambda: wasserstein_distance(X, Y, method="sliced", a=-torch.ones(3)), ValueError, "a must be non-negative"),
    ("wd zero-sum a", lambda: wasserstein_distance(X, Y, a=torch.zeros(3)), ValueError, "a must have a positive sum"),
    ("wd a length", lambda: wasserstein_distance(X, Y, a=torch.ones(4)), ValueError, r"a must have shape \(3,\)"),
    ("plan bool x", lambda: ot_plan(BOOL, Y), TypeError, "x must hold numbers"),
    ("plan dims", lambda: ot_plan(X, torch.randn(4, 5)), ValueError, "same number of dimensions"),
    ("plan Inf y", lambda: ot_plan(X, _with(Y, INF)), ValueError, "y contains NaN or Inf"),
    ("bary bool plan", lambda: barycentric_map(X, Y, plan=torch.ones(3, 4, dtype=torch.bool)), TypeError, "plan must hold numbers"),
    ("bary complex plan", lambda: barycentric_map(X, Y, plan=torch.ones(3, 4, dtype=torch.complex64)), TypeError, "plan must be real"),
    ("bary NaN plan", lambda: barycentric_map(X, Y, plan=torch.full((3, 4), NAN)), ValueError, "plan must be finite and non-negative"),
    ("cost bool", lambda: cost_matrix(BOOL, BOOL), TypeError, "x must hold numbers"),
    ("cost integer", lambda: cost_matrix(X, torch.ones(4, 2, dtype=torch.long)), TypeError, "y must be a floating-point tensor"),
    ("cost dims", lambda: cost_matrix(X, torch.randn(4, 3)), ValueError, "x and y must have the same number of dimensions"),
    ("cost dims p=1", lambda: cost_matrix(X, torch.randn(4, 3), p=1), ValueError, "x and y must have the same number of dimensions"),
    ("cost 1-D", lambda: cost_matrix(torch.randn(3), Y), ValueError, r"x must have shape \(n, d\)"),
    ("cost dtypes", lambda: cost_matrix(X, Y.double()), TypeError, "x and y must have the same dtype"),
    ("metric bool", lambda: _metric_update(BOOL, BOOL), TypeError, "x must hold numbers"),
    ("metric complex y", lambda: _metric_update(X, CPLX), TypeError, "y must be real"),
    ("metric NaN y", lambda: _metric_update(X, _with(X, NAN)), ValueError, "y contains NaN or Inf"),
    ("metric 0 features", lambda: _metric_update(torch.zeros(3, 0), torch.zeros(3, 0)), ValueError, "x must have at least one feature a sample"),
    ("metric dims", lambda: _metric_update(X, Y[:, :1]), ValueError, "x and y must have the same number of features"),
    ("coverage bool samples", lambda: mode_coverage(BOOL, X, 0.1), TypeError, "samples must hold numbers"),
    ("coverage complex samples", lambda: mode_coverage(CPLX, X, 0.1), TypeError, "samples must be real"),
    ("coverage bool modes", lambda: mode_coverage(X, BOOL, 0.1), TypeError, "modes must hold numbers"),
    ("coverage NaN modes", lambda: mode_coverage(X, _with(X, NAN), 0.1), ValueError, "modes contains NaN or Inf"),
    ("coverage 0 coordinates", lambda: mode_coverage(torch.zeros(3, 0), torch.zeros(2, 0), 0.1), ValueError, "samples must hold at least one point"),
    ("coverage empty modes", lambda: mode_coverage(X, torch.zeros(0, 2), 0.1), ValueError, "modes must hold at least one mode"),
    ("coverage dims", lambda: mode_coverage(X, torch.zeros(2, 3), 0.1), ValueError, "modes must be a tensor of shape"),
]


@pytest.mark.parametrize(("call", "error", "match"), [c[1:] for c in OT_CASES], ids=[c[0] for c in OT_CASES])
def test_bad_ot_and_metric_inputs_raise_naming_the_argument(call: Callable[[], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_unnormalised_weights_are_normalised_like_scipy() -> None:
    # weights are masses normalised to 1 (scipy's convention), so counts may be passed directly
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64) + 0.7
    a, b = torch.rand(12, generator=g, dtype=torch.float64) * 5, torch.randint(1, 4, (9,), generator=g)
    expected = scipy.stats.wasserstein_distance(u.numpy(), v.numpy(), a.numpy(), b.numpy())
    assert float(wasserstein_distance(u, v, p=1, a=a, b=b)) == pytest.approx(expected, rel=1e-10)
    # integer points stay accepted (converted to float): the shift of a lattice
    lattice = torch.arange(8).reshape(4, 2)
    assert float(wasserstein_distance(lattice, lattice + 1)) == pytest.approx(math.sqrt(2.0), rel=1e-6)


def test_metric_accepts_an_empty_batch_and_non_finite_samples_count_outside_modes() -> None:
    metric = WassersteinDistance()
    metric.update(torch.zeros(0, 2), torch.zeros(0, 2))  # a process may see no sample in a batch
    metric.update(torch.zeros(2, 2), torch.ones(2, 2))
    assert float(metric.compute()) == pytest.approx(math.sqrt(2.0))
    coverage = mode_coverage(torch.tensor([[0.0, 0.0], [NAN, 0.0]]), torch.zeros(1, 2), 0.1)
    assert coverage.within == 0.5 and coverage.counts.tolist() == [1]


# ------------------------------------------------------------------ the training sampler and padding rows
@pytest.mark.parametrize(("n", "world"), [(201, 2), (10, 3), (12, 4), (3, 5), (7, 1)])
@pytest.mark.parametrize("epoch", [0, 2])
def test_training_sampler_order_is_torch_distributed_sampler_order(n: int, world: int, epoch: int) -> None:
    total = world * math.ceil(n / world)
    for rank in range(world):
        reference = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
        reference.set_epoch(epoch)
        expected = list(reference)
        plain = TrainingSampler(range(n), world, rank, seed=5)
        marked = TrainingSampler(range(n), world, rank, seed=5, mark_padding=True)
        plain.set_epoch(epoch)
        marked.set_epoch(epoch)
        assert list(plain) == expected and len(plain) == len(expected)
        codes = list(marked)
        # the codes decode to torch's indices, and are negative exactly at global positions >= n
        assert [-c - 1 if c < 0 else c for c in codes] == expected
        assert [c < 0 for c in codes] == [rank + k * world >= n for k in range(len(codes))]
        assert marked.padding == total - n


def test_padding_rows_are_marked_and_every_real_index_appears_once() -> None:
    n = 201
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.randn(n)], dim=1)
    seen: list[torch.Tensor] = []
    features: list[torch.Tensor] = []
    for rank in (0, 1):
        dm = _fake_ddp(TensorDataModule(x, batch_size=16, val_fraction=0.0, test_fraction=0.0, return_index=True, seed=3), 2, rank)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        for batch in loader:
            seen.append(batch["index"])
            features.append(batch["x"])
    index, xs = torch.cat(seen), torch.cat(features)
    assert len(index) == 202 and int((index == PADDING_INDEX).sum()) == 1
    real = ~padding_mask(index)
    assert sorted(index[real].tolist()) == list(range(n))
    assert torch.equal(xs[real], x[index[real]])
    # the padding row repeats the first point of torch's epoch order (randperm seeded by seed + epoch)
    first = int(torch.randperm(n, generator=torch.Generator().manual_seed(3 + 1))[0])
    assert torch.equal(xs[~real], x[first : first + 1])


def test_unmarked_padding_warns_once_and_divisible_sizes_do_not() -> None:
    dm = _fake_ddp(TensorDataModule(torch.randn(201, 2), batch_size=16, val_fraction=0.0, test_fraction=0.0), 2, 0)
    with pytest.warns(UserWarning, match=r"world size 2 does not divide the 201 .* 1 sample\(s\) an epoch are repeats.*return_index=True"):
        dm.train_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.train_dataloader()  # once per DataModule
        _fake_ddp(TensorDataModule(torch.randn(200, 2), val_fraction=0.0, test_fraction=0.0), 2, 0).train_dataloader()
        _fake_ddp(TensorDataModule(torch.randn(201, 2), val_fraction=0.0, test_fraction=0.0, return_index=True), 2, 0).train_dataloader()
        TensorDataModule(torch.randn(201, 2), val_fraction=0.0, test_fraction=0.0).train_dataloader()  # one process


def test_dataset_single_reads_are_python_indexing_and_padding_mask_refuses_floats() -> None:
    x = torch.arange(10.0).reshape(5, 2)
    dataset = TensorDictDataset(x, return_index=True)
    assert torch.equal(dataset[-1]["x"], x[4]) and int(dataset[-1]["index"]) == 4
    with pytest.raises(IndexError, match="index 5 is out of range for a dataset of 5"):
        dataset[5]
    batch = dataset.__getitems__([3, -1, -5])  # sampler codes: -1 is a copy of row 0, -5 of row 4
    assert batch["index"].tolist() == [3, -1, -1] and torch.equal(batch["x"], x[[3, 0, 4]])
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        padding_mask(torch.tensor([0.0, -1.0]))


# ------------------------------------------------------------------ DDP: 2 CPU processes, N = 201
class IndexLog(pl.LightningModule):
    """Writes every index (and first feature) its rank trains on, per epoch, to ``<folder>/rank<r>.json``."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder
        self.layer = torch.nn.Linear(2, 1)
        self.log_rows: dict[int, list[list[float]]] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "index" in batch:
            rows = torch.stack([batch["index"].double(), batch["x"][:, 0].double()], dim=1)
            self.log_rows.setdefault(self.current_epoch, []).extend(rows.tolist())
        return self.layer(batch["x"]).pow(2).mean()

    def on_train_end(self) -> None:
        Path(self.folder, f"rank{self.global_rank}.json").write_text(json.dumps(self.log_rows))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class WarningLog(TensorDataModule):
    """Records the warnings raised while its train loader is built, to ``<folder>/warnings<r>.json``."""

    def __init__(self, folder: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = folder

    def train_dataloader(self):  # type: ignore[override]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader = super().train_dataloader()
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        Path(self.folder, f"warnings{self.trainer.global_rank}.json").write_text(json.dumps(messages))
        return loader


def _fit_ddp(folder: Path, return_index: bool, epochs: int) -> None:
    folder.mkdir()
    x = torch.stack([torch.arange(201, dtype=torch.float32), torch.randn(201, generator=torch.Generator().manual_seed(0))], dim=1)
    dm = WarningLog(str(folder), x, batch_size=32, val_fraction=0.0, test_fraction=0.0, return_index=return_index, seed=11)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=folder,
        callbacks=[ReleaseSpawnedProcessGroup()],
    )
    trainer.fit(IndexLog(str(folder)), datamodule=dm)


@pytest.mark.ddp
def test_ddp_with_201_points_marks_the_padding_row_or_warns(tmp_path: Path) -> None:
    marked = tmp_path / "marked"
    _fit_ddp(marked, return_index=True, epochs=2)
    logs = [json.loads((marked / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in (0, 1):
        rows = torch.tensor(logs[0][str(epoch)] + logs[1][str(epoch)], dtype=torch.float64)
        index, first_feature = rows[:, 0].long(), rows[:, 1].long()
        assert len(logs[0][str(epoch)]) == len(logs[1][str(epoch)]) == 101  # ceil(201 / 2) rows a rank
        assert sorted(index[index >= 0].tolist()) == list(range(201))  # every real point exactly once
        assert index.tolist().count(-1) == 1 and int((index < 0).sum()) == 1
        assert torch.equal(first_feature[index >= 0], index[index >= 0])  # x of a real row is that row
        # the padding row is a copy of the first point of torch's order for (seed 11, epoch)
        first = int(torch.randperm(201, generator=torch.Generator().manual_seed(11 + epoch))[0])
        assert first_feature[index < 0].tolist() == [first]
    assert json.loads((marked / "warnings0.json").read_text()) == []  # marked rows need no warning

    plain = tmp_path / "plain"
    _fit_ddp(plain, return_index=False, epochs=1)
    messages = json.loads((plain / "warnings0.json").read_text()) + json.loads((plain / "warnings1.json").read_text())
    repeats = [m for m in messages if "does not divide the 201 training samples" in m]
    assert len(repeats) == 1 and "1 sample(s) an epoch are repeats" in repeats[0] and "return_index=True" in repeats[0]
