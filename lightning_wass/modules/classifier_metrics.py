"""Metrics of the classifier module: accuracy, NLL, ECE and Brier of predicted probabilities, the
pairwise disagreement of ensemble members, and temperature scaling.

The OT-MDR paper reports, for ensembles, the members' diversity and the calibration after
temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
arXiv:1706.04599): one temperature ``T > 0`` fitted on the validation split by minimising the NLL
of ``softmax(log p / T)``, then the test ECE / NLL of the tempered probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError


class _Brier(MeanMetric):
    """Mean over samples of ``sum_c (p_c - 1[c = y])^2`` (torchmetrics has no multiclass Brier score)."""

    def update(self, probs: Tensor, target: Tensor) -> None:  # type: ignore[override]
        onehot = F.one_hot(target, probs.shape[-1]).to(probs.dtype)
        super().update((probs - onehot).square().sum(-1))


class _NLL(MeanMetric):
    """Mean negative log-likelihood ``-log p_y`` of predicted probabilities."""

    def update(self, probs: Tensor, target: Tensor) -> None:  # type: ignore[override]
        p = probs.gather(-1, target[:, None]).squeeze(-1)
        super().update(-torch.log(p.clamp_min(1e-12)))


def classifier_metrics(num_classes: int, ece_bins: int, prefix: str) -> MetricCollection:
    """Accuracy, NLL, ECE (L1, ``ece_bins`` bins) and Brier score of predicted probabilities."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "nll": _NLL(),
            "ece": MulticlassCalibrationError(num_classes=num_classes, n_bins=ece_bins, norm="l1"),
            "brier": _Brier(),
        },
        prefix=prefix,
    )


def calibration_metrics(num_classes: int, ece_bins: int, prefix: str, suffix: str) -> MetricCollection:
    """ECE and NLL only (for the temperature-scaled probabilities), named ``<prefix>ece<suffix>``."""
    return MetricCollection(
        {
            f"ece{suffix}": MulticlassCalibrationError(num_classes=num_classes, n_bins=ece_bins, norm="l1"),
            f"nll{suffix}": _NLL(),
        },
        prefix=prefix,
    )


class PairwiseDisagreement(MeanMetric):
    """Ensemble diversity: the fraction of samples on which two members predict different classes,
    averaged over the ``M (M - 1) / 2`` pairs (the OT-MDR paper's disagreement).

    ``update(member_probs)`` takes ``(M, N, K)`` per-member probabilities (``M >= 2``).
    """

    def update(self, member_probs: Tensor) -> None:  # type: ignore[override]
        members = member_probs.shape[0]
        if members < 2:
            raise ValueError(f"PairwiseDisagreement needs at least two members, got {members}")
        labels = member_probs.argmax(-1)  # (M, N)
        i, j = torch.triu_indices(members, members, offset=1)
        super().update((labels[i] != labels[j]).float().mean(0))  # (N,): the mean over pairs per sample


def tempered(log_probs: Tensor, temperature: Tensor | float) -> Tensor:
    """``softmax(log p / T)``: probabilities tempered by ``T`` (``T > 1`` softens, ``T < 1`` sharpens)."""
    return torch.softmax(log_probs / temperature, dim=-1)


def fit_temperature(log_probs: Tensor, target: Tensor, steps: int = 100) -> Tensor:
    """The temperature ``T`` minimising ``NLL(softmax(log_probs / T), target)`` (L-BFGS on ``log T``).

    Returns a 0-d tensor; ``1`` for an empty set.
    """
    if log_probs.numel() == 0:
        return torch.ones((), device=log_probs.device)
    log_probs = log_probs.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, device=log_probs.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_probs / log_t.exp(), target)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return log_t.detach().exp().float()
