"""WassersteinDistance metric: closed forms, accumulation, DDP gathering, bad input."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_wass.callbacks import ReleaseSpawnedProcessGroup
from lightning_wass.metrics import WassersteinDistance
from lightning_wass.ot import wasserstein_distance

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_metric_over_batches_matches_closed_forms() -> None:
    # shift: W2(x, x + c) = ||c||; 1-D: (mean |x_(i) - y_(i)|^2)^(1/2) over ALL samples, not per batch.
    x = torch.randn(90, 3, generator=_gen(0), dtype=F64)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    metric = WassersteinDistance(p=2)
    for start in range(0, 90, 25):
        metric.update(x[start : start + 25], (x + c)[start : start + 25].flip(0))
    assert torch.allclose(metric.compute(), c.norm(), rtol=1e-9)

    u = torch.randn(60, generator=_gen(1), dtype=F64)
    v = 3 * torch.randn(60, generator=_gen(2), dtype=F64) + 1
    metric = WassersteinDistance(p=2)
    for start in range(0, 60, 16):
        metric.update(u[start : start + 16], v[start : start + 16])
    expected = (u.sort().values - v.sort().values).square().mean().sqrt()
    assert torch.allclose(metric.compute(), expected, rtol=1e-10)
    per_batch = wasserstein_distance(u[:16], v[:16])
    assert not torch.allclose(per_batch, expected, rtol=1e-3)  # the union is what counts


def test_unequal_counts_methods_and_reset() -> None:
    x = torch.randn(50, 2, generator=_gen(3), dtype=F64)
    y = torch.randn(35, 2, generator=_gen(4), dtype=F64) + 1
    for method, opts in [("exact", {}), ("sliced", {"seed": 1, "num_projections": 20}), ("sinkhorn", {"reg": 0.5})]:
        metric = WassersteinDistance(p=1, method=method, **opts)
        metric.update(x[:20], y[:5])
        metric.update(x[20:], y[5:])
        assert torch.allclose(metric.compute(), wasserstein_distance(x, y, p=1, method=method, **opts), rtol=1e-9)
    metric.reset()
    metric.update(x[:10], y[:10])
    assert torch.allclose(metric.compute(), wasserstein_distance(x[:10], y[:10], p=1, method="sinkhorn", reg=0.5))


def test_images_are_flattened() -> None:
    images = torch.rand(12, 1, 4, 4, generator=_gen(5))
    metric = WassersteinDistance()
    metric.update(images, images + 0.25)
    assert torch.allclose(metric.compute(), torch.tensor(0.25 * 4.0, dtype=F64), rtol=1e-5)  # ||0.25 * 1_16|| = 1


def test_max_samples_keeps_the_first_and_warns() -> None:
    x = torch.randn(30, 2, generator=_gen(6), dtype=F64)
    y = torch.randn(30, 2, generator=_gen(7), dtype=F64)
    metric = WassersteinDistance(max_samples=20)
    metric.update(x[:15], y[:15])
    with pytest.warns(UserWarning, match="max_samples=20 reached"):
        metric.update(x[15:], y[15:])
    metric.update(x[:5], y[:5])  # dropped entirely
    assert torch.allclose(metric.compute(), wasserstein_distance(x[:20], y[:20]), rtol=1e-10)


def test_metric_bad_input() -> None:
    metric = WassersteinDistance()
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="no samples"):
        metric.compute()
    with pytest.raises(ValueError, match="x contains NaN"):
        metric.update(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="x and y must have the same number of features"):
        metric.update(torch.zeros(3, 2), torch.zeros(3, 3))
    metric.update(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="y must have 2 features"):
        metric.update(torch.zeros(3, 2), torch.zeros(3, 5))
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        metric.update(torch.zeros(3, 2), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="method must be one of"):
        WassersteinDistance(method="emd")
    with pytest.raises(ValueError, match="reg applies only to method='sinkhorn'"):
        WassersteinDistance(reg=0.1)
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        WassersteinDistance(max_samples=0)
    with pytest.raises(ValueError, match="p must be >= 1"):
        WassersteinDistance(p=0.5)


# ------------------------------------------------------------------------------ DDP
N_X, N_Y = 64, 40  # 64 x-samples; y-samples are those with index < 40


def _samples() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(N_X, 2, generator=_gen(8), dtype=F64)
    y = torch.randn(N_Y, 2, generator=_gen(9), dtype=F64) * 0.5 + torch.tensor([1.0, -1.0], dtype=F64)
    return x, y


class _MetricModule(pl.LightningModule):
    """Updates the metric with its shard of the fixed samples in validation."""

    def __init__(self) -> None:
        super().__init__()
        self.x, self.y = _samples()
        self.w2 = WassersteinDistance(p=2)
        self.local_w2 = WassersteinDistance(p=2, sync_on_compute=False)
        # y only from rank 0: the other rank's y state stays empty and must still gather
        self.w2_y_from_rank0 = WassersteinDistance(p=2)
        # (not a torchmetrics SumMetric: under ddp_spawn on CPU the module's tensors are in shared
        # memory, so in-place tensor states would be updated by both processes; list states are safe)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        index = batch[0]
        x, y = self.x[index], self.y[index[index < N_Y]]
        self.w2.update(x, y)
        self.local_w2.update(x, y)
        self.w2_y_from_rank0.update(x, y if self.global_rank == 0 else y[:0])
        self.log("w2_y_from_rank0", self.w2_y_from_rank0)
        self.log("w2", self.w2)
        self.log("count", float(len(index)), reduce_fx="sum", sync_dist=True, batch_size=len(index))
        self.log("local_w2", self.local_w2, rank_zero_only=True)


def _validate(devices: int, strategy: str) -> dict[str, float]:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ReleaseSpawnedProcessGroup()],  # a module of our own tests under ddp_spawn (see the callback)
    )
    loader = DataLoader(TensorDataset(torch.arange(N_X)), batch_size=8, shuffle=False)
    return trainer.validate(_MetricModule(), dataloaders=loader, verbose=False)[0]


@pytest.mark.ddp
def test_ddp_gathered_metric_equals_single_process() -> None:
    x, y = _samples()
    reference = float(wasserstein_distance(x, y))
    single = _validate(1, "auto")
    double = _validate(2, "ddp_spawn")
    assert single["count"] == N_X and double["count"] == N_X  # each rank saw its half of the data
    assert math.isclose(single["w2"], reference, rel_tol=1e-6)
    assert math.isclose(double["w2"], reference, rel_tol=1e-6)
    # rank 0's unsynced figure uses half the samples and differs: the gathering is what makes them equal
    assert not math.isclose(double["local_w2"], reference, rel_tol=1e-3)
    # rank 0 holds the even indices (DistributedSampler without shuffling interleaves the ranks)
    assert math.isclose(double["w2_y_from_rank0"], float(wasserstein_distance(x, y[0:N_Y:2])), rel_tol=1e-6)
    assert math.isclose(single["w2_y_from_rank0"], reference, rel_tol=1e-6)
