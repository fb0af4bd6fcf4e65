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

It also skips, for parameters on the CPU, the CUDA-graph capture check that ``Adam.step`` (and
``AdamW``, ``Adamax``, ``NAdam``, ...) runs first: ``torch.accelerator.current_accelerator()``,
which ``import lightning`` makes an NVML probe (it sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, and
torch caches no device count before CUDA is initialised). On a machine without the NVIDIA driver
that probe loads ``libnvidia-ml.so.1`` (and fails) on every step: about 0.5 ms an Adam step on our
2-core CPU, in any process that imported Lightning. The check only guards CUDA / XPU graph
capture, which cannot capture a step on CPU tensors; :func:`skip_capture_check_on_cpu` keeps it
for every step whose first parameter is not on the CPU.
"""

from __future__ import annotations

import functools
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


def _capture_check_unless_on_cpu(optimizer: torch.optim.Optimizer) -> None:
    """Torch's capture check (``Optimizer._accelerator_graph_capture_health_check``), except when the
    first parameter lies on the CPU (the optimizer's parameters then are not on an accelerator)."""
    first = optimizer.param_groups[0]["params"][0]
    if not first.is_cpu:
        type(optimizer)._accelerator_graph_capture_health_check(optimizer)  # type: ignore[attr-defined]


def skip_capture_check_on_cpu(optimizer: OptimizerT) -> OptimizerT:
    """Make ``optimizer`` skip torch's CUDA-graph capture check while its parameters are on the
    CPU (see the module docstring); a no-op for a torch without that check."""
    if hasattr(type(optimizer), "_accelerator_graph_capture_health_check"):
        optimizer._accelerator_graph_capture_health_check = functools.partial(  # type: ignore[attr-defined]
            _capture_check_unless_on_cpu, optimizer
        )
    return optimizer


def build_optimizer(optimizer_class: type[OptimizerT], parameters: Iterable[Tensor], **options: Any) -> OptimizerT:
    """``optimizer_class(parameters, **options)``, with ``fused=True`` where torch supports it and
    the capture check skipped on the CPU (see the module docstring). ``options`` may set ``fused``
    itself, which then stands as given."""
    parameters = list(parameters)
    if "fused" not in options and supports_fused(optimizer_class, parameters):
        options["fused"] = True
    return skip_capture_check_on_cpu(optimizer_class(parameters, **options))
