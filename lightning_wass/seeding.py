"""One home for derived random streams: ``mix_seed`` and ``seeded_generator``.

Every stochastic step in the library (OT-MDR's particle noise, the generators' latent draws, the
proximal flow's reference and interpolation draws, the worst-case generator's batches, Bayesian
layers' shared noise) seeds a fresh ``torch.Generator`` from a tuple of integers such as
``(seed, rank, step, stream)``. Mixing the tuple through numpy's ``SeedSequence`` (a well-kept
hash designed for this job) gives independent, reproducible streams that depend only on the tuple:
the same on every process and after a resume, with no global RNG state touched.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mix_seed", "seeded_generator"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers ``(seed, step, particle, ...)``, stable across processes.

    Different tuples give independent streams (``SeedSequence`` entropy mixing); negative or large
    parts are taken modulo ``2**63``.
    """
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_generator(device: torch.device | str | None, *parts: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (CPU when ``None``) seeded by ``mix_seed(*parts)``."""
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(mix_seed(*parts))
