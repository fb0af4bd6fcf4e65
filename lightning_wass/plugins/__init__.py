"""lightning_wass.plugins: Lightning plugins for the SAM-family optimizers."""

from lightning_wass.plugins.sam_precision import SAMMixedPrecision

__all__ = ["SAMMixedPrecision"]
