"""Toy distributions (2-D, and 2-D sets embedded in 7-D / 12-D) and a small regression set, as samplers and as a DataModule.

The 2-D sets are the usual benchmarks of generative-flow and WGAN papers (the WGAN-GP and FFJORD
code bases, and the W1(+)W2 proximal-flow code), rescaled to one convention: everything lives in
roughly ``[-2.5, 2.5]^2``.

=============  ====================================================================  ==========  ======
name           distribution                                                          label y     noise
=============  ====================================================================  ==========  ======
8gaussians     ``N(c_k, s^2 I)``, ``c_k = 2 (cos(k pi/4), sin(k pi/4))``, k = 0..7    k (long)    0.05
25gaussians    ``N(c_ij, s^2 I)``, ``c_ij`` on the grid ``{-2, -1, 0, 1, 2}^2``      5 i + j     0.05
moons          scikit-learn's two interleaving half circles, centred at the origin   moon (0/1)  0.05
circles        concentric circles of radius 2 and 1 (outer label 0, inner 1)         circle      0.05
circle         uniform on the circle of radius 2: a 1-D manifold in 2-D (noise 0)    none        0.0
swissroll      ``t (cos t, sin t) / 5``, ``t = 1.5 pi (1 + 2u)``, u uniform            none        0.1
checkerboard   uniform on the 8 black cells of a 4 x 4 board over ``[-2, 2)^2``     none        0.0
regression     ``x ~ N(0, I_d)``, ``y = w^T x + b + e``, ``w = 1/sqrt(d)``, ``b = 0.5``  float y     0.2
pinwheel       5 spiral arms (the W1(+)W2 code's Pinwheel; see below)                arm k       0.0
moons_7d       ``moons`` embedded in R^7 by the isometry :func:`toy_embedding`       moon (0/1)  0.05
moons_12d      ``moons`` embedded in R^12 likewise                                   moon (0/1)  0.05
pinwheel_7d    ``pinwheel`` embedded in R^7 likewise                                 arm k       0.0
pinwheel_12d   ``pinwheel`` embedded in R^12 likewise                                arm k       0.0
=============  ====================================================================  ==========  ======

``noise`` is the standard deviation ``s`` of the Gaussian noise: around each centre for the
mixtures, added to both coordinates for moons / circles / circle / swissroll / checkerboard /
pinwheel (in the plane, before the embedding, for the embedded sets), and the target noise
``e ~ N(0, s^2)`` for regression. :func:`toy_modes` gives the centres and std of the sets with
point modes (8gaussians, 25gaussians), for :func:`lightning_wass.metrics.mode_coverage`.

**pinwheel** reproduces the ``Pinwheel`` of the official W1(+)W2 proximal-flow code
(``data_generator.py`` of HyeminGu/Wasserstein-1_Wasserstein-2_generative_flow, itself the
pinwheel of Johnson et al.'s structured-VAE code): arm ``k`` uniform on ``{0, ..., 4}``, a radial
coordinate ``r ~ N(1, 0.3^2)`` and a tangential one ``u ~ N(0, 0.1^2)``, rotated by
``phi = 2 pi k / 5 + 0.25 exp(r)`` and scaled by 1.4::

    x = 1.4 (r cos phi + u sin phi, -r sin phi + u cos phi)      (= 1.4 R(-phi) (r, u))

Matches the official code: 5 arms, radial std 0.3, tangential std 0.1, rate 0.25, the rotation's
sign (its ``einsum("ti,tij->tj")`` multiplies the row vector by ``R(phi)``, i.e. rotates by
``-phi``) and its scale ``2 * 0.7 = 1.4`` (kept: 99% of the points lie within radius 2.4, inside our
convention). Differences: the arm is drawn per point (the official code takes exactly ``n // 5``
points per arm, so ``n`` must be a multiple of 5 there), the draw is seeded by ``generator`` (the
official pinwheel uses an unseeded ``np.random.RandomState()``), and ``noise`` (default 0, as there)
optionally adds isotropic noise on top.

**moons vs the official Moons.** Ours is scikit-learn's ``make_moons`` geometry minus
``(0.5, 0.25)``; the official code's is ``4.2 (make_moons(noise=0.05) - (0.5, 0.2))``, i.e.
``4.2 (ours + (0, 0.05))`` with the same relative noise (0.05 before the scaling). The official
scale spans ``x_1`` in about ``[-6.3, 6.3]``, outside our convention, so we keep ours: multiply by
4.2 and shift by ``(0, 0.21)`` for the official figure's coordinates. scikit-learn also places the
points on an even grid of ``t`` with exactly half in each moon; ours draws ``t ~ U[0, pi]`` and the
moon per point (the same distribution).

**Embedded sets** (``moons_7d``, ``moons_12d``, ``pinwheel_7d``, ``pinwheel_12d``): the 2-D draw
``z`` (the base set's, with the same generator, so the same ``z`` as ``make_toy(base, ...)``) is
mapped to ``x = E z`` with ``E = toy_embedding(name)`` of shape ``(D, 2)`` and orthonormal columns:
the samples lie exactly on a 2-D linear subspace of ``R^D``, and ``x @ E`` recovers ``z``. This is
what the official code does for ``--total_dim 7 -submnfld_dim 2``: ``embedded_dataset[:, :2] =
dataset`` on a zero array, i.e. ``E = [I_2; 0]`` (the first two coordinates; no random matrix and no
noise off the plane), our default. ``rotate=True`` instead uses a fixed random isometry (the ``Q``
of the QR factorisation of ``numpy.random.default_rng(D).standard_normal((D, 2))``, signs fixed so
that ``diag(R) > 0``): the same in every process and call, but not aligned with the axes, so a
model cannot find the plane coordinate-wise. The official embedded runs use the official (4.2x)
Moons scale; ours embed our ``moons`` and ``pinwheel`` as they are.

Two independent samples of ``n = 2,000`` points of ``8gaussians`` are an exact W2 of about 0.3
apart (the sample floor, DESIGN.md section 6): judge generators by their ratio to that floor.

The regression set is the 2-D regression experiment of worst-case generation (Wasserstein DRO,
arXiv 2512.08176): ``n = 200`` points ``(x, y)`` with ``d = 1``; its true coefficients are
:func:`regression_coefficients`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lightning_wass._validation import check_bool, check_choice, check_int, check_positive
from lightning_wass.datamodules.base import SPLITS, InMemoryDataModule
from lightning_wass.seeding import seeded_generator

TOY_NAMES = (
    "8gaussians",
    "25gaussians",
    "moons",
    "circles",
    "circle",
    "swissroll",
    "checkerboard",
    "regression",
    "pinwheel",
    "moons_7d",
    "moons_12d",
    "pinwheel_7d",
    "pinwheel_12d",
)
"""The names :func:`sample_toy`, :func:`make_toy` and :class:`ToyDataModule` accept."""

DEFAULT_NOISE = {
    "8gaussians": 0.05,
    "25gaussians": 0.05,
    "moons": 0.05,
    "circles": 0.05,
    "circle": 0.0,
    "swissroll": 0.1,
    "checkerboard": 0.0,
    "regression": 0.2,
    "pinwheel": 0.0,
    "moons_7d": 0.05,
    "moons_12d": 0.05,
    "pinwheel_7d": 0.0,
    "pinwheel_12d": 0.0,
}
"""Default noise standard deviation of each set (used when ``noise=None``)."""

_EMBEDDED = {
    "moons_7d": ("moons", 7),
    "moons_12d": ("moons", 12),
    "pinwheel_7d": ("pinwheel", 7),
    "pinwheel_12d": ("pinwheel", 12),
}
"""Embedded set -> (2-D base set, ambient dimension D)."""

PINWHEEL = {"arms": 5, "radial_std": 0.3, "tangential_std": 0.1, "rate": 0.25, "scale": 1.4}
"""The ``pinwheel`` parameters (those of the official W1(+)W2 code; see the module docstring)."""


def regression_coefficients(dim: int = 1) -> tuple[Tensor, float]:
    """The true ``(w, b)`` of the ``regression`` set: ``w = (1/sqrt(d), ..., 1/sqrt(d))`` (so
    ``||w|| = 1`` for every ``d``) and ``b = 0.5``."""
    dim = check_int("dim", dim, minimum=1)
    return torch.full((dim,), 1.0 / math.sqrt(dim)), 0.5


def toy_embedding(name: str, *, rotate: bool = False) -> Tensor:
    """The isometry ``E`` (float32, shape ``(D, 2)``, orthonormal columns) of an embedded toy set.

    ``make_toy(name, ...)`` returns ``x = z @ E.T`` for the 2-D draw ``z`` of the base set, so
    ``x @ E`` projects back to ``z``. ``rotate=False`` (the official W1(+)W2 code's embedding) gives
    ``E = [I_2; 0]``; ``rotate=True`` the fixed random isometry of the module docstring (seeded by
    ``D`` alone). The 2-D sets give ``I_2`` (their own coordinates); ``regression`` has none.
    """
    name = check_choice("name", name, TOY_NAMES)
    if name == "regression":
        raise ValueError("name must be a 2-D or embedded toy set for toy_embedding; 'regression' has no embedding")
    if name not in _EMBEDDED:
        return torch.eye(2)
    return _embedding64(_EMBEDDED[name][1], check_bool("rotate", rotate)).float()


def _embedding64(dim: int, rotate: bool) -> Tensor:
    if not rotate:
        return torch.eye(dim, 2, dtype=torch.float64)
    gaussian = np.random.default_rng(dim).standard_normal((dim, 2))
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))  # the unique QR with diag(R) > 0
    return torch.from_numpy(np.ascontiguousarray(q))


def toy_modes(name: str, noise: float | None = None) -> tuple[Tensor, float] | None:
    """The point modes of a toy set: ``(centres, std)``, centres float32 ``(M, 2)``, or ``None``.

    ``8gaussians``: the 8 centres ``2 (cos(k pi/4), sin(k pi/4))`` in label order ``k = 0..7``;
    ``25gaussians``: the 25 grid points ``(i - 2, j - 2)`` in label order ``5 i + j``. ``std`` is
    ``noise`` (``None``: :data:`DEFAULT_NOISE`). Every other set has no point modes: ``None``.
    Feed them to :func:`lightning_wass.metrics.mode_coverage`.
    """
    name = check_choice("name", name, TOY_NAMES)
    s = DEFAULT_NOISE[name] if noise is None else check_positive("noise", noise, allow_zero=True)
    if name == "8gaussians":
        angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    elif name == "25gaussians":
        k = torch.arange(25)
        centres = torch.stack([torch.div(k, 5, rounding_mode="floor"), k % 5], dim=1).double() - 2.0
    else:
        return None
    return centres.float(), s


def _normal(n: int, d: int, generator: torch.Generator | None) -> Tensor:
    return torch.randn(n, d, generator=generator)


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator)


def make_toy(
    name: str,
    n: int,
    generator: torch.Generator | None = None,
    *,
    noise: float | None = None,
    dim: int = 1,
    rotate: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Draw ``n`` points of the toy set ``name`` as ``(x, y)`` float32 tensors on the CPU.

    ``x`` has shape ``(n, 2)`` (``(n, dim)`` for ``regression``, ``(n, D)`` for the embedded sets);
    ``y`` is the mixture component / moon / arm (long) for the labelled sets, the float target of
    shape ``(n,)`` for ``regression``, and ``None`` otherwise (see the module docstring for the
    table). ``generator`` makes the draw reproducible; ``noise=None`` uses :data:`DEFAULT_NOISE`;
    ``dim`` is used by ``regression`` only, ``rotate`` by the embedded sets only (see
    :func:`toy_embedding`).
    """
    name = check_choice("name", name, TOY_NAMES)
    n = check_int("n", n, minimum=0)
    dim = check_int("dim", dim, minimum=1)
    rotate = check_bool("rotate", rotate)
    s = DEFAULT_NOISE[name] if noise is None else check_positive("noise", noise, allow_zero=True)
    if name in _EMBEDDED:
        base, ambient = _EMBEDDED[name]
        z, y = make_toy(base, n, generator, noise=s)
        return (z.double() @ _embedding64(ambient, rotate).T).float(), y
    g = generator
    y: Tensor | None = None
    if name == "8gaussians":
        y = torch.randint(0, 8, (n,), generator=g)
        angle = y.float() * (math.pi / 4)
        x = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) + s * _normal(n, 2, g)
    elif name == "25gaussians":
        y = torch.randint(0, 25, (n,), generator=g)
        centres = torch.stack([torch.div(y, 5, rounding_mode="floor"), y % 5], dim=1).float() - 2.0
        x = centres + s * _normal(n, 2, g)
    elif name == "moons":
        # scikit-learn's make_moons geometry (upper moon, then lower moon shifted by (1, -0.5)),
        # centred at the origin.
        y = torch.randint(0, 2, (n,), generator=g)
        t = math.pi * _uniform(n, g)
        upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
        lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
        x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
        x = x + s * _normal(n, 2, g)
    elif name in ("circles", "circle"):
        if name == "circles":
            y = torch.randint(0, 2, (n,), generator=g)
            radius = 2.0 - y.float()
        else:
            radius = torch.full((n,), 2.0)
        t = 2 * math.pi * _uniform(n, g)
        x = radius[:, None] * torch.stack([torch.cos(t), torch.sin(t)], dim=1) + s * _normal(n, 2, g)
    elif name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0 + s * _normal(n, 2, g)
    elif name == "pinwheel":
        # The official W1(+)W2 code's Pinwheel: features (r, u) ~ N((1, 0), diag(0.3, 0.1)^2), the row
        # vector (r, u) times R(phi) (= R(-phi) (r, u)), phi = 2 pi k / 5 + 0.25 exp(r), times 1.4.
        arms = PINWHEEL["arms"]
        y = torch.randint(0, arms, (n,), generator=g)
        f = _normal(n, 2, g).double() * torch.tensor([PINWHEEL["radial_std"], PINWHEEL["tangential_std"]], dtype=torch.float64)
        r, u = f[:, 0] + 1.0, f[:, 1]
        phi = y.double() * (2 * math.pi / arms) + PINWHEEL["rate"] * torch.exp(r)
        x = PINWHEEL["scale"] * torch.stack([r * torch.cos(phi) + u * torch.sin(phi), -r * torch.sin(phi) + u * torch.cos(phi)], dim=1)
        x = x.float() + s * _normal(n, 2, g)
    elif name == "checkerboard":
        # FFJORD's checkerboard on [-2, 2)^2: column floor(x1) in {-2..1}; rows alternate by column.
        x1 = 4 * _uniform(n, g) - 2
        x2 = _uniform(n, g) - 2 * torch.randint(0, 2, (n,), generator=g).float() + torch.floor(x1) % 2
        x = torch.stack([x1, x2], dim=1) + s * _normal(n, 2, g)
    else:  # regression
        w, b = regression_coefficients(dim)
        x = _normal(n, dim, g)
        y = x @ w + b + s * _normal(n, 1, g).squeeze(1)
    return x.float(), y


