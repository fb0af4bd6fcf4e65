"""Generator and critic networks of the generative modules: MLPs for vectors, DCGAN-style convnets for images.

- Vectors ``(d,)``: the WGAN-GP toy networks (Gulrajani et al. 2017, arXiv:1704.00028; their
  ``gan_toy.py``): 3 hidden layers of 512 ReLU units for both the generator and the critic.
- Images ``(C, H, W)`` with ``H = W`` divisible by 4 (8x8 digits, 28x28 MNIST, 32x32 CIFAR-10):
  DCGAN (Radford et al. 2015, arXiv:1511.06434): the generator projects ``z`` to a
  ``(4 w, H/4, W/4)`` map and doubles the resolution twice with stride-2 transposed convolutions
  (BatchNorm + ReLU, sigmoid output in ``[0, 1]``); the critic halves it twice with stride-2
  convolutions and LeakyReLU(0.2), *without* BatchNorm (the gradient penalty is per sample, and
  BatchNorm couples the samples of a batch), and ends with a linear layer to one score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.nn.utils.parametrize import is_parametrized, remove_parametrizations

from lightning_wass._validation import check_int, check_shape
from lightning_wass.nn.mlp import MLP

__all__ = [
    "DCGANCritic",
    "DCGANGenerator",
    "MLPCritic",
    "MLPGenerator",
    "apply_spectral_norm",
    "spectral_norm_from_bytes",
    "spectral_norm_to_bytes",
    "default_critic",
    "default_generator",
    "is_image_shape",
]


def is_image_shape(data_shape: Sequence[int]) -> bool:
    """``True`` for ``(C, H, W)`` with ``C`` in 1 or 3 and square ``H = W`` divisible by 4."""
    shape = tuple(data_shape)
    return len(shape) == 3 and shape[0] in (1, 3) and shape[1] == shape[2] and shape[1] % 4 == 0


class MLPGenerator(nn.Module):
    """``z (n, latent_dim) -> x (n, *data_shape)`` through an :class:`~lightning_wass.nn.MLP`.

    Args:
        latent_dim: noise dimension.
        data_shape: shape of one output sample.
        hidden: hidden widths (default: WGAN-GP's toy generator, 3 x 512).
        activation: hidden activation (see :data:`lightning_wass.nn.mlp.ACTIVATIONS`).
        output: ``"linear"`` (unbounded data) or ``"sigmoid"`` (data in ``[0, 1]``).
    """

    def __init__(
        self,
        latent_dim: int = 2,
        data_shape: Sequence[int] = (2,),
        hidden: Sequence[int] = (512, 512, 512),
        activation: str = "relu",
        output: str = "linear",
    ) -> None:
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        self.data_shape = check_shape("data_shape", data_shape)
        if output not in ("linear", "sigmoid"):
            raise ValueError(f"output must be 'linear' or 'sigmoid', got {output!r}")
        self.net = MLP(self.latent_dim, math.prod(self.data_shape), hidden, activation)
        self.output = output

    def forward(self, z: Tensor) -> Tensor:
        x = self.net(z).reshape(len(z), *self.data_shape)
        return x.sigmoid() if self.output == "sigmoid" else x


class MLPCritic(nn.Module):
    """``x (n, *data_shape) -> f(x) (n,)`` through an :class:`~lightning_wass.nn.MLP` on the flattened input."""

    def __init__(
        self,
        data_shape: Sequence[int] = (2,),
        hidden: Sequence[int] = (512, 512, 512),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.data_shape = check_shape("data_shape", data_shape)
        self.net = MLP(math.prod(self.data_shape), 1, hidden, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(-1)


class DCGANGenerator(nn.Module):
    """DCGAN generator ``z (n, latent_dim) -> images (n, C, S, S)`` in ``[0, 1]``, ``S`` divisible by 4.

    ``Linear -> (4w, S/4, S/4) -> BN, ReLU -> ConvT(4w -> 2w, x2) -> BN, ReLU -> ConvT(2w -> C, x2) -> sigmoid``.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 1, image_size: int = 28, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        check_int("channels", channels, minimum=1)
        check_int("image_size", image_size, minimum=4)
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        check_int("width", width, minimum=1)
        self.data_shape = (channels, image_size, image_size)
        self.base = image_size // 4
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 4 * width * self.base * self.base),
            nn.BatchNorm1d(4 * width * self.base * self.base),
            nn.ReLU(True),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).reshape(len(z), 4 * self.width, self.base, self.base)
        return self.net(h)


