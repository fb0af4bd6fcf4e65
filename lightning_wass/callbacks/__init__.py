"""lightning_wass.callbacks."""

from lightning_wass.callbacks.sample_figure import SampleFigure
from lightning_wass.callbacks.wasserstein_monitor import WassersteinMonitor
from lightning_wass.callbacks.gradient_norm_stopping import GradientNormStopping
from lightning_wass.callbacks.hj_residual_stopping import HJResidualStopping
from lightning_wass.callbacks.release_process_group import ReleaseSpawnedProcessGroup

__all__ = [
    "SampleFigure",
    "WassersteinMonitor",
    "GradientNormStopping",
    "HJResidualStopping",
    "ReleaseSpawnedProcessGroup",
]
