"""The interface every generative module shares, and where held-out data comes from.

What a generative module provides
---------------------------------
Every generative LightningModule in lightning_wass (:class:`~lightning_wass.modules.WGAN`,
:class:`~lightning_wass.modules.W2GradientFlow`, ``W1W2ProximalFlow``, ``VAE``) provides

- ``sample(n: int) -> Tensor``: **required**. ``n`` fresh samples of shape ``(n, *data_shape)`` on
  the module's device, drawn with torch's global random generator (so a caller can make the draw
  reproducible with :func:`isolated_rng` without disturbing training).
- ``generator_step: int``: *optional*. The number of generator updates so far. Callbacks that act
  "every N steps" (:class:`~lightning_wass.callbacks.SampleFigure`,
  :class:`~lightning_wass.callbacks.WassersteinMonitor`) count these when the module has them and
  ``trainer.global_step`` otherwise (with two optimizers in manual optimization Lightning's
  ``global_step`` counts critic and generator steps together).

Nothing else is required: a module that has ``sample(n)`` works with both callbacks. The callbacks
call it through :func:`draw_samples`, which puts the module in eval mode, disables autograd and
forks the random state, so sampling never changes training (BatchNorm statistics, RNG streams).

Where held-out data comes from
------------------------------
:func:`heldout_data` returns a whole held-out split as one tensor: ``trainer.datamodule.tensors(split)``
when the DataModule is an :class:`~lightning_wass.datamodules.InMemoryDataModule` (every
lightning_wass DataModule is), otherwise the concatenated ``x`` of the Trainer's validation
dataloaders. :func:`floor_data` returns an *independent* sample of the same distribution (the
training split) for the sample floor of Wasserstein distances (DESIGN.md section 6): two
independent ``n``-point samples of one distribution are themselves a positive ``W_p`` apart, so a
generator is judged by its distance divided by that floor.

:class:`LatentGenerativeModule` is the base of the two latent-noise generators in this package
(a generator network ``G: z -> x`` with ``z ~ N(0, I)``): it builds the default networks from the
data shape, draws training noise reproducibly, implements ``sample(n)``, counts generator steps,
and logs the exact ``W1`` and ``W2`` (POT) between generated and held-out samples at validation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from lightning_wass.checkpoints import CheckpointedModule
from lightning_wass._validation import check_data_batch, check_int, raise_if_diverged
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.guard import StepCheck, UpdateGuard, rms_ratio
from lightning_wass.nn.gan_nets import is_image_shape
from lightning_wass.nn.modes import eval_mode
from lightning_wass.seeding import seeded_generator

__all__ = [
    "GenerativeModel",
    "LatentGenerativeModule",
    "default_latent_dim",
    "draw_samples",
    "exact_distances",
    "floor_data",
    "floor_samples",
    "heldout_data",
    "infer_latent_dim",
    "isolated_rng",
    "step_count",
]


@runtime_checkable
class GenerativeModel(Protocol):
    """What the generative callbacks need from a module: ``sample(n)`` of shape ``(n, *data_shape)``."""

    def sample(self, n: int) -> Tensor: ...


def default_latent_dim(data_shape: Sequence[int]) -> int:
    """100 for images (DCGAN), else the data dimension (at least 2)."""
    shape = tuple(data_shape)
    if is_image_shape(shape):
        return 100
    return max(2, math.prod(shape))


def infer_latent_dim(generator: nn.Module | None, latent_dim: int | None) -> int | None:
    """``latent_dim`` if given, else the generator's ``latent_dim`` / ``in_features`` attribute."""
    if latent_dim is not None:
        return check_int("latent_dim", latent_dim, minimum=1)
    if generator is None:
        return None
    for attr in ("latent_dim", "in_features"):
        value = getattr(generator, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"latent_dim is required with a generator ({type(generator).__name__}) that has no latent_dim or "
        "in_features attribute"
    )



