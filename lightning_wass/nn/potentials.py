"""Time-conditioned potentials ``U(x, t)`` and discriminators for W1 (+) W2 proximal flows.

Following the official code of arXiv:2407.11901: vectors go through an MLP on ``[x, t]``; images go
through a small convolutional trunk (``k x k`` convolutions with ``k = min(H, W, 7)``, "same"
padding, no bias, then ``2 x 2`` max-pooling, per layer) whose flattened output is concatenated
with ``t`` and fed to an MLP. The discriminator ``phi(x)`` uses the same trunk with its own weights
and no time input.

:class:`OfficialConvPotential` and :class:`OfficialConvDiscriminator` are the MNIST networks of the
official ``POT_Flow_GAN_CNN.py`` reproduced layer by layer, with its weight layout (so the official
``result.pickle`` weights load into them, :meth:`OfficialConvPotential.load_official_weights`), its
feature order and its initialisation (:func:`official_init_`). :class:`ConvPotential` /
:class:`ConvDiscriminator` have the same layers and parameter counts but PyTorch's feature order and
initialisation (see :class:`OfficialConvPotential` for the list of differences).

Every potential takes ``x`` of shape ``(N, *data_shape)`` and ``t`` of shape ``(N,)`` (or a number)
and returns ``(N,)``; every discriminator returns ``(N,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_wass._validation import check_choice, check_int, check_module, check_shape
from lightning_wass.nn.mlp import ACTIVATIONS, MLP

__all__ = [
    "ConvDiscriminator",
    "ConvPotential",
    "ConvTrunk",
    "MLPDiscriminator",
    "OfficialConvDiscriminator",
    "OfficialConvPotential",
    "PotentialMLP",
    "official_init_",
]


def _time_column(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as a ``(N, 1)`` column on ``x``'s device and dtype."""
    n = x.shape[0]
    if not isinstance(t, Tensor):
        return torch.full((n, 1), float(t), device=x.device, dtype=x.dtype)
    if t.numel() == 1:
        return t.reshape(1, 1).to(x.dtype).expand(n, 1)
    if t.numel() != n:
        raise ValueError(f"t must hold one time per sample ({n}) or a single time, got shape {tuple(t.shape)}")
    return t.reshape(n, 1).to(x.dtype)


def _image_shape(data_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = check_shape("data_shape", data_shape)
    if len(shape) != 3:
        raise ValueError(f"data_shape must be (C, H, W) with positive sizes for a convolutional net, got {data_shape!r}")
    return shape  # type: ignore[return-value]


class PotentialMLP(nn.Module):
    """``U(x, t) = MLP([flatten(x), t])``, a scalar per sample.

    Args:
        in_features: number of features of ``x`` (``prod(data_shape)``; ``x`` is flattened).
        hidden: hidden widths (official 2-D runs: 4 x 128; 3 x 512 on MNIST).
        activation: a smooth activation by default (``"tanh"``, as the official 2-D potential), so
            that the velocity ``-grad U`` is continuous in ``x``.
        zero_init_last: start from ``U = 0`` (the flow starts as the identity map).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "tanh",
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.mlp = MLP(in_features + 1, 1, hidden=hidden, activation=activation, zero_init_last=zero_init_last)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"PotentialMLP expects {self.in_features} features, got x of shape {tuple(x.shape)}")
        return self.mlp(torch.cat([flat, _time_column(t, flat)], dim=1)).squeeze(1)


class MLPDiscriminator(nn.Module):
    """``phi(x) = MLP(flatten(x))``, a scalar per sample (official: ReLU, 3 x 128 in 2-D)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (128, 128, 128), activation: str = "relu") -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.mlp = MLP(in_features, 1, hidden=hidden, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"MLPDiscriminator expects {self.in_features} features, got x of shape {tuple(x.shape)}")
        return self.mlp(flat).squeeze(1)


class ConvTrunk(nn.Module):
    """``[conv k x k (same, no bias) -> act -> maxpool 2 x 2 (ceil)] x len(channels)``, then flatten.

    ``k = min(H, W, 7)`` as in the official code; an ``H x W`` input leaves
    ``ceil(H / 2^l) x ceil(W / 2^l)`` maps (MNIST with ``channels=(8, 8)``: ``8 x 7 x 7 = 392`` features).
    """

    def __init__(self, data_shape: Sequence[int], channels: Sequence[int] = (8, 8), activation: str = "relu") -> None:
        super().__init__()
        c, h, w = _image_shape(data_shape)
        check_choice("activation", activation, ACTIVATIONS)
        channels = check_shape("channels", channels, allow_empty=True)
        if len(channels) == 0:
            raise ValueError("channels must list at least one convolutional layer")
        k = min(h, w, 7)
        before, after = (k - 1) // 2, k - 1 - (k - 1) // 2  # TensorFlow's "same" padding
        layers: list[nn.Module] = []
        previous = c
        for width in channels:
            layers += [
                nn.ZeroPad2d((before, after, before, after)),
                nn.Conv2d(previous, width, k, bias=False),
                ACTIVATIONS[activation](),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            previous = width
            h, w = (h + 1) // 2, (w + 1) // 2
        self.net = nn.Sequential(*layers)
        self.data_shape = _image_shape(data_shape)
        self.out_features = previous * h * w

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"ConvTrunk expects images of shape {self.data_shape}, got {tuple(x.shape)}")
        return self.net(x).flatten(1)


