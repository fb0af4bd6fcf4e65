"""lightning_wass.optim: torch.optim optimizers (no Lightning import): OT-MDR and SAM, and a rho schedule."""

from lightning_wass.optim.otmdr import OTMDR
from lightning_wass.optim.passes import PassInfo
from lightning_wass.optim.rho_schedule import ProportionalRho
from lightning_wass.optim.sam import SAM

__all__ = ["OTMDR", "PassInfo", "ProportionalRho", "SAM"]
