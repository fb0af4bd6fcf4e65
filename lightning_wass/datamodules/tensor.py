"""DataModule for data a user already holds in memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_wass._validation import check_tensor
from lightning_wass.datamodules.base import InMemoryDataModule, is_class_labels


def as_tensor(name: str, value: Any) -> Tensor:
    """Convert an array-like to a tensor (floats to float32), with a clear error otherwise."""
    if isinstance(value, Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, (np.ndarray, list, tuple)):
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must hold numbers (a numeric array), could not convert it: {error}") from None
    else:
        raise TypeError(f"{name} must be a tensor, numpy array or list, got {type(value).__name__}")
    if tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.ndim == 0:
        raise ValueError(f"{name} must have a leading sample dimension, got a scalar")
    # bool / complex data, no sample, NaN or Inf: refused here, naming the argument
    return check_tensor(name, tensor, item="sample", hint="clean the data first")


class TensorDataModule(InMemoryDataModule):
    """Serve in-memory ``x`` (and optional targets ``y``) with a validation split and indices.

    Args:
        x: features, shape ``(N, ...)``.
        y: optional targets, shape ``(N,)`` or ``(N, ...)``: long class labels or float values.
        x_test, y_test: an optional separate test set; without it ``test_fraction`` of ``x`` is
            held out as the test split (stratified by class for long labels ``y``).
        **kwargs: the common arguments of :class:`InMemoryDataModule` (``batch_size``,
            ``num_workers``, ``val_fraction``, ``test_fraction``, ``num_samples``, ``seed``,
            ``return_index``, ``drop_last``).

    Raises ``TypeError`` / ``ValueError`` naming the argument for data that would train on nothing
    or on garbage: no sample, bool or complex values, ``NaN`` / ``Inf``, negative class labels,
    lengths or target kinds that do not match; ``setup()`` also refuses splits that leave no
    training point (see :class:`InMemoryDataModule`).

    Example::

        dm = TensorDataModule(torch.randn(1000, 2), batch_size=256, return_index=True)
    """

    name = "tensors"

    def __init__(
        self,
        x: Any,
        y: Any = None,
        *,
        x_test: Any = None,
        y_test: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.x = as_tensor("x", x)
        self.y = None if y is None else as_tensor("y", y)
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"x and y must have the same number of samples, got {len(self.x)} and {len(self.y)}")
        self.x_test = None if x_test is None else as_tensor("x_test", x_test)
        self.y_test = None if y_test is None else as_tensor("y_test", y_test)
        if (self.y_test is None) != (self.x_test is None or self.y is None):
            raise ValueError("give y_test exactly when both x_test and y are given")
        if self.x_test is not None and self.x_test.shape[1:] != self.x.shape[1:]:
            raise ValueError(
                f"x_test samples must have the shape of x's samples {tuple(self.x.shape[1:])}, "
                f"got {tuple(self.x_test.shape[1:])}"
            )
        if self.y_test is not None and self.x_test is not None and len(self.y_test) != len(self.x_test):
            raise ValueError(f"x_test and y_test must have the same number of samples, got {len(self.x_test)} and {len(self.y_test)}")
        if self.y is not None and self.y_test is not None:
            kind = lambda t: "float targets" if t.is_floating_point() else "integer class labels"  # noqa: E731
            if kind(self.y) != kind(self.y_test) or self.y.shape[1:] != self.y_test.shape[1:]:
                raise ValueError(
                    f"y_test must be targets of y's kind and per-sample shape: y is {kind(self.y)} of shape "
                    f"{tuple(self.y.shape)}, y_test {kind(self.y_test)} of shape {tuple(self.y_test.shape)}"
                )
        for name, labels in (("y", self.y), ("y_test", self.y_test)):
            if labels is not None and is_class_labels(labels) and int(labels.min()) < 0:
                raise ValueError(f"{name}: class labels must be >= 0 (classes 0..C-1), got a minimum of {int(labels.min())}")

    def load_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        pools: dict[str, tuple[Tensor, Tensor | None]] = {"train": (self.x, self.y)}
        if self.x_test is not None:
            pools["test"] = (self.x_test, self.y_test)
        return pools
