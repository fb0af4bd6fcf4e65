"""Reference distributions ``rho_0`` the flow starts from.

``"normal"``: ``N(0, I)`` (the paper's 2-D experiments). ``"uniform"``: independent
``U[low, high]`` coordinates (the official MNIST run starts from ``U[0, 0.5]^784``;
arXiv:2407.11901).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_wass._validation import check_int, check_number, check_shape

REFERENCES: tuple[str, ...] = ("normal", "uniform")

__all__ = ["REFERENCES", "check_reference_range", "sample_reference"]


def check_reference_range(value: Sequence[float]) -> tuple[float, float]:
    """Return ``(low, high)`` as floats if ``low < high`` are finite; else ``ValueError``."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"reference_range must be a pair (low, high) of numbers, got {value!r}") from None
    if not (torch.isfinite(torch.tensor([low, high])).all() and low < high):
        raise ValueError(f"reference_range must satisfy low < high (both finite), got {value!r}")
    return low, high


def sample_reference(
    kind: str,
    n: int,
    shape: Sequence[int],
    *,
    low: float = 0.0,
    high: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` samples of shape ``(n, *shape)`` from the reference ``kind`` (one of :data:`REFERENCES`).

    ``generator`` must live on ``device`` (or be ``None`` for torch's global generator).
    """
    if not isinstance(kind, str) or kind not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(repr(r) for r in REFERENCES)}; got kind={kind!r}")
    n = check_int("n", n, minimum=1)
    size = (n, *check_shape("shape", shape, allow_empty=True))
    low, high = check_number("low", low), check_number("high", high)
    if not low < high:
        raise ValueError(f"low must be below high for the uniform reference, got low={low} and high={high}")
    if kind == "normal":
        return torch.randn(size, generator=generator, device=device, dtype=dtype)
    return low + (high - low) * torch.rand(size, generator=generator, device=device, dtype=dtype)
