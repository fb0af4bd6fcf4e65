"""Mean-field Gaussian Bayesian layers (Bayes by Backprop) for OT-MDR's BNN setting.

Blundell et al., "Weight Uncertainty in Neural Networks", arXiv:1505.05424; used as the centre
distribution of OT-MDR (arXiv:2306.04178, section "Bayesian neural networks"). Every weight has a
Gaussian posterior ``q(w) = N(mu, sigma^2)`` with ``sigma = softplus(rho)``; a forward pass draws
``w = mu + sigma * eps``, ``eps ~ N(0, 1)`` (the reparameterisation trick). The prior is
``N(0, prior_sigma^2)``, and the KL term of the ELBO has the closed form

    KL(q || p) = sum [ log(prior_sigma / sigma) + (sigma^2 + mu^2) / (2 prior_sigma^2) - 1/2 ].

Defaults follow the official OT-MDR code: prior sigma 0.1, ``mu ~ N(0, 0.1)``, ``rho ~ N(-5, 0.1)``
(``sigma`` about 0.007). The parameters are named ``*_mu`` and ``*_rho`` (the BNN literature's
``rho``, unrelated to OT-MDR's radius); :func:`bayesian_parameter_groups` splits them so that the
optimizer can perturb the means only, or the sigmas too.

torch.nn has no Bayesian layers and torch.distributions none that sample per forward pass, hence
these small classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_wass._validation import check_int, check_module, check_number, check_positive
from lightning_wass.seeding import mix_seed, seeded_generator


class BayesianModule(nn.Module):
    """Base of the Bayesian layers: Gaussian parameters ``<name>_mu``, ``<name>_rho`` and their KL.

    Attributes:
        sampling: draw weights in eval mode too (Monte-Carlo prediction; the default). In training
            mode weights are always drawn. :func:`use_posterior_mean` switches it off.
    """

    def __init__(self, prior_sigma: float = 0.1, init_mu_std: float = 0.1, init_rho: float = -5.0, init_rho_std: float = 0.1) -> None:
        super().__init__()
        self.prior_sigma = check_positive("prior_sigma", prior_sigma)
        self.init_mu_std = check_positive("init_mu_std", init_mu_std, allow_zero=True)
        self.init_rho = check_number("init_rho", init_rho)
        self.init_rho_std = check_positive("init_rho_std", init_rho_std, allow_zero=True)
        self.sampling = True
        self.noise_seed: int | None = None
        self._names: list[str] = []

    def _register_gaussian(self, name: str, shape: tuple[int, ...]) -> None:
        self.register_parameter(f"{name}_mu", nn.Parameter(torch.empty(shape)))
        self.register_parameter(f"{name}_rho", nn.Parameter(torch.empty(shape)))
        self._names.append(name)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for name in self._names:
                getattr(self, f"{name}_mu").normal_(0.0, self.init_mu_std)
                getattr(self, f"{name}_rho").normal_(self.init_rho, self.init_rho_std)

    def sigma(self, name: str) -> Tensor:
        """``softplus(rho)`` of parameter ``name`` (``"weight"`` or ``"bias"``)."""
        return F.softplus(getattr(self, f"{name}_rho"))

    def draw(self, name: str, offset: int = 0) -> Tensor:
        """A weight sample ``mu + sigma * eps`` (the mean when not sampling)."""
        mu = getattr(self, f"{name}_mu")
        if not (self.training or self.sampling):
            return mu
        if self.noise_seed is None:
            eps = torch.randn_like(mu)
        else:
            generator = seeded_generator(mu.device, self.noise_seed, offset)
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + self.sigma(name) * eps

    def kl_divergence(self) -> Tensor:
        """``KL(q || N(0, prior_sigma^2))`` summed over this layer's weights (closed form)."""
        total = torch.zeros((), device=getattr(self, f"{self._names[0]}_mu").device)
        for name in self._names:
            mu, sigma = getattr(self, f"{name}_mu"), self.sigma(name)
            s = self.prior_sigma
            total = total + (math.log(s) - torch.log(sigma) + (sigma.square() + mu.square()) / (2 * s * s) - 0.5).sum()
        return total


