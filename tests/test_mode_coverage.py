"""mode_coverage against hand counts and a closed form, toy_modes, and WassersteinMonitor's coverage."""

from __future__ import annotations

import csv
import math

import lightning.pytorch as pl
import pytest
import torch

from lightning.pytorch.loggers import CSVLogger

from lightning_wass import ModeCoverage, ToyDataModule, W2GradientFlow, WassersteinMonitor, mode_coverage, toy_modes
from lightning_wass.datamodules import make_toy
from lightning_wass.callbacks.evaluation import draw_samples
from lightning_wass.nn.gan_nets import MLPGenerator

from trainers import quiet_trainer  # tests/trainers.py

S = 0.05
CENTRES = 2 * torch.stack([torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], 1)


# ----------------------------------------------------------------------------- toy_modes
def test_toy_modes_are_the_label_centres() -> None:
    centres, std = toy_modes("8gaussians")
    assert std == 0.05 and centres.shape == (8, 2) and centres.dtype == torch.float32
    torch.testing.assert_close(centres, CENTRES)
    # the centre of label k is where make_toy puts the points of label k
    for name in ("8gaussians", "25gaussians"):
        x, y = make_toy(name, 4000, torch.Generator().manual_seed(0), noise=0.0)
        centres, _ = toy_modes(name)
        torch.testing.assert_close(x, centres[y], atol=1e-6, rtol=0)
    assert toy_modes("25gaussians", noise=0.1)[1] == 0.1
    assert toy_modes("25gaussians")[0].shape == (25, 2)
    for name in ("moons", "swissroll", "circle", "pinwheel", "moons_7d", "regression"):
        assert toy_modes(name) is None
    dm = ToyDataModule("8gaussians", noise=0.2)
    assert dm.modes is not None and dm.modes[1] == 0.2
    torch.testing.assert_close(dm.modes[0], CENTRES)
    assert ToyDataModule("swissroll").modes is None


# ----------------------------------------------------------------------------- hand counts
def test_points_exactly_at_the_modes() -> None:
    samples = CENTRES.repeat(5, 1)  # 40 points, 5 on each mode
    result = mode_coverage(samples, CENTRES, S)
    assert isinstance(result, ModeCoverage)
    assert result.covered == 1.0 and result.within == 1.0
    assert result.counts.tolist() == [5] * 8 and result.counts.dtype == torch.long


def test_points_on_three_of_eight_modes() -> None:
    samples = torch.cat([CENTRES[[0, 3, 6]].repeat(10, 1), CENTRES[[0, 3, 6]] + 0.01])  # 33 points
    result = mode_coverage(samples, CENTRES, S)
    assert result.covered == 3 / 8 and result.within == 1.0
    assert result.counts.tolist() == [11, 0, 0, 11, 0, 0, 11, 0]


def test_far_points_are_neither_within_nor_covering() -> None:
    samples = torch.tensor([[10.0, 10.0], [0.0, 0.0], [-7.0, 3.0]])
    result = mode_coverage(samples, CENTRES, S)
    assert result.covered == 0.0 and result.within == 0.0 and result.counts.sum() == 0
    # a point just outside 3 std of its nearest mode does not count; just inside, it does
    outside = CENTRES[:1] + torch.tensor([[3 * S * 1.01, 0.0]])
    inside = CENTRES[:1] + torch.tensor([[0.0, 3 * S * 0.99]])
    assert mode_coverage(outside, CENTRES, S).within == 0.0
    assert mode_coverage(inside, CENTRES, S).within == 1.0
    assert mode_coverage(outside, CENTRES, S, num_std=4.0).within == 1.0


def test_each_point_counts_for_its_nearest_mode_only() -> None:
    modes = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    samples = torch.tensor([[0.4, 0.0], [0.6, 0.0], [0.45, 0.0]])  # all within 3 * 0.2 of both modes
    result = mode_coverage(samples, modes, 0.2)
    assert result.counts.tolist() == [2, 1] and result.within == 1.0