class DCGANCritic(nn.Module):
    """DCGAN-style critic ``images (n, C, S, S) -> f (n,)`` without BatchNorm (gradient-penalty safe).

    ``Conv(C -> w, /2) -> LReLU -> Conv(w -> 2w, /2) -> LReLU -> Conv(2w -> 4w, 3x3) -> LReLU -> Linear -> 1``.
    """

    def __init__(self, channels: int = 1, image_size: int = 28, width: int = 64) -> None:
        super().__init__()
        check_int("channels", channels, minimum=1)
        check_int("image_size", image_size, minimum=4)
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        check_int("width", width, minimum=1)
        self.data_shape = (channels, image_size, image_size)
        base = image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(4 * width * base * base, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def default_generator(data_shape: Sequence[int], latent_dim: int) -> nn.Module:
    """DCGAN generator for image shapes (:func:`is_image_shape`), else a 3 x 512 MLP generator."""
    shape = tuple(data_shape)
    if is_image_shape(shape):
        return DCGANGenerator(latent_dim, channels=shape[0], image_size=shape[1])
    return MLPGenerator(latent_dim, shape)


def default_critic(data_shape: Sequence[int]) -> nn.Module:
    """DCGAN-style critic for image shapes (:func:`is_image_shape`), else a 3 x 512 MLP critic."""
    shape = tuple(data_shape)
    if is_image_shape(shape):
        return DCGANCritic(channels=shape[0], image_size=shape[1])
    return MLPCritic(shape)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalise (Miyato et al. 2018, arXiv:1802.05957) every Linear/Conv weight of ``module``.

    Uses ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training-mode
    forward); layers that are already parametrized are left alone. Returns ``module`` (modified in place).
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            if not is_parametrized(layer, "weight"):
                spectral_norm(layer)
    return module


def spectral_norm_to_bytes(module: nn.Module) -> bytes:
    """Serialise a spectrally normalised ``module`` to bytes (:func:`spectral_norm_from_bytes` inverts it).

    Parametrized modules (``spectral_norm``) cannot be pickled (torch raises "Serialization of
    parametrized modules is only supported through state_dict()"), yet ``strategy="ddp_spawn"``
    pickles the LightningModule. This saves a copy without parametrizations plus the original's
    ``state_dict`` (``torch.save`` into bytes, so no shared-memory tensors outlive the call);
    weights, ``u`` and ``v`` come back exactly.

    The parametrizations are removed from ``module`` itself for the save and put back afterwards
    (a deep copy would share the parametrized class with ``module``, and removing the
    parametrization from the copy would break the original). The weight ``Parameter`` objects stay
    the same, so optimisers that hold them are unaffected.
    """
    import io

    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    layers = [layer for layer in module.modules() if is_parametrized(layer, "weight")]
    buffer = io.BytesIO()
    try:
        for layer in layers:
            remove_parametrizations(layer, "weight", leave_parametrized=False)
        torch.save({"module": module, "state": state}, buffer)
    finally:
        for layer in layers:
            spectral_norm(layer)
        module.load_state_dict(state)
    return buffer.getvalue()


def spectral_norm_from_bytes(data: bytes) -> nn.Module:
    """Rebuild the module saved by :func:`spectral_norm_to_bytes` (spectral norm re-applied)."""
    import io

    saved = torch.load(io.BytesIO(data), weights_only=False)
    module = apply_spectral_norm(saved["module"])
    module.load_state_dict(saved["state"])
    return module
