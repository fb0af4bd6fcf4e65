"""lightning_wass: Wasserstein and optimal-transport training methods for PyTorch Lightning.

The public API is listed in ``__all__``; each name is documented where it is defined.
"""

from lightning_wass._validation import DivergenceError
from lightning_wass.checkpoints import CheckpointError, read_checkpoint
from lightning_wass.callbacks.gradient_norm_stopping import GradientNormStopping
from lightning_wass.callbacks.hj_residual_stopping import HJResidualStopping
from lightning_wass.callbacks.sample_figure import SampleFigure
from lightning_wass.callbacks.wasserstein_monitor import WassersteinMonitor
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
from lightning_wass.plugins import SAMMixedPrecision
from lightning_wass.ot import OTConvergenceError, barycentric_map, ot_plan, wasserstein_distance

__version__ = "0.1.0"

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
