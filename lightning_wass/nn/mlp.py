"""Multi-layer perceptron used as the default network of the vector-data methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_wass._validation import check_choice, check_int, check_shape

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


class MLP(nn.Module):
    """``Linear -> act -> ... -> Linear`` on inputs of shape ``(N, in_features)``.

    Args:
        in_features: input width.
        out_features: output width.
        hidden: widths of the hidden layers (empty = one linear layer).
        activation: one of :data:`ACTIVATIONS`.
        zero_init_last: initialise the last layer to zero (the network starts as the zero map,
            so ``x + MLP(x)`` starts as the identity).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_features", in_features, minimum=1)
        check_int("out_features", out_features, minimum=1)
        check_choice("activation", activation, ACTIVATIONS)
        widths = [in_features, *check_shape("hidden", hidden, allow_empty=True), out_features]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = out_features
        if zero_init_last:
            last = self.net[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        return self.net(x)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
