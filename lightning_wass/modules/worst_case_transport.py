"""The default transport map of worst-case generation: what it is sized from, and how it is built.

The neural transport map ``T_phi(x) = x + R_phi(x)`` of arXiv 2512.08176 (DESIGN.md 3.1), when the
user gives none, is built in ``setup`` from facts of the data: the number of features of a sample
and, for a target-conditioned map, the number of classes or of target features.
:class:`TransportMapSpec` records those facts, builds the map from them with weights drawn from the
module's ``seed`` (the same in every process), and is saved in the module's extra state so that a
checkpoint alone rebuilds the map before its weights are loaded (``load_from_checkpoint``,
``ddp_spawn``'s hand-back). Its saved form is the dict ``{"in_features", "condition", "dtype"}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Builder = Callable[[int, "dict[str, int] | None"], nn.Module]
"""``build(in_features, condition) -> nn.Module`` (``WorstCaseGenerator.build_transport_map``)."""


@dataclass(frozen=True)
class TransportMapSpec:
    """The data facts that size the default transport map.

    Attributes:
        in_features: features of one sample, ``prod(data_shape)``.
        condition: ``None`` (``T(x)``), ``{"num_classes": C}`` (class labels) or
            ``{"target_features": k}`` (regression targets) for ``T(x, y)``.
        dtype: the map's parameter dtype when the spec was saved (``None``: not known yet).
    """

    in_features: int
    condition: dict[str, int] | None = None
    dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ from the data
    @classmethod
    def from_data(
        cls, datamodule: Any, samples: Tensor | None, targets: Tensor | None, *, conditional: bool
    ) -> "TransportMapSpec":
        """Size the map from the DataModule (its ``data_shape``, ``tensors("train")``,
        ``num_classes``) or, without one, from the particle table's ``samples`` / ``targets``."""
        if datamodule is not None and hasattr(datamodule, "data_shape"):
            in_features = math.prod(datamodule.data_shape)
        elif samples is not None:
            in_features = math.prod(samples.shape[1:])
        else:
            raise ValueError(
                "WorstCaseGenerator cannot size its default transport map without a DataModule that has "
                "data_shape (lightning_wass DataModules do): pass transport_map="
            )
        if not conditional:
            return cls(int(in_features))
        if targets is None and datamodule is not None and hasattr(datamodule, "tensors"):
            targets = datamodule.tensors("train")[1]
        if targets is None:
            raise ValueError(
                "transport_conditional=True needs targets: use a DataModule with labels or regression targets, "
                "or pass a conditional transport_map="
            )
        if targets.is_floating_point():
            return cls(int(in_features), {"target_features": math.prod(targets.shape[1:])})
        num_classes = getattr(datamodule, "num_classes", None) or int(targets.max()) + 1
        return cls(int(in_features), {"num_classes": int(num_classes)})

    # ------------------------------------------------------------------ building
    def build(self, builder: Builder, *, seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The map ``builder(in_features, condition)`` with its initial weights drawn from ``seed``
        (whatever the global random state), on ``device`` in the saved dtype (else ``dtype``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = builder(self.in_features, self.condition)
        network = network.to(device=device, dtype=dtype)
        if self.dtype is not None:
            network = network.to(dtype=self.dtype)
        return network

    # ------------------------------------------------------------------ extra state
    def to_state(self, dtype: torch.dtype) -> dict[str, Any]:
        """The saved form, with the map's current parameter dtype (the precision plugin converts
        the map after ``setup``)."""
        return {"in_features": self.in_features, "condition": self.condition, "dtype": str(dtype)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TransportMapSpec":
        """Read :meth:`to_state`'s dict (older checkpoints may lack ``dtype``)."""
        dtype = state.get("dtype")
        parsed = None
        if isinstance(dtype, str) and dtype.startswith("torch."):
            parsed = getattr(torch, dtype[len("torch."):])
        condition = state.get("condition")
        return cls(int(state["in_features"]), None if condition is None else dict(condition), parsed)
