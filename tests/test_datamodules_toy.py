"""ToyDataModule and the toy samplers: each set's geometry, splits, determinism, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_wass.datamodules import TOY_NAMES, ToyDataModule, make_toy, regression_coefficients, sample_toy

TWO_D = [name for name in TOY_NAMES if name != "regression"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_shapes_sizes_and_indices(name: str) -> None:
    dm = ToyDataModule(name, train_size=300, val_size=50, test_size=70, batch_size=64, return_index=True)
    d = {"regression": 1, "moons_7d": 7, "pinwheel_7d": 7, "moons_12d": 12, "pinwheel_12d": 12}.get(name, 2)
    assert [len(dm.tensors(s)[0]) for s in ("train", "val", "test")] == [300, 50, 70]
    x, y = dm.tensors("train")
    assert x.shape == (300, d) and x.dtype == torch.float32 and dm.data_shape == (d,)
    assert bool(torch.isfinite(x).all())
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (64, d)
    assert torch.equal(x[batch["index"]], batch["x"])
    if y is not None:
        assert torch.equal(y[batch["index"]], batch["y"])


def test_default_sizes() -> None:
    assert ToyDataModule("moons").sizes == {"train": 2000, "val": 500, "test": 500}
    assert ToyDataModule("regression").sizes == {"train": 200, "val": 100, "test": 100}


@pytest.mark.parametrize("name", TOY_NAMES)
def test_deterministic_per_seed_and_splits_independent(name: str) -> None:
    a, b, c = (ToyDataModule(name, 100, 100, 100, seed=s) for s in (0, 0, 1))
    for split in ("train", "val", "test"):
        assert torch.equal(a.tensors(split)[0], b.tensors(split)[0])
        assert not torch.equal(a.tensors(split)[0], c.tensors(split)[0])
    # same sizes, yet the three splits are different draws
    assert not torch.equal(a.tensors("train")[0], a.tensors("val")[0])
    assert not torch.equal(a.tensors("val")[0], a.tensors("test")[0])
    # a split does not depend on the sizes of the others
    d = ToyDataModule(name, 100, 7, 300, seed=0)
    assert torch.equal(a.tensors("train")[0], d.tensors("train")[0])


def test_8gaussians_points_sit_at_their_labelled_centre() -> None:
    x, y = make_toy("8gaussians", 4000, gen(0))
    angle = y.float() * math.pi / 4
    centres = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    offsets = x - centres
    assert abs(float(offsets.std()) - 0.05) < 0.003  # std 0.05 around radius-2 centres
    assert abs(float(offsets.mean())) < 0.005
    assert torch.bincount(y, minlength=8).min() > 400  # every mode is populated (500 expected)


def test_25gaussians_grid() -> None:
    x, y = make_toy("25gaussians", 5000, gen(1))
    centres = torch.stack([y // 5, y % 5], 1).float() - 2
    assert float((x - centres).abs().max()) < 0.05 * 6
    assert set(torch.round(x).long().flatten().tolist()) == {-2, -1, 0, 1, 2}
    assert torch.bincount(y, minlength=25).min() > 120


def test_circle_is_a_one_dimensional_manifold_and_circles_have_two_radii() -> None:
    x = sample_toy("circle", 1000, gen(2))
    torch.testing.assert_close(x.norm(dim=1), torch.full((1000,), 2.0))
    angles = torch.atan2(x[:, 1], x[:, 0])
    assert float(angles.min()) < -3.0 and float(angles.max()) > 3.0  # covers the whole circle
    x, y = make_toy("circles", 1000, gen(3), noise=0.0)
    torch.testing.assert_close(x.norm(dim=1), 2.0 - y.float())


def test_moons_match_scikit_learn_geometry_centred() -> None:
    x, y = make_toy("moons", 2000, gen(4), noise=0.0)
    shift = torch.tensor([0.5, 0.25])
    p = x + shift  # back to scikit-learn's coordinates
    upper, lower = p[y == 0], p[y == 1]
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(len(upper)))
    assert float(upper[:, 1].min()) >= -1e-6
    torch.testing.assert_close((lower - torch.tensor([1.0, 0.5])).norm(dim=1), torch.ones(len(lower)))
    assert float(lower[:, 1].max()) <= 0.5 + 1e-6
    # scikit-learn's make_moons spans x in [-1, 2], y in [-0.5, 1]
    assert float(p[:, 0].min()) > -1.0 - 1e-4 and float(p[:, 0].max()) < 2.0 + 1e-4


def test_swissroll_radius_follows_angle() -> None:
    x = sample_toy("swissroll", 1000, gen(5), noise=0.0)
    t = 5 * x.norm(dim=1)  # radius t / 5
    assert float(t.min()) >= 1.5 * math.pi - 1e-4 and float(t.max()) <= 4.5 * math.pi + 1e-4
    torch.testing.assert_close(x / x.norm(dim=1, keepdim=True), torch.stack([torch.cos(t), torch.sin(t)], 1), atol=1e-4, rtol=0)


def test_checkerboard_fills_the_8_black_cells_evenly() -> None:
    x = sample_toy("checkerboard", 8000, gen(6))
    cells = torch.floor(x).long()
    assert bool(((cells >= -2) & (cells <= 1)).all())
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())  # only the "black" cells
    counts = torch.unique(cells, dim=0, return_counts=True)[1]
    assert len(counts) == 8 and counts.min() > 850  # 1000 expected in each


@pytest.mark.parametrize("dim", [1, 3])
def test_regression_recovers_its_coefficients(dim: int) -> None:
    x, y = make_toy("regression", 5000, gen(7), dim=dim)
    assert x.shape == (5000, dim) and y.shape == (5000,) and y.dtype == torch.float32
    design = torch.cat([x, torch.ones(5000, 1)], 1).double()
    coef = torch.linalg.lstsq(design, y.double()[:, None]).solution.squeeze(1)
    w, b = regression_coefficients(dim)
    torch.testing.assert_close(coef[:-1].float(), w, atol=0.02, rtol=0)
    assert abs(float(coef[-1]) - b) < 0.02
    residual = y.double() - design @ coef
    assert abs(float(residual.std()) - 0.2) < 0.01
    assert abs(float(w.norm()) - 1.0) < 1e-6


def test_sample_toy_reproducible_and_regression_points_are_joint() -> None:
    assert torch.equal(sample_toy("8gaussians", 10, gen(8)), sample_toy("8gaussians", 10, gen(8)))
    assert not torch.equal(sample_toy("8gaussians", 10, gen(8)), sample_toy("8gaussians", 10, gen(9)))
    joint = sample_toy("regression", 10, gen(8), dim=2)
    x, y = make_toy("regression", 10, gen(8), dim=2)
    assert torch.equal(joint, torch.cat([x, y[:, None]], 1))
    assert ToyDataModule("regression", dim=2).sample(5).shape == (5, 2)


def test_labels_and_num_classes() -> None:
    assert ToyDataModule("8gaussians", 200, 10, 10).num_classes == 8
    assert ToyDataModule("swissroll", 200, 10, 10).tensors()[1] is None
    assert ToyDataModule("regression").num_classes is None


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(name="9gaussians"), "name"),
        (dict(train_size=0), "train_size"),
        (dict(val_size=-1), "val_size"),
        (dict(test_size=-5), "test_size"),
        (dict(noise=-0.1), "noise"),
        (dict(noise=float("nan")), "noise"),
        (dict(dim=0), "dim"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        ToyDataModule(**kwargs)


def test_bad_sampler_arguments() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="n must be"):
        sample_toy("moons", -1)
    with pytest.raises(TypeError, match="n must be an int"):
        sample_toy("moons", 2.5)