# ------------------------------------------------------------------------------ helpers for callers
def step_count(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """The module's ``generator_step`` when it has one, else ``trainer.global_step``."""
    step = getattr(pl_module, "generator_step", None)
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return int(step)
    return int(trainer.global_step)


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's global generator(s) seeded by ``seed``, then restore their state."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def draw_samples(module: nn.Module, n: int, *, seed: int = 0) -> Tensor:
    """``module.sample(n)`` in eval mode, without autograd, with a forked RNG seeded by ``seed``.

    Returns a detached float CPU tensor. Raises ``TypeError`` if ``module`` has no ``sample`` method
    and ``ValueError`` if the result does not have ``n`` rows.
    """
    if not callable(getattr(module, "sample", None)):
        raise TypeError(
            f"{type(module).__name__} has no sample(n) method; the generative callbacks need a module "
            "with sample(n: int) -> Tensor of shape (n, *data_shape) (see lightning_wass.modules.generative)"
        )
    n = check_int("num_samples", n, minimum=1)
    device = next((p.device for p in module.parameters()), None)
    with eval_mode(module), torch.no_grad(), isolated_rng(seed, device):
        x = module.sample(n)
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__}.sample({n}) must return a tensor with {n} rows, got {shape}")
    return x.detach().float().cpu()


def heldout_data(trainer: pl.Trainer, split: str = "val", max_samples: int | None = None) -> Tensor:
    """A held-out split's features ``x`` as one CPU tensor (the first ``max_samples`` points).

    From ``trainer.datamodule.tensors(split)`` when available, otherwise (``split="val"`` only) by
    iterating ``trainer.val_dataloaders``. Raises ``ValueError`` naming both sources when neither
    gives data.
    """
    datamodule = getattr(trainer, "datamodule", None)
    x: Tensor | None = None
    if datamodule is not None and callable(getattr(datamodule, "tensors", None)):
        x = datamodule.tensors(split)[0]
    elif split == "val":
        loaders = trainer.val_dataloaders
        if loaders is None:
            # Outside validation the Trainer may not have built them yet.
            with contextlib.suppress(Exception):
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            loaders = trainer.val_dataloaders
        if loaders is not None:
            loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
            parts: list[Tensor] = []
            count = 0
            for loader in loaders:
                for batch in loader:
                    parts.append(unpack_batch(batch).x.detach().cpu())
                    count += len(parts[-1])
                    if max_samples is not None and count >= max_samples:
                        break
            x = torch.cat(parts) if parts else None
    if x is None or len(x) == 0:
        raise ValueError(
            f"no held-out data for split {split!r}: use a DataModule with tensors(split) (any "
            "lightning_wass DataModule, with val_fraction > 0) or give the Trainer validation dataloaders"
        )
    x = x.detach().float().cpu()
    return x if max_samples is None else x[:max_samples]


def floor_data(trainer: pl.Trainer, n: int, *, seed: int = 0, split: str = "train") -> Tensor | None:
    """``n`` points of ``split`` (default the training split, independent of the held-out one) drawn
    without replacement with a seeded permutation, for the sample floor; ``None`` if unavailable."""
    subsets = floor_samples(trainer, n, repeats=1, seed=seed, split=split)
    return subsets[0] if subsets else None