def test_min_share_threshold_edges() -> None:
    # 16 points, 8 modes: default min_share = 1/16, so one point suffices and zero does not
    samples = torch.cat([CENTRES[:1].repeat(9, 1), CENTRES[1:]])[:16]  # mode 0: 9, modes 1..7: 1 each
    assert mode_coverage(samples, CENTRES, S).covered == 1.0
    assert mode_coverage(samples[:-1], CENTRES, S).counts.tolist() == [9, 1, 1, 1, 1, 1, 1, 0]
    # 15 points: 1/15 >= 1/16 still covers; mode 7 has none
    assert mode_coverage(samples[:-1], CENTRES, S).covered == 7 / 8
    # exactly at the threshold counts (share 2/20 = 0.1), just below does not
    pair = torch.cat([CENTRES[:1].repeat(18, 1), CENTRES[1:2].repeat(2, 1)])
    assert mode_coverage(pair, CENTRES, S, min_share=0.1).covered == 2 / 8
    assert mode_coverage(pair, CENTRES, S, min_share=0.11).covered == 1 / 8
    assert mode_coverage(pair, CENTRES, S, min_share=1.0).covered == 0.0
    assert mode_coverage(CENTRES[:1], CENTRES, S, min_share=1.0).covered == 1 / 8


# ----------------------------------------------------------------------------- closed form: a ring
def _ring_within(s: float, radius: float = 2.0, num_std: float = 3.0) -> float:
    """A point of the ring at angle delta from a mode on it is 2 R sin(delta / 2) away: within
    num_std s for |delta| <= 2 asin(num_std s / (2 R)); 8 such arcs of 2 * that width out of 2 pi."""
    return 8 * 2 * 2 * math.asin(num_std * s / (2 * radius)) / (2 * math.pi)


def test_a_ring_through_the_modes_is_mostly_not_within_and_covers_nothing() -> None:
    expected = _ring_within(S)
    assert 0.19 < expected < 0.192
    # evenly spaced on the ring (a quadrature of the uniform angle): each of the 8 arcs holds its
    # length / spacing points up to one, so within matches to 8 / n
    n = 8000
    angle = (torch.arange(n, dtype=torch.float64) + 0.5) * 2 * math.pi / n
    ring = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    result = mode_coverage(ring, CENTRES, S)
    assert abs(result.within - expected) <= 8 / n
    # each mode gets expected / 8 of the points, under the 1/16 needed: nothing covered
    assert result.covered == 0.0
    assert int(result.counts.max() - result.counts.min()) <= 1
    # with a lower bar every mode is covered, which is what a "ring" means
    assert mode_coverage(ring, CENTRES, S, min_share=0.02).covered == 1.0
    # uniformly random angles: within ~ Binomial(n, expected) / n
    rand = 2 * math.pi * torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    random_ring = 2 * torch.stack([torch.cos(rand), torch.sin(rand)], 1)
    sd = math.sqrt(expected * (1 - expected) / n)
    assert abs(mode_coverage(random_ring, CENTRES, S).within - expected) < 4 * sd


def test_real_samples_of_8_gaussians_are_covered() -> None:
    x = make_toy("8gaussians", 4000, torch.Generator().manual_seed(1))[0]
    result = mode_coverage(x, *toy_modes("8gaussians"))
    assert result.covered == 1.0
    # the mass of a 2-D Gaussian within 3 std: 1 - exp(-9/2) = 0.98889 (binomial sd 0.0017)
    assert abs(result.within - (1 - math.exp(-4.5))) < 0.007
    assert mode_coverage(make_toy("25gaussians", 4000, torch.Generator().manual_seed(2))[0], *toy_modes("25gaussians")).covered == 1.0


def test_nan_samples_are_outside() -> None:
    samples = torch.cat([CENTRES, torch.full((8, 2), float("nan"))])
    result = mode_coverage(samples, CENTRES, S)
    assert result.within == 0.5 and result.counts.tolist() == [1] * 8


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(samples=torch.zeros(4)), "samples"),
        (dict(samples=torch.zeros(0, 2)), "samples"),
        (dict(samples=[[0.0, 0.0]]), "samples"),
        (dict(modes=torch.zeros(8, 3)), "modes"),
        (dict(modes=torch.zeros(0, 2)), "modes"),
        (dict(modes=torch.full((2, 2), float("inf"))), "modes"),
        (dict(std=0.0), "std"),
        (dict(std=-1.0), "std"),
        (dict(std=float("nan")), "std"),
        (dict(min_share=0.0), "min_share"),
        (dict(min_share=1.5), "min_share"),
        (dict(num_std=0.0), "num_std"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    args = dict(samples=CENTRES, modes=CENTRES, std=S)
    args.update(kwargs)
    samples, modes, std = args.pop("samples"), args.pop("modes"), args.pop("std")
    with pytest.raises(ValueError, match=argument):
        mode_coverage(samples, modes, std, **args)


# ----------------------------------------------------------------------------- WassersteinMonitor
def _flow() -> W2GradientFlow:
    return W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[16]), data_shape=[2], persistent_steps=2, eval_samples=0)


