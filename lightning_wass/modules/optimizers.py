"""The optimizers our modules build: torch's, with its fused kernel where torch has one.

``torch.optim.Adam`` and ``torch.optim.SGD`` take ``fused=True`` (torch >= 2.4 on CPU, CUDA and the
other devices of ``torch.utils._foreach_utils._get_fused_kernels_supported_devices``): the update of
each parameter then runs as one kernel instead of the dozen elementwise ``_foreach_*`` launches of
the default implementation. It is the same update rule; SGD's iterates are bit for bit those of the
default, Adam's agree to float rounding (about ``4e-9`` after 50 steps of a unit-scale parameter:
the kernel orders the same operations differently). On a 2-core CPU the fused Adam step of a
256-256 MLP takes 0.29 ms against 0.62-0.71 ms (``benchmarks/wdro_gda.py`` measures what it gives a
whole module).

:func:`build_optimizer` asks for the fused kernel only where every parameter is a floating-point
tensor on a device torch lists, and otherwise builds the default optimizer. A subclass that wants
torch's default implementation overrides ``configure_optimizers``. A checkpoint keeps the flag in
its ``param_groups``: resuming one written without it trains on with the default kernel (torch's
``load_state_dict`` restores the saved groups' options), which is the same update.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor

OptimizerT = TypeVar("OptimizerT", bound=torch.optim.Optimizer)


def fused_devices() -> tuple[str, ...]:
    """Device types with torch's fused optimizer kernels (none when this torch does not say)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older or newer torch without the helper
        return ()
    return tuple(_get_fused_kernels_supported_devices())


def supports_fused(optimizer_class: type[torch.optim.Optimizer], parameters: list[Tensor]) -> bool:
    """Whether ``optimizer_class(parameters, fused=True)`` runs: the class takes ``fused``, there is
    a parameter, and every parameter is a floating-point tensor on a device with fused kernels."""
    if "fused" not in inspect.signature(optimizer_class.__init__).parameters or not parameters:
        return False
    devices = fused_devices()
    return all(p.is_floating_point() and p.device.type in devices for p in parameters)


def build_optimizer(optimizer_class: type[OptimizerT], parameters: Iterable[Tensor], **options: Any) -> OptimizerT:
    """``optimizer_class(parameters, **options)``, with ``fused=True`` where torch supports it (see
    the module docstring). ``options`` may set ``fused`` itself, which then stands as given."""
    parameters = list(parameters)
    if "fused" not in options and supports_fused(optimizer_class, parameters):
        options["fused"] = True
    return optimizer_class(parameters, **options)