def sample_toy(
    name: str,
    n: int,
    generator: torch.Generator | None = None,
    *,
    noise: float | None = None,
    dim: int = 1,
    rotate: bool = False,
) -> Tensor:
    """Draw ``n`` fresh points of the toy set ``name`` as a float32 tensor on the CPU.

    The 2-D sets give shape ``(n, 2)``, the embedded ones ``(n, D)``; ``regression`` gives the joint
    points ``(x, y)`` of shape ``(n, dim + 1)`` (the target is the last column). Generative methods
    use it for fresh target samples, e.g. ``sample_toy("8gaussians", 2000, torch.Generator().manual_seed(1))``.
    """
    x, y = make_toy(name, n, generator, noise=noise, dim=dim, rotate=rotate)
    if name == "regression":
        assert y is not None
        return torch.cat([x, y[:, None]], dim=1)
    return x


def split_generator(seed: int, split: str) -> torch.Generator:
    """An independent generator for ``split`` of a DataModule seeded with ``seed``.

    Seeded by ``lightning_wass.seeding.mix_seed(seed, split number)``, so every ``(seed, split)``
    pair has its own stream and no split of one seed repeats a split of another.
    """
    return seeded_generator(None, seed, SPLITS.index(split))


class ToyDataModule(InMemoryDataModule):
    """A toy distribution (2-D or embedded, or the regression set) with independent train/val/test draws.

    Each split is drawn with its own generator derived from ``(seed, split)`` (see
    :func:`split_generator`): the data are the same for the same ``seed``, and the splits are
    independent samples of the same distribution (so the test split measures generalisation and
    the sample floor of Wasserstein distances, not memorisation).

    Args:
        name: one of :data:`TOY_NAMES` (see the module docstring).
        train_size, val_size, test_size: points per split; ``None`` gives 2,000 / 500 / 500
            (``regression``: 200 / 100 / 100, the paper's ``n = 200``).
        noise: noise standard deviation; ``None`` gives the set's default (:data:`DEFAULT_NOISE`).
        dim: feature dimension ``d`` of ``regression`` (ignored by the other sets).
        rotate: the embedded sets' isometry: ``False`` the official ``[I_2; 0]``, ``True`` a fixed
            random one (see :func:`toy_embedding`; ignored by the 2-D sets).
        batch_size, num_workers, seed, return_index, drop_last: as in :class:`InMemoryDataModule`.

    Batches are ``{"x": (b, 2) float (``(b, D)`` embedded), "y": (b,) long/float (labelled sets
    only), "index"?}``. :attr:`modes` gives the known point modes (8/25 Gaussians), which
    :class:`~lightning_wass.callbacks.WassersteinMonitor` uses for the mode coverage, and
    :attr:`embedding` the isometry of the embedded sets.

    Example::

        dm = ToyDataModule("8gaussians", batch_size=256)
        trainer.fit(model, datamodule=dm)
    """

    def __init__(
        self,
        name: str = "8gaussians",
        train_size: int | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        noise: float | None = None,
        dim: int = 1,
        rotate: bool = False,
        *,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        return_index: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=0.0,
            num_samples=None,
            seed=seed,
            return_index=return_index,
            drop_last=drop_last,
        )
        self.name = check_choice("name", name, TOY_NAMES)
        small = self.name == "regression"
        self.sizes = {
            "train": check_int("train_size", (200 if small else 2000) if train_size is None else train_size, minimum=1),
            "val": check_int("val_size", (100 if small else 500) if val_size is None else val_size, minimum=0),
            "test": check_int("test_size", (100 if small else 500) if test_size is None else test_size, minimum=0),
        }
        self.noise = None if noise is None else check_positive("noise", noise, allow_zero=True)
        self.dim = check_int("dim", dim, minimum=1)
        if not isinstance(rotate, bool):
            raise TypeError(f"rotate must be a bool, got {type(rotate).__name__} ({rotate!r})")
        self.rotate = rotate
        # No save_hyperparameters(): Lightning refuses to log when a DataModule's and a model's
        # hparams share a key with different values (``noise``, ``seed``, ``dim`` are common).

    def load_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        return {
            split: make_toy(
                self.name, size, split_generator(self.seed, split), noise=self.noise, dim=self.dim, rotate=self.rotate
            )
            for split, size in self.sizes.items()
        }

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh points of this set (features only), as :func:`sample_toy` but ``(n, d)`` for regression."""
        return make_toy(self.name, n, generator, noise=self.noise, dim=self.dim, rotate=self.rotate)[0]

    @property
    def modes(self) -> tuple[Tensor, float] | None:
        """``(centres (M, 2), std)`` of this set's point modes with its noise (:func:`toy_modes`), else ``None``."""
        return toy_modes(self.name, self.noise)

    @property
    def embedding(self) -> Tensor | None:
        """The isometry ``E`` ``(D, 2)`` of an embedded set (:func:`toy_embedding`), else ``None``."""
        return toy_embedding(self.name, rotate=self.rotate) if self.name in _EMBEDDED else None