class ThreeModeSampler(pl.LightningModule):
    """A "generator" whose sample(n) puts 3/4 of the points on modes 0, 3, 6 of the 8 Gaussians
    (cycled) and the rest far away: known coverage 3/8, quality 3/4 (for n a multiple of 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample(self, n: int) -> torch.Tensor:
        on = CENTRES[[0, 3, 6]].repeat(n, 1)[: 3 * n // 4]
        return torch.cat([on, torch.full((n - len(on), 2), 10.0)]) + 0 * self.weight


def _fit(
    name: str, noise: float | None = None, logger=False, model: pl.LightningModule | None = None, **monitor_kwargs
) -> tuple[WassersteinMonitor, pl.LightningModule, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    dm = ToyDataModule(name, train_size=256, val_size=48, batch_size=64, noise=noise)
    monitor = WassersteinMonitor(every_n_steps=2, num_samples=48, floor_repeats=1, **monitor_kwargs)
    model = _flow() if model is None else model
    trainer = quiet_trainer(max_steps=4, callbacks=[monitor], logger=logger)
    trainer.fit(model, datamodule=dm)
    return monitor, model, trainer


def test_monitor_logs_mode_coverage_with_known_modes(tmp_path) -> None:
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    monitor, _, trainer = _fit("8gaussians", logger=logger, model=ThreeModeSampler())
    assert [row["step"] for row in monitor.history] == [0, 2, 4]
    for row in monitor.history:  # 48 samples: 36 on 3 of the 8 modes, 12 far away
        assert row["modes_covered"] == 3 / 8 and row["mode_quality"] == 0.75
    assert float(trainer.callback_metrics["wasserstein/modes_covered"]) == pytest.approx(3 / 8)
    assert float(trainer.callback_metrics["wasserstein/mode_quality"]) == pytest.approx(0.75)
    logger.finalize("success")
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [(float(r["wasserstein/modes_covered"]), float(r["wasserstein/mode_quality"])) for r in rows if r.get("wasserstein/mode_quality")]
    assert logged == [(3 / 8, 0.75)] * 3


def test_monitor_coverage_of_a_trained_flow_matches_a_hand_count() -> None:
    monitor, model, _ = _fit("8gaussians")
    samples = draw_samples(model, 48, seed=0).double()  # the monitor's own last draw (seed 0)
    nearest = torch.cdist(samples, CENTRES.double()).min(dim=1)
    inside = nearest.values <= 3 * 0.05
    counts = torch.bincount(nearest.indices[inside], minlength=8)
    last = monitor.history[-1]
    assert last["mode_quality"] == pytest.approx(float(inside.double().mean()))
    assert last["modes_covered"] == pytest.approx(float((counts >= 48 / 16).double().mean()))


def test_monitor_adds_nothing_without_modes() -> None:
    monitor, _, _ = _fit("swissroll")
    assert monitor.history and all("modes_covered" not in row and "mode_quality" not in row for row in monitor.history)


def test_explicit_modes_win_over_the_datamodule() -> None:
    # modes at the data: every sample far from them -> quality 0; the DataModule's would differ
    far = (torch.tensor([[50.0, 50.0]]), 0.05)
    monitor, _, _ = _fit("8gaussians", modes=far)
    assert all(row["mode_quality"] == 0.0 and row["modes_covered"] == 0.0 for row in monitor.history)
    # and explicit modes give swissroll a coverage too
    everywhere = (torch.zeros(1, 2), 100.0)
    monitor, _, _ = _fit("swissroll", modes=everywhere)
    assert all(row["mode_quality"] == 1.0 and row["modes_covered"] == 1.0 for row in monitor.history)


def test_noise_free_modes_are_skipped_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="std 0"):
        monitor, _, _ = _fit("8gaussians", noise=0.0)
    assert monitor.history and all("modes_covered" not in row for row in monitor.history)


@pytest.mark.parametrize(
    "modes, match",
    [
        ((torch.zeros(3),), "modes must be a pair"),
        ((torch.zeros(3), 0.1), "centres"),
        ((torch.zeros(3, 2), 0.0), "std"),
    ],
)
def test_monitor_rejects_bad_modes(modes, match) -> None:
    with pytest.raises(ValueError, match=match):
        WassersteinMonitor(modes=modes)
