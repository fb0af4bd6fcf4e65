"""``eval_mode``: run a network in eval mode for a block, then put every submodule's mode back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block, then restore every submodule's previous mode.

    Measurement passes (logging, gradient norms, sample figures, encoding a cache) must not update
    BatchNorm running statistics or consume dropout's random numbers: attaching a logger must not
    change training. ``model.train(was_training)`` would not do: it sets every submodule to the
    parent's mode, losing a submodule a user froze in eval mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