class BayesLinear(BayesianModule):
    """Bayesian ``nn.Linear``: ``y = x W^T + b`` with ``W, b`` drawn from their Gaussian posteriors.

    Args:
        in_features, out_features, bias: as in ``nn.Linear``.
        prior_sigma, init_mu_std, init_rho, init_rho_std: prior scale and initialisation (see module docstring).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        self._register_gaussian("weight", (out_features, in_features))
        if bias:
            self._register_gaussian("bias", (out_features,))
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        bias = self.draw("bias", 1) if "bias" in self._names else None
        return F.linear(x, self.draw("weight"), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prior_sigma={self.prior_sigma}"


class BayesConv2d(BayesianModule):
    """Bayesian ``nn.Conv2d`` (weights and bias drawn from their Gaussian posteriors per forward pass).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as in ``nn.Conv2d``.
        prior_sigma, init_mu_std, init_rho, init_rho_std: as in :class:`BayesLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.out_channels = check_int("out_channels", out_channels, minimum=1)
        self.kernel_size = check_int("kernel_size", kernel_size, minimum=1)
        self.stride = check_int("stride", stride, minimum=1)
        self.padding = check_int("padding", padding, minimum=0)
        self.dilation = check_int("dilation", dilation, minimum=1)
        self.groups = check_int("groups", groups, minimum=1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self._register_gaussian("weight", (out_channels, in_channels // groups, kernel_size, kernel_size))
        if bias:
            self._register_gaussian("bias", (out_channels,))
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        bias = self.draw("bias", 1) if "bias" in self._names else None
        return F.conv2d(x, self.draw("weight"), bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, prior_sigma={self.prior_sigma}"
        )


def bayesian_layers(module: nn.Module) -> list[BayesianModule]:
    """The Bayesian layers inside ``module`` (in ``module.modules()`` order)."""
    check_module("module", module)
    return [m for m in module.modules() if isinstance(m, BayesianModule)]


def is_bayesian(module: nn.Module) -> bool:
    """Whether ``module`` contains at least one Bayesian layer."""
    return bool(bayesian_layers(module))


def kl_divergence(module: nn.Module) -> Tensor:
    """Sum of the KL terms of every Bayesian layer in ``module`` (0 if there is none)."""
    layers = bayesian_layers(module)
    if not layers:
        first = next(module.parameters(), None)
        return torch.zeros((), device=None if first is None else first.device)
    return torch.stack([layer.kl_divergence() for layer in layers]).sum()


def bayesian_parameter_groups(module: nn.Module, perturb_sigma: bool = False) -> list[dict[str, Any]]:
    """Parameter groups for :class:`~lightning_wass.optim.OTMDR`: the ``*_rho`` (sigma) parameters of
    the Bayesian layers in a group with ``perturb=perturb_sigma``, everything else (means and ordinary
    layers) in a perturbed group. Groups without parameters are left out."""
    sigma_ids = {id(getattr(layer, f"{n}_rho")) for layer in bayesian_layers(module) for n in layer._names}
    means = [p for p in module.parameters() if id(p) not in sigma_ids]
    sigmas = [p for p in module.parameters() if id(p) in sigma_ids]
    groups: list[dict[str, Any]] = []
    if means:
        groups.append({"params": means})
    if sigmas:
        groups.append({"params": sigmas, "perturb": bool(perturb_sigma)})
    return groups


@contextmanager
def shared_noise(module: nn.Module, seed: int) -> Iterator[None]:
    """Inside the block every Bayesian layer draws its ``eps`` from a generator seeded by ``seed``
    (and its position), so repeated forward passes use the same weight noise: the common random
    numbers that keep the loss surface fixed across the passes of one OT-MDR / SAM step (the
    official code's ``reuse_eps``)."""
    check_int("seed", seed)
    layers = bayesian_layers(module)
    previous = [layer.noise_seed for layer in layers]
    try:
        for i, layer in enumerate(layers):
            layer.noise_seed = mix_seed(seed, i)
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.noise_seed = value


@contextmanager
def use_posterior_mean(module: nn.Module) -> Iterator[None]:
    """Inside the block Bayesian layers in eval mode use their means instead of sampling."""
    layers = bayesian_layers(module)
    previous = [layer.sampling for layer in layers]
    try:
        for layer in layers:
            layer.sampling = False
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.sampling = value
