"""Encoder and decoder networks of the VAE (Kingma & Welling, arXiv:1312.6114).

The encoder maps a sample ``x`` of shape ``data_shape`` to the parameters of the Gaussian posterior
``q(z | x) = N(mu(x), diag(exp(logvar(x))))``; the decoder maps a latent ``z`` to per-pixel *logits*
of the likelihood's mean (``sigmoid(logits)`` lies in ``[0, 1]``, the range of our images).

Two families:

- MLP (:class:`MLPEncoder`, :class:`MLPDecoder`): flattens any ``data_shape``; right for the 8x8
  scikit-learn digits and for vectors (e.g. latents or toy data).
- Convolutional (:class:`ConvEncoder`, :class:`ConvDecoder`): stride-2 4x4 convolutions that halve
  the side per layer, mirrored by transposed convolutions; for 28x28 (MNIST, Fashion-MNIST) and
  32x32 (CIFAR-10) images. The sides must be divisible by ``2 ** len(channels)``.

:func:`build_vae_nets` picks one from the shape (``architecture="auto"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from lightning_wass._validation import check_choice, check_int, check_shape
from lightning_wass.nn.mlp import MLP

ARCHITECTURES = ("auto", "mlp", "conv")
DEFAULT_MLP_HIDDEN = (256, 128)
DEFAULT_CONV_CHANNELS = (32, 64)
CONV_DENSE_WIDTH = 256


class MLPEncoder(nn.Module):
    """``flatten(x) -> MLP -> (mu, logvar)``, each of width ``latent_dim``."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = DEFAULT_MLP_HIDDEN) -> None:
        super().__init__()
        self.data_shape = check_shape("data_shape", data_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        self.net = MLP(math.prod(self.data_shape), 2 * latent_dim, hidden=hidden, activation="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """``z -> MLP -> logits`` reshaped to ``(N, *data_shape)``."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = DEFAULT_MLP_HIDDEN) -> None:
        super().__init__()
        self.data_shape = check_shape("data_shape", data_shape)
        check_int("latent_dim", latent_dim, minimum=1)
        hidden = check_shape("hidden", hidden, allow_empty=True)
        self.net = MLP(latent_dim, math.prod(self.data_shape), hidden=tuple(reversed(hidden)), activation="relu")

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.data_shape)


class ConvEncoder(nn.Module):
    """Stride-2 ``Conv(4x4) -> ReLU`` per entry of ``channels``, then ``Linear(256) -> ReLU -> (mu, logvar)``."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = DEFAULT_CONV_CHANNELS) -> None:
        super().__init__()
        c, h, w = _check_conv_shape(data_shape, channels, latent_dim)
        channels = check_shape("channels", channels)
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            c = width
        factor = 2 ** len(channels)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(c * (h // factor) * (w // factor), CONV_DENSE_WIDTH),
            nn.ReLU(),
            nn.Linear(CONV_DENSE_WIDTH, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: ``Linear -> reshape -> ConvTranspose(4x4, stride 2)`` per layer -> logits."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = DEFAULT_CONV_CHANNELS) -> None:
        super().__init__()
        c_out, h, w = _check_conv_shape(data_shape, channels, latent_dim)
        channels = check_shape("channels", channels)
        factor = 2 ** len(channels)
        widths = list(reversed(tuple(channels)))
        self.start_shape = (widths[0], h // factor, w // factor)
        self.dense = nn.Sequential(
            nn.Linear(latent_dim, CONV_DENSE_WIDTH),
            nn.ReLU(),
            nn.Linear(CONV_DENSE_WIDTH, math.prod(self.start_shape)),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            out = widths[i + 1] if i + 1 < len(widths) else c_out
            layers.append(nn.ConvTranspose2d(width, out, kernel_size=4, stride=2, padding=1))
            if i + 1 < len(widths):
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.dense(z).view(z.shape[0], *self.start_shape))


def _check_conv_shape(
    data_shape: Sequence[int], channels: Sequence[int], latent_dim: int, channels_name: str = "channels"
) -> tuple[int, int, int]:
    data_shape = check_shape("data_shape", data_shape)
    if len(data_shape) != 3:
        raise ValueError(f"the convolutional VAE needs data_shape (C, H, W), got {tuple(data_shape)}")
    channels = check_shape(channels_name, channels, allow_empty=True)
    if len(channels) < 1:
        raise ValueError(f"{channels_name} (the convolutional channel widths) must name at least one layer")
    check_int("latent_dim", latent_dim, minimum=1)
    c, h, w = data_shape
    factor = 2 ** len(channels)
    if h % factor or w % factor:
        raise ValueError(
            f"the convolutional VAE with {len(channels)} stride-2 layers needs H and W divisible by {factor}, "
            f"got data_shape {tuple(data_shape)}; use architecture='mlp' or fewer {channels_name} layers"
        )
    return c, h, w


def resolve_architecture(data_shape: Sequence[int], architecture: str = "auto") -> str:
    """``"conv"`` for images ``(C, H, W)`` with ``H, W >= 16`` divisible by 4 (28x28, 32x32), else ``"mlp"``."""
    check_choice("architecture", architecture, ARCHITECTURES)
    if architecture != "auto":
        return architecture
    if len(data_shape) == 3 and data_shape[1] >= 16 and data_shape[2] >= 16 and data_shape[1] % 4 == 0 and data_shape[2] % 4 == 0:
        return "conv"
    return "mlp"


def build_vae_nets(
    data_shape: Sequence[int],
    latent_dim: int,
    architecture: str = "auto",
    hidden: Sequence[int] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Return ``(encoder, decoder)`` for ``data_shape``.

    ``hidden`` is the MLP's hidden widths (default ``(256, 128)``, mirrored in the decoder) or the
    convolutional channel widths (default ``(32, 64)``, one stride-2 layer each).
    """
    data_shape = check_shape("data_shape", data_shape)
    check_int("latent_dim", latent_dim, minimum=1)
    kind = resolve_architecture(data_shape, architecture)
    if kind == "conv":
        channels = DEFAULT_CONV_CHANNELS if hidden is None else hidden
        _check_conv_shape(data_shape, channels, latent_dim, channels_name="hidden")
        return ConvEncoder(data_shape, latent_dim, channels), ConvDecoder(data_shape, latent_dim, channels)
    widths = check_shape("hidden", DEFAULT_MLP_HIDDEN if hidden is None else hidden, allow_empty=True)
    return MLPEncoder(data_shape, latent_dim, widths), MLPDecoder(data_shape, latent_dim, widths)
