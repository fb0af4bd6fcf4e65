"""The W1(+)W2 code's toy sets: pinwheel's geometry, and Moons / Pinwheel embedded in 7-D / 12-D."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightning_wass.datamodules import TOY_NAMES, ToyDataModule, make_toy, sample_toy, toy_embedding

EMBEDDED = {"moons_7d": ("moons", 7), "moons_12d": ("moons", 12), "pinwheel_7d": ("pinwheel", 7), "pinwheel_12d": ("pinwheel", 12)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_new_names_are_listed() -> None:
    assert set(EMBEDDED) | {"pinwheel"} <= set(TOY_NAMES)


# ----------------------------------------------------------------------------- pinwheel
def test_pinwheel_equals_the_official_formula_on_the_same_draws() -> None:
    """Reference: the official code's construction (row vector (r, u) times the stacked matrices
    [[cos, -sin], [sin, cos]] of phi = 2 pi k / 5 + 0.25 exp(r), times 2 * 0.7) in numpy, fed with
    the same arm labels and standard normals that make_toy draws (randint first, then randn)."""
    n = 3000
    x, y = make_toy("pinwheel", n, gen(0))
    g = gen(0)
    labels = torch.randint(0, 5, (n,), generator=g).numpy()
    eps = torch.randn(n, 2, generator=g).double().numpy()
    assert np.array_equal(y.numpy(), labels)
    features = eps * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    angles = np.linspace(0, 2 * np.pi, 5, endpoint=False)[labels] + 0.25 * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)]).T.reshape(-1, 2, 2)
    reference = 2.0 * 0.7 * np.einsum("ti,tij->tj", features, rotations)
    np.testing.assert_allclose(x.double().numpy(), reference, atol=1e-6, rtol=0)


def test_pinwheel_has_five_arms_of_the_documented_shape() -> None:
    """Unwind each point's spiral: psi = -angle(x) - 0.25 exp(|x| / 1.4) is 2 pi k / 5 (k = its arm)
    up to the tangential spread atan2(u, r) (about 0.1 / r): five clusters 72 degrees apart."""
    x, y = make_toy("pinwheel", 20000, gen(1))
    radius = x.double().norm(dim=1) / 1.4
    psi = -torch.atan2(x[:, 1].double(), x[:, 0].double()) - 0.25 * torch.exp(radius)
    offset = torch.remainder(psi - 2 * math.pi * y.double() / 5 + math.pi, 2 * math.pi) - math.pi
    outer = radius > 0.7  # away from the centre, where atan2(u, r) is small (85% of the points)
    assert float((offset[outer].abs() < 0.5).double().mean()) > 0.999
    assert abs(float(offset[outer].std()) - 0.1) < 0.015
    # five arms, evenly filled, found from the angles alone (histogram of the unwound angle)
    bins = torch.remainder(torch.round(psi * 5 / (2 * math.pi)), 5).long()
    counts = torch.bincount(bins, minlength=5)
    assert len(counts) == 5 and int(counts.min()) > 3700  # 4000 expected in each
    assert float((bins == y).double().mean()) > 0.99  # and the label is the arm
    # radial coordinate r ~ N(1, 0.3^2) (|x| / 1.4 = sqrt(r^2 + u^2), u ~ N(0, 0.1^2))
    assert abs(float(radius.mean()) - 1.005) < 0.01
    assert abs(float(radius.std()) - 0.3) < 0.01
    # the official scale 1.4 fits the [-2.5, 2.5]^2 convention: 99% within radius 2.5
    assert float((x.norm(dim=1) < 2.5).double().mean()) > 0.99


def test_pinwheel_noise_adds_isotropic_noise() -> None:
    base = sample_toy("pinwheel", 5000, gen(2))
    noisy = sample_toy("pinwheel", 5000, gen(2), noise=0.2)
    # same draws of the arm and (r, u) first, then noise: the difference is N(0, 0.2^2 I)
    diff = noisy - base
    assert abs(float(diff.std()) - 0.2) < 0.01 and abs(float(diff.mean())) < 0.01


# ----------------------------------------------------------------------------- embedded sets
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_samples_lie_on_a_plane_and_project_back_to_the_2d_draw(name: str, rotate: bool) -> None:
    base, dim = EMBEDDED[name]
    x, y = make_toy(name, 2000, gen(3), rotate=rotate)
    assert x.shape == (2000, dim) and x.dtype == torch.float32
    centred = x.double() - x.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    assert float(singular[1] / singular[0]) > 0.1  # two directions of real spread
    assert float(singular[2] / singular[0]) < 1e-6  # nothing off the plane
    e = toy_embedding(name, rotate=rotate)
    z, y2 = make_toy(base, 2000, gen(3))
    torch.testing.assert_close(x.double() @ e.double(), z.double(), atol=1e-6, rtol=0)
    assert torch.equal(y, y2)
    # the residual off the plane is float32 rounding only
    assert float((x.double() - (x.double() @ e.double()) @ e.double().T).abs().max()) < 1e-6


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_isometry_has_orthonormal_columns(name: str) -> None:
    dim = EMBEDDED[name][1]
    for rotate in (False, True):
        e = toy_embedding(name, rotate=rotate).double()
        assert e.shape == (dim, 2)
        torch.testing.assert_close(e.T @ e, torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)
    # the default is the official code's: the first two coordinates, zeros elsewhere
    assert torch.equal(toy_embedding(name), torch.eye(dim, 2))
    x = sample_toy(name, 100, gen(4))
    assert bool((x[:, 2:] == 0).all())
    # the rotated isometry is not axis-aligned: every coordinate carries some of the plane
    rotated = toy_embedding(name, rotate=True)
    assert bool((rotated.norm(dim=1) > 1e-3).all())


def test_rotated_isometry_is_fixed_across_calls_and_processes() -> None:
    first = {d: toy_embedding(f"moons_{d}d", rotate=True) for d in (7, 12)}
    # same dimension, same matrix, whichever base set and however often it is asked for
    for d in (7, 12):
        assert torch.equal(first[d], toy_embedding(f"pinwheel_{d}d", rotate=True))
        assert torch.equal(first[d], toy_embedding(f"moons_{d}d", rotate=True))
    torch.manual_seed(123)
    np.random.seed(123)  # the global RNGs do not matter
    assert torch.equal(first[7], toy_embedding("moons_7d", rotate=True))
    assert not torch.allclose(first[7][:2], first[12][:2])  # different per ambient dimension
    code = (
        "import json; from lightning_wass import toy_embedding; "
        "print(json.dumps([toy_embedding(n, rotate=True).double().tolist() for n in ('moons_7d', 'pinwheel_12d')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    other7, other12 = (torch.tensor(m, dtype=torch.float64) for m in json.loads(out))
    assert torch.equal(other7.float(), first[7]) and torch.equal(other12.float(), first[12])


def test_embedding_of_2d_sets_is_the_identity_and_regression_has_none() -> None:
    assert torch.equal(toy_embedding("pinwheel"), torch.eye(2))
    with pytest.raises(ValueError, match="name"):
        toy_embedding("regression")
    with pytest.raises(ValueError, match="name must be one of"):
        toy_embedding("moons_3d")


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_datamodule_shape_embedding_and_splits(name: str) -> None:
    base, dim = EMBEDDED[name]
    dm = ToyDataModule(name, train_size=200, val_size=50, test_size=50, batch_size=32, seed=5)
    assert dm.data_shape == (dim,)
    assert torch.equal(dm.embedding, toy_embedding(name))
    assert dm.modes is None
    flat = ToyDataModule(base, train_size=200, val_size=50, test_size=50, seed=5)
    for split in ("train", "val", "test"):
        torch.testing.assert_close(dm.tensors(split)[0] @ dm.embedding, flat.tensors(split)[0], atol=1e-6, rtol=0)
    rotated = ToyDataModule(name, train_size=200, val_size=50, test_size=50, rotate=True, seed=5)
    assert rotated.data_shape == (dim,) and torch.equal(rotated.embedding, toy_embedding(name, rotate=True))
    torch.testing.assert_close(rotated.tensors()[0] @ rotated.embedding, flat.tensors()[0], atol=1e-6, rtol=0)
    assert next(iter(dm.train_dataloader()))["x"].shape == (32, dim)
    assert dm.sample(7, gen(0)).shape == (7, dim)
    assert ToyDataModule("pinwheel").embedding is None


def test_rotate_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="rotate"):
        ToyDataModule("moons_7d", rotate="yes")  # type: ignore[arg-type]
