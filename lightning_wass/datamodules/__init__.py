"""DataModules: in-memory tensors, 2-D toy sets, image sets and VAE latents.

Every DataModule yields dict batches ``{"x", "y"?, "index"?}`` (see :mod:`.batch`).
"""

from lightning_wass.datamodules.base import InMemoryDataModule, TensorDictDataset
from lightning_wass.datamodules.batch import PADDING_INDEX, Batch, padding_mask, require_index, unpack_batch
from lightning_wass.datamodules.sampler import TrainingSampler
from lightning_wass.datamodules.tensor import TensorDataModule
from lightning_wass.datamodules.digits import DigitsDataModule
from lightning_wass.datamodules.latent import LatentDataModule
from lightning_wass.datamodules.images import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TorchvisionImageDataModule,
)
from lightning_wass.datamodules.toy import (
    TOY_NAMES,
    ToyDataModule,
    make_toy,
    regression_coefficients,
    sample_toy,
    toy_embedding,
    toy_modes,
)

__all__ = [
    "Batch",
    "InMemoryDataModule",
    "TensorDataModule",
    "ToyDataModule",
    "DigitsDataModule",
    "LatentDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "TorchvisionImageDataModule",
    "TOY_NAMES",
    "make_toy",
    "regression_coefficients",
    "sample_toy",
    "toy_embedding",
    "toy_modes",
    "TensorDictDataset",
    "require_index",
    "unpack_batch",
    "PADDING_INDEX",
    "padding_mask",
    "TrainingSampler",
]