class ConvPotential(nn.Module):
    """``U(x, t) = MLP([ConvTrunk(x), t])`` (official MNIST: channels (8, 8), hidden 3 x 512, ReLU)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: Sequence[int] = (8, 8),
        hidden: Sequence[int] = (512, 512, 512),
        activation: str = "relu",
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = ConvTrunk(data_shape, channels, activation)
        self.mlp = MLP(self.trunk.out_features + 1, 1, hidden=hidden, activation=activation, zero_init_last=zero_init_last)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        features = self.trunk(x)
        return self.mlp(torch.cat([features, _time_column(t, features)], dim=1)).squeeze(1)


class ConvDiscriminator(nn.Module):
    """``phi(x) = MLP(ConvTrunk(x))`` (official MNIST: channels (8, 8), hidden 3 x 256, ReLU)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: Sequence[int] = (8, 8),
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.trunk = ConvTrunk(data_shape, channels, activation)
        self.mlp = MLP(self.trunk.out_features, 1, hidden=hidden, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.trunk(x)).squeeze(1)


# ----------------------------------------------------------------------------- the official MNIST nets
_TRUNCATED_NORMAL_STD = 0.87962566103423978
"""Standard deviation of a unit normal truncated to ``[-2, 2]`` (TensorFlow's ``VarianceScaling``
divides by it so that the truncated draw has the intended variance)."""


@torch.no_grad()
def official_init_(module: nn.Module) -> nn.Module:
    """Initialise as the official code does (TF ``glorot_normal`` weights, zero biases), in place.

    Every ``nn.Linear`` / ``nn.Conv2d`` weight is drawn from a normal with standard deviation
    ``sqrt(2 / (fan_in + fan_out)) / 0.8796`` truncated at two standard deviations (TensorFlow's
    ``VarianceScaling(scale=1, mode="fan_avg", distribution="truncated_normal")``; for a
    ``k x k`` convolution ``fan_in = k^2 c_in`` and ``fan_out = k^2 c_out``); every bias is zero.
    Uses the global torch RNG. Returns ``module``.
    """
    check_module("module", module)
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            receptive = int(np.prod(layer.weight.shape[2:])) if layer.weight.dim() > 2 else 1
            fan_out, fan_in = layer.weight.shape[0] * receptive, layer.weight.shape[1] * receptive
            std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def _official_features(trunk: ConvTrunk, x: Tensor) -> Tensor:
    """The trunk's maps flattened in the official order: TensorFlow's NHWC maps go through
    ``transpose(perm=[3, 2, 1, 0])`` and ``reshape(-1, N)``, so feature ``c W H + w H + h`` is
    channel ``c`` at column ``w``, row ``h`` (PyTorch's ``flatten`` would give ``c H W + h W + w``)."""
    if tuple(x.shape[1:]) != trunk.data_shape:
        raise ValueError(f"expected images of shape {trunk.data_shape}, got {tuple(x.shape)}")
    return trunk.net(x).transpose(2, 3).flatten(1)


def _load_official(module: nn.Module, trunk: ConvTrunk, mlp: MLP, conv_w: Sequence[Any], w: Sequence[Any], b: Sequence[Any]) -> None:
    convs = [m for m in trunk.net if isinstance(m, nn.Conv2d)]
    linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
    if len(conv_w) != len(convs) or len(w) != len(linears) or len(b) != len(linears):
        raise ValueError(
            f"{type(module).__name__} has {len(convs)} conv and {len(linears)} dense layers; got "
            f"{len(conv_w)} conv kernels, {len(w)} dense weights and {len(b)} biases"
        )
    param = next(module.parameters())
    with torch.no_grad():
        for layer, kernel in zip(convs, conv_w):
            value = torch.as_tensor(np.asarray(kernel)).permute(3, 2, 0, 1)  # (k, k, in, out) -> (out, in, k, k)
            if value.shape != layer.weight.shape:
                raise ValueError(f"conv kernel of shape {tuple(np.shape(kernel))} does not fit {tuple(layer.weight.shape)}")
            layer.weight.copy_(value.to(param))
        for layer, weight, bias in zip(linears, w, b):
            value = torch.as_tensor(np.asarray(weight)).T  # (in, out) -> (out, in)
            if value.shape != layer.weight.shape:
                raise ValueError(f"dense weight of shape {tuple(np.shape(weight))} does not fit {tuple(layer.weight.shape)}")
            layer.weight.copy_(value.to(param))
            layer.bias.copy_(torch.as_tensor(np.asarray(bias)).reshape(-1).to(param))


