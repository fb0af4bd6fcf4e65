"""Batch-level image augmentation and normalisation on the device (the CIFAR training recipe).

The SAM and OT-MDR papers (and their official codes: davda54/sam ``example/data/cifar.py``,
anh-ntv/OT_MDR ``data/cifar.py``) train on CIFAR with ``RandomCrop(32, padding=4)`` (zero padding)
and ``RandomHorizontalFlip()``, then ``Normalize(mean, std)`` per channel; davda54's code adds
Cutout (a 16x16 square zeroed at a random centre, Terrance DeVries & Taylor, arXiv:1708.04552),
applied after normalisation. torchvision's transforms work one PIL image at a time in DataLoader
workers; our DataModules serve whole batches of in-memory tensors, so the same operations are
written here for a batch ``(N, C, H, W)`` already on its device, each sample with its own random
offset / flip / square drawn from a ``torch.Generator`` (so a run is reproducible from its seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by ``padding`` pixels and crop back to ``(H, W)`` at a random offset per sample
    (``torchvision.transforms.RandomCrop(size, padding=padding)`` batched)."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability ``p`` (``RandomHorizontalFlip``)."""
    flip = (torch.rand(x.shape[0], generator=generator, device=generator.device) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: Tensor, size: int, generator: torch.Generator, p: float = 1.0) -> Tensor:
    """Zero a ``size x size`` square (clipped at the border) at a random centre per sample, with
    probability ``p`` (DeVries & Taylor; davda54/sam's ``Cutout``)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator, device=generator.device).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=generator.device).to(x.device)
    apply = (torch.rand(n, generator=generator, device=generator.device) < p).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    half = size // 2
    in_rows = (ys >= (cy - half)[:, None]) & (ys < (cy - half + size)[:, None])  # (N, H)
    in_cols = (xs >= (cx - half)[:, None]) & (xs < (cx - half + size)[:, None])  # (N, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & apply[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel (``torchvision.transforms.Normalize``)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s
