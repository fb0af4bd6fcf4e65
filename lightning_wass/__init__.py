"""lightning_wass: Wasserstein and optimal-transport training methods for PyTorch Lightning.

The public API is listed in ``__all__``; each name is documented where it is defined.

Importing ``lightning_wass`` is cheap: the names below are loaded on first use (PEP 562
``__getattr__``), so ``import lightning_wass`` and ``lightning-wass --help`` import neither torch
nor Lightning. ``from lightning_wass import VAE`` and ``lightning_wass.VAE`` work as usual and
import what that name needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it from here)

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "DivergenceError": "lightning_wass._validation",
    "CheckpointError": "lightning_wass.checkpoints",
    "read_checkpoint": "lightning_wass.checkpoints",
    "GradientNormStopping": "lightning_wass.callbacks.gradient_norm_stopping",
    "HJResidualStopping": "lightning_wass.callbacks.hj_residual_stopping",
    "ReleaseSpawnedProcessGroup": "lightning_wass.callbacks.release_process_group",
    "SampleFigure": "lightning_wass.callbacks.sample_figure",
    "WassersteinMonitor": "lightning_wass.callbacks.wasserstein_monitor",
    "CIFAR10DataModule": "lightning_wass.datamodules",
    "CIFAR100DataModule": "lightning_wass.datamodules",
    "DigitsDataModule": "lightning_wass.datamodules",
    "FashionMNISTDataModule": "lightning_wass.datamodules",
    "LatentDataModule": "lightning_wass.datamodules",
    "MNISTDataModule": "lightning_wass.datamodules",
    "TensorDataModule": "lightning_wass.datamodules",
    "ToyDataModule": "lightning_wass.datamodules",
    "sample_toy": "lightning_wass.datamodules",
    "toy_embedding": "lightning_wass.datamodules",
    "toy_modes": "lightning_wass.datamodules",
    "ModeCoverage": "lightning_wass.metrics",
    "WassersteinDistance": "lightning_wass.metrics",
    "mode_coverage": "lightning_wass.metrics",
    "OTMDRClassifier": "lightning_wass.modules.otmdr_classifier",
    "W1W2ProximalFlow": "lightning_wass.modules.proximal_flow",
    "VAE": "lightning_wass.modules.vae",
    "W2GradientFlow": "lightning_wass.modules.w2_gradient_flow",
    "WGAN": "lightning_wass.modules.wgan",
    "WorstCaseGenerator": "lightning_wass.modules.worst_case",
    "OTMDR": "lightning_wass.optim",
    "SAM": "lightning_wass.optim",
    "ProportionalRho": "lightning_wass.optim",
    "SAMMixedPrecision": "lightning_wass.plugins",
    "OTConvergenceError": "lightning_wass.ot",
    "barycentric_map": "lightning_wass.ot",
    "ot_plan": "lightning_wass.ot",
    "wasserstein_distance": "lightning_wass.ot",
}

__all__ = [
    # methods
    "WorstCaseGenerator",
    "OTMDR",
    "SAM",
    "OTMDRClassifier",
    "ProportionalRho",
    "SAMMixedPrecision",
    "W1W2ProximalFlow",
    "WGAN",
    "W2GradientFlow",
    "VAE",
    # callbacks
    "GradientNormStopping",
    "HJResidualStopping",
    "ReleaseSpawnedProcessGroup",
    "SampleFigure",
    "WassersteinMonitor",
    # data
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "LatentDataModule",
    "MNISTDataModule",
    "TensorDataModule",
    "ToyDataModule",
    "sample_toy",
    "toy_embedding",
    "toy_modes",
    # optimal transport
    "OTConvergenceError",
    "ModeCoverage",
    "WassersteinDistance",
    "mode_coverage",
    "barycentric_map",
    "ot_plan",
    "wasserstein_distance",
    # errors
    "DivergenceError",
    "CheckpointError",
    "read_checkpoint",
    "__version__",
]


# subpackages and modules reachable as attributes (``lightning_wass.ot.ot_plan``) without an explicit import
_SUBMODULES = frozenset(
    {"callbacks", "checkpoints", "datamodules", "demo", "functional", "guard", "metrics", "modules", "nn", "optim", "ot", "plugins", "seeding", "cli"}
)


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage, ``lightning_wass.ot`` style) on first access."""
    if name in _SUBMODULES:
        return importlib.import_module(f"lightning_wass.{name}")
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lightning_wass' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static type checkers and IDEs see the eager imports
    from lightning_wass._validation import DivergenceError
    from lightning_wass.callbacks.gradient_norm_stopping import GradientNormStopping
    from lightning_wass.callbacks.hj_residual_stopping import HJResidualStopping
    from lightning_wass.callbacks.release_process_group import ReleaseSpawnedProcessGroup
    from lightning_wass.callbacks.sample_figure import SampleFigure
    from lightning_wass.callbacks.wasserstein_monitor import WassersteinMonitor
    from lightning_wass.checkpoints import CheckpointError, read_checkpoint
    from lightning_wass.datamodules import (
        CIFAR10DataModule,
        CIFAR100DataModule,
        DigitsDataModule,
        FashionMNISTDataModule,
        LatentDataModule,
        MNISTDataModule,
        TensorDataModule,
        ToyDataModule,
        sample_toy,
        toy_embedding,
        toy_modes,
    )
    from lightning_wass.metrics import ModeCoverage, WassersteinDistance, mode_coverage
    from lightning_wass.modules.otmdr_classifier import OTMDRClassifier
    from lightning_wass.modules.proximal_flow import W1W2ProximalFlow
    from lightning_wass.modules.vae import VAE
    from lightning_wass.modules.w2_gradient_flow import W2GradientFlow
    from lightning_wass.modules.wgan import WGAN
    from lightning_wass.modules.worst_case import WorstCaseGenerator
    from lightning_wass.optim import OTMDR, SAM, ProportionalRho
    from lightning_wass.ot import OTConvergenceError, barycentric_map, ot_plan, wasserstein_distance
    from lightning_wass.plugins import SAMMixedPrecision
