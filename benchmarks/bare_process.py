"""Run a bare PyTorch loop as it runs in a process that never imported Lightning.

``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` for the whole process (to keep
``torch.cuda.is_available()`` from poisoning forks). torch caches no CUDA device count before CUDA
is initialised, so with that variable every ``torch.cuda.is_available()`` becomes an NVML probe:
on a machine without the NVIDIA driver it loads ``libnvidia-ml.so.1``, fails, and falls back, on
every call. ``torch.optim.Adam.step`` makes that call (its CUDA-graph capture check) every step,
which costs a hand-written loop in our benchmark processes about 0.1-0.5 ms an Adam step that the
same loop in a plain PyTorch script does not pay. The benchmarks time their bare loops inside
:func:`plain_pytorch_process`, so the bare side is the loop a user runs without Lightning.
(Our modules skip that check for CPU parameters: ``lightning_wass.modules.optimizers``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextmanager
def plain_pytorch_process() -> Iterator[None]:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` for the block (put back as it was afterwards)."""
    kept = os.environ.pop(NVML_CHECK, None)
    try:
        yield
    finally:
        if kept is not None:
            os.environ[NVML_CHECK] = kept
