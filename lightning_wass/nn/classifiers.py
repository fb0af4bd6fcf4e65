"""Classifier networks for OT-MDR: small MLP/CNN (digits, MNIST), a Wide ResNet (CIFAR), their
Bayesian versions, and an ensemble wrapper.

Every network maps images ``(N, C, H, W)`` (or flat ``(N, D)`` for the MLPs) to logits ``(N, K)``.
The Wide ResNet is WRN-d-k of Zagoruyko and Komodakis (arXiv:1605.07146), the architecture of the
OT-MDR and SAM CIFAR experiments (WRN-28-10); torchvision has no WRN for 32x32 inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_wass._validation import check_fraction, check_int, check_shape
from lightning_wass.nn.bayesian import BayesConv2d, BayesLinear
from lightning_wass.nn.mlp import MLP


def _flat_size(in_shape: int | Sequence[int]) -> int:
    if isinstance(in_shape, int):
        return check_int("in_shape", in_shape, minimum=1)
    size = 1
    for d in check_shape("in_shape", in_shape):
        size *= d
    return size


class MLPClassifier(nn.Module):
    """Flatten, then :class:`~lightning_wass.nn.MLP` (ReLU) to ``num_classes`` logits.

    Args:
        in_shape: shape of one input (``[1, 8, 8]`` for digits) or its flat size.
        num_classes: number of classes.
        hidden: hidden widths.
    """

    def __init__(self, in_shape: int | Sequence[int] = (1, 8, 8), num_classes: int = 10, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.net = MLP(_flat_size(in_shape), check_int("num_classes", num_classes, minimum=2), hidden=hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


def _conv_block(c_in: int, c_out: int, stride: int, bayesian: bool, batch_norm: bool, prior_sigma: float) -> list[nn.Module]:
    if bayesian:
        conv: nn.Module = BayesConv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm, prior_sigma=prior_sigma)
    else:
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
    return [conv, nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(), nn.ReLU(inplace=True)]


class ConvClassifier(nn.Module):
    """A small CNN: ``conv(w) - conv(2w, stride 2) - conv(2w) - global average pool - linear``.

    Each conv is 3x3 followed by BatchNorm (``batch_norm=True``) and ReLU. Works for any image size
    (8x8 digits, 28x28 MNIST, 32x32 CIFAR).

    Args:
        in_channels: image channels.
        num_classes: number of classes.
        width: channels of the first conv (the others have ``2 * width``).
        batch_norm: use BatchNorm after every conv.
    """

    bayesian = False

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, batch_norm: bool = True, prior_sigma: float = 0.1) -> None:
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=2)
        check_int("width", width, minimum=1)
        layers = (
            _conv_block(in_channels, width, 1, self.bayesian, batch_norm, prior_sigma)
            + _conv_block(width, 2 * width, 2, self.bayesian, batch_norm, prior_sigma)
            + _conv_block(2 * width, 2 * width, 1, self.bayesian, batch_norm, prior_sigma)
        )
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head: nn.Module = BayesLinear(2 * width, num_classes, prior_sigma=prior_sigma) if self.bayesian else nn.Linear(2 * width, num_classes)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects images x of shape (N, C, H, W), got {tuple(x.shape)}")
        return self.head(self.features(x))


class BayesianConvClassifier(ConvClassifier):
    """:class:`ConvClassifier` with every conv and the head replaced by mean-field Gaussian layers
    (:class:`~lightning_wass.nn.BayesConv2d`, :class:`~lightning_wass.nn.BayesLinear`) with prior
    ``N(0, prior_sigma^2)``."""

    bayesian = True


class BayesianMLPClassifier(nn.Module):
    """Flatten, then ``BayesLinear - ReLU - ... - BayesLinear`` to ``num_classes`` logits.

    Args:
        in_shape: shape of one input or its flat size.
        num_classes: number of classes.
        hidden: hidden widths.
        prior_sigma: the prior scale of every weight.
    """

    def __init__(self, in_shape: int | Sequence[int] = (1, 8, 8), num_classes: int = 10, hidden: Sequence[int] = (128, 128), prior_sigma: float = 0.1) -> None:
        super().__init__()
        widths = [_flat_size(in_shape), *check_shape("hidden", hidden, allow_empty=True), check_int("num_classes", num_classes, minimum=2)]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(BayesLinear(widths[i], widths[i + 1], prior_sigma=prior_sigma))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class _WideBasic(nn.Module):
    """Pre-activation wide residual block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = None if (stride == 1 and c_in == c_out) else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` (arXiv:1605.07146) for 32x32 images.

    Args:
        depth: ``6 n + 4`` (28 in the paper's WRN-28-10).
        widen_factor: channel multiplier ``k`` (10 in WRN-28-10).
        num_classes: number of classes.
        dropout: dropout inside the blocks (0 in the SAM / OT-MDR CIFAR runs).
        in_channels: image channels.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        check_int("depth", depth, minimum=10)
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
        check_int("widen_factor", widen_factor, minimum=1)
        check_fraction("dropout", dropout)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(check_int("in_channels", in_channels, minimum=1), widths[0], 3, padding=1, bias=False)]
        c_in = widths[0]
        for stage, c_out in enumerate(widths[1:]):
            for i in range(n):
                layers.append(_WideBasic(c_in, c_out, stride=(1 if stage == 0 or i > 0 else 2), dropout=dropout))
                c_in = c_out
        layers += [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, check_int("num_classes", num_classes, minimum=2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def reinitialised_copy(network: nn.Module) -> nn.Module:
    """A deep copy of ``network`` with every parameter re-initialised (from the global RNG), e.g. a
    new ensemble member.

    Sub-modules with ``reset_parameters`` (every torch layer) re-initialise themselves. A parameter
    registered directly on a module without it (``self.scale = nn.Parameter(...)``) has no known
    initialiser, so it is redrawn from a normal distribution with its own mean and standard
    deviation; a constant one (a scale initialised to 1) keeps its value, which is its
    initialisation.
    """
    member = copy.deepcopy(network)
    for module in member.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            continue
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                if p.numel() > 1 and float(p.std()) > 0:
                    p.normal_(float(p.mean()), float(p.std()))
    return member


class Ensemble(nn.Module):
    """``M`` networks evaluated together: ``forward(x)`` returns stacked logits ``(M, N, K)``.

    The OT-MDR ensemble setting (a uniform centre distribution over M models) trains them with one
    optimizer, so all members are perturbed together with one global gradient norm, on the mixture
    likelihood ``log mean_m softmax(f_m(x))``.

    Args:
        members: the networks (at least one).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not isinstance(members, (Sequence, nn.ModuleList)):
            raise TypeError(f"members must be a list of torch.nn.Module networks, got {type(members).__name__}")
        if len(members) < 1:
            raise ValueError("Ensemble needs at least one network in members")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(f"members[{i}] must be a torch.nn.Module, got {type(member).__name__}")
        self.members = nn.ModuleList(members)

    @classmethod
    def from_network(cls, network: nn.Module, size: int) -> Ensemble:
        """``network`` plus ``size - 1`` re-initialised copies."""
        check_int("size", size, minimum=1)
        return cls([network] + [reinitialised_copy(network) for _ in range(size - 1)])

    @classmethod
    def build(cls, network: nn.Module | Sequence[nn.Module], size: int = 1) -> Ensemble:
        """The ensemble a classifier trains: an :class:`Ensemble` as it is, a list of (possibly
        different) networks, or one network plus ``size - 1`` re-initialised copies.

        ``size`` must be 1 or the number of members for the first two forms.
        """
        check_int("ensemble_size", size, minimum=1)
        if isinstance(network, Ensemble):
            members = list(network.members)
        elif isinstance(network, (list, tuple)):
            members = list(network)
        elif isinstance(network, nn.Module):
            return cls.from_network(network, size)
        else:
            raise TypeError(f"network must be a torch.nn.Module, a list of them or an Ensemble, got {type(network).__name__}")
        if not members:
            raise ValueError("network must hold at least one member network")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(f"network[{i}] must be a torch.nn.Module, got {type(member).__name__}")
        if size not in (1, len(members)):
            raise ValueError(f"ensemble_size={size} but network holds {len(members)} members; leave ensemble_size at 1")
        if len({id(m) for m in members}) != len(members):
            raise ValueError("network lists the same module more than once: ensemble members must be distinct networks")
        return network if isinstance(network, Ensemble) else cls(members)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members])