class OfficialConvPotential(nn.Module):
    """The official MNIST potential ``U(x, t)`` of arXiv:2407.11901 (``fun_U`` in
    ``POT_Flow_GAN_CNN.py``), layer by layer:

    - per entry of ``channels`` (official ``--conv_layer_channels 8 8``): a ``k x k`` convolution,
      ``k = min(H, W, 7)``, stride 1, "same" zero padding, **no bias**; ReLU; ``2 x 2`` max-pooling
      with stride 2 and "same" padding (MNIST: ``28 -> 14 -> 7``);
    - the maps flattened in the official (channel, column, row) order, then ``t`` appended as the
      last feature (MNIST: ``8 * 7 * 7 + 1 = 393`` inputs); time enters only here, not the convolutions;
    - an MLP ``393 -> 512 -> 512 -> 512 -> 1`` with ReLU (official ``--gen_dims 512 512 512``) and a
      linear scalar output;
    - :func:`official_init_` (TF ``glorot_normal`` weights, zero biases), unless
      ``official_init=False`` (PyTorch defaults).

    731,081 parameters on MNIST (``7*7*1*8 + 7*7*8*8 + 393*512 + 512 + 2 (512*512 + 512) + 512 + 1``),
    as many as the official ``G_conv_W, G_W, G_b``.

    Differences from :class:`ConvPotential` (same layers, same parameter count): the feature order
    (a fixed permutation of the first dense layer's inputs, so the two families of functions are
    the same; it matters only for loading official weights), the initialisation (PyTorch's
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` weights and biases there) and ``zero_init_last`` (on
    by default in :func:`~lightning_wass.modules.proximal_flow.default_potential`; the official
    ``U`` is not zero at the start).
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (8, 8),
        hidden: Sequence[int] = (512, 512, 512),
        official_init: bool = True,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = ConvTrunk(data_shape, channels, "relu")
        self.mlp = MLP(self.trunk.out_features + 1, 1, hidden=hidden, activation="relu")
        if official_init:
            official_init_(self)
        if zero_init_last:
            last = self.mlp.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        features = _official_features(self.trunk, x)
        return self.mlp(torch.cat([features, _time_column(t, features)], dim=1)).squeeze(1)

    def load_official_weights(self, conv_w: Sequence[Any], w: Sequence[Any], b: Sequence[Any]) -> "OfficialConvPotential":
        """Copy the official arrays in: ``G_conv_W`` (kernels ``(k, k, c_in, c_out)``), ``G_W``
        (``(in, out)``) and ``G_b`` (``(1, out)``), as stored in the official ``result.pickle``
        (items 0-2: ``G_W, G_b, G_conv_W``). Returns ``self``."""
        _load_official(self, self.trunk, self.mlp, conv_w, w, b)
        return self


class OfficialConvDiscriminator(nn.Module):
    """The official MNIST discriminator ``phi(x)`` (``discriminator`` in ``POT_Flow_GAN_CNN.py``):
    the same trunk as :class:`OfficialConvPotential` with its own weights (conv ``k x k`` same, no
    bias, ReLU, max-pool ``2 x 2`` per channel entry), the maps flattened in the official order
    (MNIST: 392 features), no time input, and an MLP ``392 -> 256 -> 256 -> 256 -> 1`` with ReLU
    (official ``--disc_dims 256 256 256``); :func:`official_init_` by default.

    235,977 parameters on MNIST (``7*7*1*8 + 7*7*8*8 + 392*256 + 256 + 2 (256*256 + 256) + 256 + 1``).
    Differences from :class:`ConvDiscriminator`: feature order and initialisation only.
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (8, 8),
        hidden: Sequence[int] = (256, 256, 256),
        official_init: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = ConvTrunk(data_shape, channels, "relu")
        self.mlp = MLP(self.trunk.out_features, 1, hidden=hidden, activation="relu")
        if official_init:
            official_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(_official_features(self.trunk, x)).squeeze(1)

    def load_official_weights(self, conv_w: Sequence[Any], w: Sequence[Any], b: Sequence[Any]) -> "OfficialConvDiscriminator":
        """Copy the official ``D_conv_W``, ``D_W``, ``D_b`` in (``result.pickle`` items 5, 3, 4).
        Returns ``self``."""
        _load_official(self, self.trunk, self.mlp, conv_w, w, b)
        return self
