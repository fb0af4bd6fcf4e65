"""Figures of W1 (+) W2 proximal flows (matplotlib, no Lightning; arXiv:2407.11901, figures 3-5).

- :func:`plot_trajectories_2d`: Euler paths from the reference to the data in 2-D;
- :func:`plot_image_strip`: the states ``x_0, ..., x_K`` of a few image trajectories, one row each;
- :func:`plot_indicator_curves`: kinetic energy, HJ residual, terminal error, ... against the step.

Each writes a PNG and returns its path. Sample grids of images are
:func:`lightning_wass.callbacks.sample_figure.render_samples`' job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["plot_image_strip", "plot_indicator_curves", "plot_trajectories_2d"]


def _save(fig: object, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # type: ignore[arg-type]
    fig.savefig(path, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return path


def plot_trajectories_2d(
    paths: Tensor,
    path: str | Path,
    *,
    data: Tensor | None = None,
    max_paths: int = 300,
    title: str = "",
) -> Path:
    """Trajectories ``paths`` of shape ``(K + 1, N, 2)`` (e.g. ``model.trajectories(n)``): grey lines,
    start points blue, end points orange, over the data (green, optional)."""
    from matplotlib.figure import Figure

    if paths.ndim != 3 or paths.shape[2] != 2:
        raise ValueError(f"paths must have shape (K + 1, N, 2), got {tuple(paths.shape)}")
    p = paths[:, :max_paths].detach().float().cpu().numpy()
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    if data is not None:
        d = data.detach().float().cpu().reshape(len(data), -1).numpy()
        ax.scatter(d[:, 0], d[:, 1], s=3, c="tab:green", alpha=0.3, label="data", zorder=1)
    ax.plot(p[:, :, 0], p[:, :, 1], color="0.5", lw=0.5, alpha=0.6, zorder=2)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=4, c="tab:blue", label="x_0 (reference)", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=4, c="tab:orange", label="x_T (generated)", zorder=4)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7, markerscale=2)
    ax.set_title(title or f"{p.shape[1]} trajectories, {p.shape[0] - 1} Euler steps", fontsize=9)
    return _save(fig, path)


def plot_image_strip(paths: Tensor, path: str | Path, *, max_rows: int = 4, title: str = "") -> Path:
    """Image trajectories ``(K + 1, N, C, H, W)`` as a grid: one row per sample, one column per
    Euler state ``x_0 .. x_K`` (values clipped to ``[0, 1]``)."""
    from matplotlib.figure import Figure

    if paths.ndim != 5 or paths.shape[2] not in (1, 3):
        raise ValueError(f"paths must have shape (K + 1, N, C, H, W) with C in (1, 3), got {tuple(paths.shape)}")
    states = paths[:, :max_rows].detach().float().cpu().clamp(0, 1)
    cols, rows = states.shape[0], states.shape[1]
    fig = Figure(figsize=(1.1 * cols, 1.1 * rows + 0.4))
    for r in range(rows):
        for c in range(cols):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            image = states[c, r].permute(1, 2, 0).numpy()
            ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"k={c}", fontsize=7)
    fig.suptitle(title or "trajectory states x_0 ... x_K", fontsize=9)
    return _save(fig, path)


def plot_indicator_curves(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """One panel per indicator: ``history[name] = [(step, value), ...]`` (log scale for positive series)."""
    from matplotlib.figure import Figure

    names = [n for n, series in history.items() if len(series) > 0]
    if not names:
        raise ValueError("history holds no values to plot")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = (np.asarray(v, dtype=float) for v in zip(*history[name]))
        ax.plot(steps, values, marker="o", ms=2, lw=1)
        if np.all(values > 0) and values.max() / max(values.min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("potential steps", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or "optimality indicators", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
