"""Write a figure of a generative module's samples every N steps: a PNG file and a TensorBoard image."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_wass._validation import check_choice, check_int
from lightning_wass.callbacks.evaluation import draw_samples, heldout_data
from lightning_wass.callbacks.every_n_steps import EveryNSteps

__all__ = ["SampleFigure", "render_samples"]


def _figure_to_array(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def check_name(name: str, value: object) -> str:
    """A non-empty ``str`` (a TensorBoard tag, a metric prefix), or ``TypeError`` / ``ValueError`` naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty str, got {type(value).__name__} ({value!r})")
    if not value:
        raise ValueError(f"{name} must be a non-empty str")
    return value


def render_samples(samples: Tensor, data: Tensor | None = None, *, title: str = "", max_images: int = 64) -> np.ndarray:
    """Render ``samples`` as an ``(H, W, 3)`` uint8 RGB array.

    - vectors ``(n, d)``: a scatter of the samples (orange) over the data (grey); for ``d > 2`` the
      first two coordinates, for ``d = 1`` histograms;
    - images ``(n, C, H, W)`` (``C`` in 1 or 3) or ``(n, H, W)``: a grid of the first ``max_images``
      samples (``torchvision.utils.make_grid``), values clipped to ``[0, 1]``.
    """
    from matplotlib.figure import Figure

    if samples.ndim in (3, 4):
        import torchvision

        images = samples[:max_images].detach().float().cpu()
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.shape[1] not in (1, 3):
            raise ValueError(f"image samples must have 1 or 3 channels, got shape {tuple(samples.shape)}")
        nrow = max(1, int(math.ceil(math.sqrt(len(images)))))
        grid = torchvision.utils.make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
        return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if samples.ndim != 2:
        raise ValueError(f"samples must have shape (n, d), (n, H, W) or (n, C, H, W); got {tuple(samples.shape)}")
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    x = samples.detach().float().cpu().numpy()
    d = data.detach().float().cpu().reshape(len(data), -1).numpy() if data is not None else None
    if x.shape[1] == 1:
        bins = 60
        if d is not None:
            ax.hist(d[:, 0], bins=bins, density=True, alpha=0.5, color="0.5", label="held-out data")
        ax.hist(x[:, 0], bins=bins, density=True, alpha=0.6, color="tab:orange", label="samples")
    else:
        if d is not None:
            ax.scatter(d[:, 0], d[:, 1], s=3, c="0.6", alpha=0.6, label="held-out data", linewidths=0)
        ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:orange", alpha=0.7, label="samples", linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        if x.shape[1] > 2:
            ax.set_xlabel("coordinate 0")
            ax.set_ylabel("coordinate 1")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _figure_to_array(fig)


class SampleFigure(EveryNSteps):
    """Every ``every_n_steps`` steps, draw ``num_samples`` samples and write them as a figure.

    Works with any module that has ``sample(n)`` (see :mod:`lightning_wass.callbacks.evaluation`):
    2-D (and other vector) data give a scatter of samples over held-out data, images an image grid.
    Steps are the module's ``generator_step`` when it has one, else ``trainer.global_step``. The
    figure is drawn once more at the end of training; nothing is written in a ``fast_dev_run``. Sampling uses a fixed seed, eval mode and no
    autograd, so it never changes training.

    Each figure is written as ``<dirpath>/samples_step<step>.png`` (``dirpath`` defaults to
    ``<trainer.log_dir>/samples``) and, for every TensorBoard logger, as the image ``tag``. Only the
    global-zero process writes. The paths written are in :attr:`paths`.

    Args:
        every_n_steps: steps between figures (>= 1).
        num_samples: samples per figure (images: at most ``max_images`` are shown).
        num_data: held-out points drawn under a scatter (0 = none).
        split: the held-out split shown (``"val"`` or ``"test"``).
        dirpath: directory for the PNG files (``None`` = ``<trainer.log_dir>/samples``).
        tag: TensorBoard image tag.
        seed: seed of the sample draw (the same ``z`` every time, so figures show the evolution).
        max_images: most images in a grid.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 1000,
        num_data: int = 1000,
        split: str = "val",
        dirpath: str | None = None,
        tag: str = "samples",
        seed: int = 0,
        max_images: int = 64,
    ) -> None:
        super().__init__(every_n_steps)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.num_data = check_int("num_data", num_data, minimum=0)
        self.split = check_choice("split", split, ("val", "test", "train"))
        if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(f"dirpath must be a folder path (str) or None, got {type(dirpath).__name__} ({dirpath!r})")
        if dirpath is not None and not str(dirpath):
            raise ValueError("dirpath must be a non-empty folder path, or None for <log_dir>/samples")
        self.dirpath = dirpath
        self.tag = check_name("tag", tag)
        self.seed = check_int("seed", seed, minimum=0)
        self.max_images = check_int("max_images", max_images, minimum=1)
        self.paths: list[Path] = []

    def _directory(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    def run_at(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> Path | None:
        """The every-N-steps action: :meth:`write`."""
        return self.write(trainer, pl_module, step)

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> Path | None:
        """Draw the samples and write the figure for ``step`` now; returns the PNG path (global zero)."""
        self.last_step = step
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return None  # like Lightning's own loggers and checkpoints, nothing is written in a fast_dev_run
        samples = draw_samples(pl_module, self.num_samples, seed=self.seed)
        data = None
        if samples.ndim == 2 and self.num_data > 0:
            try:
                data = heldout_data(trainer, self.split, self.num_data)
            except ValueError:
                data = None
        image = render_samples(samples, data, title=f"{type(pl_module).__name__}, step {step}", max_images=self.max_images)
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"samples_step{step:07d}.png"
        from matplotlib.image import imsave

        imsave(path, image)
        self.paths.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, torch.from_numpy(image), global_step=step, dataformats="HWC")
        return path