def floor_samples(trainer: pl.Trainer, n: int, *, repeats: int = 5, seed: int = 0, split: str = "train") -> list[Tensor]:
    """Up to ``repeats`` disjoint ``n``-point subsets of ``split`` (a seeded permutation cut in blocks).

    The floor ``E W_p(an independent n-sample, held-out)`` is estimated by averaging over them: one
    subset alone is a noisy estimate (for 8 Gaussians and ``n = 1,000`` single draws range from about
    0.31 to 0.46). Empty if the DataModule has no ``tensors`` or the split has fewer than ``n`` points.
    """
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not callable(getattr(datamodule, "tensors", None)):
        return []
    x = datamodule.tensors(split)[0]
    count = min(repeats, len(x) // n) if n > 0 else 0
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [x[index[i * n : (i + 1) * n]].detach().float().cpu() for i in range(count)]


def exact_distances(x: Tensor, y: Tensor, ps: Sequence[int] = (1, 2)) -> dict[int, float]:
    """Exact ``W_p`` between the point clouds ``x`` and ``y`` (flattened to ``(n, d)``) for each ``p``.

    Uses :func:`lightning_wass.ot.wasserstein_distance` (POT's network simplex) in float64.
    """
    from lightning_wass.ot import wasserstein_distance

    x = x.detach().reshape(len(x), -1).double().cpu()
    y = y.detach().reshape(len(y), -1).double().cpu()
    return {int(p): float(wasserstein_distance(x, y, p=p, method="exact")) for p in ps}


@contextlib.contextmanager
def _tracked(module: nn.Module, step: contextlib.AbstractContextManager[StepCheck]) -> Iterator[StepCheck]:
    """Enter ``step`` and make its check the module's current one (for :meth:`check_finite`)."""
    with step as check:
        module.__dict__["_check"] = check
        try:
            yield check
        finally:
            module.__dict__["_check"] = None


# ----------------------------------------------------------------------------- shared base class
class LatentGenerativeModule(CheckpointedModule, pl.LightningModule):
    """Base of latent-noise generators ``x = G(z)``, ``z ~ N(0, I_latent_dim)``.

    Subclasses set ``self.generator`` (an ``nn.Module`` mapping ``(n, latent_dim)`` to
    ``(n, *data_shape)``), ``self.latent_dim`` and ``self.data_shape`` (``None`` until known), and
    call :meth:`_init_generative` from ``__init__``. They get:

    - :meth:`sample` (the shared interface), in eval mode when called through :func:`draw_samples`;
    - :meth:`noise`: training noise drawn from a stream seeded by ``(seed, rank, draw number)``, so
      replicas under DDP draw different ``z`` and a resumed run draws the same ``z`` as an
      uninterrupted one (the draw counter is saved in the checkpoint);
    - counters ``generator_step`` (and whatever else the subclass adds to :attr:`_counters`),
      saved in checkpoints;
    - validation that collects the held-out batches and logs ``val/W1`` and ``val/W2``: exact
      distances (POT) between up to ``eval_samples`` held-out points and as many samples (drawn
      with a fixed seed, so the figure is the same on every replica and not noisier than needed).
    """

    generator: nn.Module
    latent_dim: int | None
    data_shape: tuple[int, ...] | None

    def _init_generative(self, *, seed: int, eval_samples: int) -> None:
        self.seed = check_int("seed", seed, minimum=0)
        self.eval_samples = check_int("eval_samples", eval_samples, minimum=0)
        self.generator_step = 0
        self._draws = 0
        self._val_x: list[Tensor] = []

    # ------------------------------------------------------------------ the shared interface
    def sample(self, n: int) -> Tensor:
        """``n`` samples ``G(z)``, ``z ~ N(0, I)`` from torch's global generator: shape ``(n, *data_shape)``."""
        n = check_int("n", n, minimum=1)
        if getattr(self, "generator", None) is None or self.latent_dim is None:
            raise RuntimeError(
                f"{type(self).__name__} has no generator yet: give data_shape (or a generator) to the "
                "constructor, or call sample() after Trainer.fit has set the module up"
            )
        z = torch.randn(n, self.latent_dim, device=self.device)
        return self.generator(z)

    # ------------------------------------------------------------------ training noise
    def noise(self, n: int) -> Tensor:
        """Training noise ``z`` of shape ``(n, latent_dim)`` from the stream ``(seed, rank, draw)``."""
        assert self.latent_dim is not None
        rank = self.global_rank if self._trainer is not None else 0
        generator = seeded_generator(self.device, self.seed, rank, self._draws)
        self._draws += 1
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def uniform(self, n: int) -> Tensor:
        """Uniform ``[0, 1)`` numbers of shape ``(n,)`` from the same reproducible stream as :meth:`noise`."""
        rank = self.global_rank if self._trainer is not None else 0
        generator = seeded_generator(self.device, self.seed, rank, self._draws, 1)
        self._draws += 1
        return torch.rand(n, generator=generator, device=self.device)

    def generate(self, z: Tensor, data: Tensor | None = None) -> Tensor:
        """``G(z)``, checked against the data's per-sample shape (``ValueError`` on a mismatch)."""
        x = self.generator(z)
        expected = tuple(data.shape[1:]) if data is not None else self.data_shape
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__}: the generator's output shape {tuple(x.shape[1:])} does not match the "
                f"data shape {tuple(expected)}; give a generator whose output matches the data (or data_shape)"
            )
        return x

    # ------------------------------------------------------------------ divergence (lightning_wass.guard)
    max_update_ratio: float | None = 1e3
    """One step may move an optimizer's parameters at most this many times their norm (``None``: no bound)."""
    sample_spread_bound: float | None = 1e3
    """Generated samples may be at most this many times the data batch's RMS norm (``None``: no bound)."""

    def where(self) -> str:
        """The module and step named in divergence messages."""
        return f"{type(self).__name__} generator step {self.generator_step}"

    def guarded_step(self) -> contextlib.AbstractContextManager[StepCheck]:
        """``with self.guarded_step() as check:`` around a training step (see :mod:`lightning_wass.guard`).

        A diverged step restores the networks, the optimizer states and :attr:`_counters` before
        :class:`~lightning_wass.DivergenceError` propagates, so nothing diverged reaches a checkpoint.
        """
        guard = UpdateGuard.of(self, self.max_update_ratio)
        return _tracked(self, guard.step(self.where(), owner=self, counters=self._counters))

    def check_finite(self, what: str, value: Tensor, hint: str) -> None:
        """``value`` must be finite: recorded in the running guarded step (read back once at its end),
        or checked now outside one; :class:`~lightning_wass.DivergenceError` names the module and step."""
        check = self.__dict__.get("_check")
        if check is not None:
            check.finite(what, value, hint)
        else:
            raise_if_diverged(what, value, where=self.where(), hint=hint)

    def check_batch(self, x: Tensor, check: StepCheck | None = None) -> None:
        """A training batch must match what the module was built for: float, ``(n, *data_shape)``,
        the parameters' dtype, and (recorded in ``check``, read back with the step's flags) finite."""
        check_data_batch(type(self).__name__, x, self.data_shape, self)
        if check is not None:
            check.finite("the training batch", x, "clean the data (the DataModules refuse non-finite data at setup)", error=ValueError)

    def check_samples(self, generated: Tensor, data: Tensor, hint: str, *, what: str = "the generator output") -> None:
        """Generated samples must be finite and within :attr:`sample_spread_bound` times the data's RMS norm.

        ``rms(x) = sqrt(mean_i ||x_i||^2)``; the bound is on ``rms(generated) / rms(data)``.
        """
        self.check_finite(what, generated, hint)
        check = self.__dict__.get("_check")
        if check is None or self.sample_spread_bound is None:
            return
        check.bounded(f"the RMS norm of {what} over the data batch's", rms_ratio(generated, data), self.sample_spread_bound, hint)

    # ------------------------------------------------------------------ counters in checkpoints
    _counters: tuple[str, ...] = ("generator_step", "_draws")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_wass_counters"] = {name: int(getattr(self, name)) for name in self._counters}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, value in checkpoint.get("lightning_wass_counters", {}).items():
            setattr(self, name, int(value))

    # ------------------------------------------------------------------ validation: exact W1, W2
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._val_x.append(unpack_batch(batch).x.detach())

    def on_validation_epoch_start(self) -> None:
        self._val_x = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_x or self.eval_samples == 0:
            return
        held_out = torch.cat(self._val_x)
        self._val_x = []
        if self.trainer.world_size > 1:
            held_out = self.all_gather(held_out).flatten(0, 1)
        held_out = held_out[: self.eval_samples]
        generated = draw_samples(self, len(held_out), seed=self.seed + 1)
        metrics = {f"val/W{p}": value for p, value in exact_distances(generated, held_out, ps=(1, 2)).items()}
        metrics.update(self.validation_metrics(held_out.float(), generated.to(held_out.device)))
        for name, value in metrics.items():
            if math.isfinite(value):
                self.log(name, value, prog_bar=name == "val/W2", sync_dist=False)

    def validation_metrics(self, held_out: Tensor, generated: Tensor) -> dict[str, float]:
        """Extra validation figures from the held-out points and as many samples (override to add some)."""
        return {}

    def zero_touch(self, *modules: nn.Module) -> Tensor:
        """``0 * sum(p.sum())`` over the trainable parameters of ``modules``, added to a loss.

        Under DDP with ``find_unused_parameters=False`` (the default), every backward must reach every
        parameter DDP tracks, or its gradient reduction never completes. A step that updates one
        network (the critic, say) while the other (the generator) is not in its graph adds this term:
        the other network gets an exact zero gradient at the cost of one tiny op per parameter, and
        the update is unchanged. (Freezing the other network with ``requires_grad_(False)`` does not
        help: DDP's reducer fixes the set of parameters it waits for when it wraps the module.)
        """
        terms = [p.sum() for m in modules for p in m.parameters() if p.requires_grad]
        if not terms:
            return torch.zeros((), device=self.device)
        return torch.stack(terms).sum() * 0.0
