"""How the generative callbacks (and the modules' validation) evaluate a generative module.

What a generative module provides
---------------------------------
Every generative LightningModule in lightning_wass (:class:`~lightning_wass.modules.WGAN`,
:class:`~lightning_wass.modules.W2GradientFlow`, :class:`~lightning_wass.modules.W1W2ProximalFlow`,
:class:`~lightning_wass.modules.VAE`) provides

- ``sample(n: int) -> Tensor``: **required** (:class:`GenerativeModel`). ``n`` fresh samples of shape
  ``(n, *data_shape)`` on the module's device, drawn with torch's global random generator (so a
  caller can make the draw reproducible with :func:`isolated_rng` without disturbing training).
- ``generator_step: int``: *optional*. The number of generator updates so far. Callbacks that act
  "every N steps" (:class:`~lightning_wass.callbacks.SampleFigure`,
  :class:`~lightning_wass.callbacks.WassersteinMonitor`, through
  :class:`~lightning_wass.callbacks.every_n_steps.EveryNSteps`) count these when the module has
  them and ``trainer.global_step`` otherwise (:func:`step_count`; with two optimizers in manual
  optimization Lightning's ``global_step`` counts critic and generator steps together).

Nothing else is required: a module that has ``sample(n)`` works with both callbacks. They call it
through :func:`draw_samples`, which puts the module in eval mode, disables autograd and forks the
random state, so sampling never changes training (BatchNorm statistics, RNG streams).

Where held-out data comes from
------------------------------
:func:`heldout_data` returns a whole held-out split as one tensor: ``trainer.datamodule.tensors(split)``
when the DataModule is an :class:`~lightning_wass.datamodules.InMemoryDataModule` (every
lightning_wass DataModule is), otherwise the concatenated ``x`` of the Trainer's validation
dataloaders. :func:`floor_data` / :func:`floor_samples` return *independent* samples of the same
distribution (the training split) for the sample floor of Wasserstein distances (DESIGN.md
section 6): two independent ``n``-point samples of one distribution are themselves a positive
``W_p`` apart, so a generator is judged by its distance divided by that floor.
:func:`exact_distances` computes ``W_p`` exactly (POT's network simplex).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from lightning_wass._validation import check_int
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.nn.modes import eval_mode

__all__ = [
    "GenerativeModel",
    "draw_samples",
    "exact_distances",
    "floor_data",
    "floor_samples",
    "heldout_data",
    "isolated_rng",
    "step_count",
]


@runtime_checkable
class GenerativeModel(Protocol):
    """What the generative callbacks need from a module: ``sample(n)`` of shape ``(n, *data_shape)``."""

    def sample(self, n: int) -> Tensor: ...


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
            "with sample(n: int) -> Tensor of shape (n, *data_shape) (see lightning_wass.callbacks.evaluation)"
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

    ``W_p(mu, nu) = (min_{P in U(1/n, 1/m)} sum_ij P_ij ||x_i - y_j||^p)^(1/p)``, solved by
    :func:`lightning_wass.ot.wasserstein_distance` (POT's network simplex) in float64.
    """
    from lightning_wass.ot import wasserstein_distance

    x = x.detach().reshape(len(x), -1).double().cpu()
    y = y.detach().reshape(len(y), -1).double().cpu()
    return {int(p): float(wasserstein_distance(x, y, p=p, method="exact")) for p in ps}
