"""SAM (and ASAM): the one-particle, one-step, noise-free case of OT-MDR.

Sharpness-aware minimisation, Foret et al., arXiv:2010.01412; adaptive SAM, Kwon et al.,
arXiv:2102.11600. Per step, with ``g = grad L(theta)``::

    e = rho T^2 g / ||T g||            (T = 1, or T = |theta| + eta with adaptive=True)
    theta <- base_optimizer step at theta with the gradient grad L(theta + e)

Two closure calls per step (``step(closure)``), or davda54/sam's two-step loop unchanged
(``first_step`` after the first backward, ``second_step`` after the second); BatchNorm running
statistics are updated on the first pass only. This is :class:`~lightning_wass.optim.OTMDR` with
``num_particles=1, ascent_steps=1, noise_std=0``, so it shares its closure contract, fp16 loss
scaling, DDP options (``sync_ascent=False`` is the paper's m-sharpness), ``interval``,
``state_dict`` and error handling. ``group["rho"]`` is a plain number a schedule may set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from lightning_wass._validation import check_positive
from lightning_wass.optim.otmdr import OTMDR


class SAM(OTMDR):
    """Sharpness-aware minimisation wrapping ``base_optimizer`` (see the module docstring).

    Args:
        params: parameters or parameter groups.
        base_optimizer: the optimizer class that takes the step (e.g. ``torch.optim.SGD``).
        rho: the neighbourhood radius (the SAM paper's default 0.05; ASAM uses larger radii, e.g. 0.5-2).
        adaptive: ASAM geometry.
        adaptive_eta: ASAM's ``eta`` (0 as in the widely used implementation).
        interval, sync_ascent, freeze_norm_stats, max_update_ratio: as in :class:`OTMDR`.
        **base_kwargs: passed to ``base_optimizer``.

    Example::

        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        optimizer.step(closure)                    # or: first_step() / second_step() as in davda54/sam
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Callable[..., Optimizer],
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        adaptive_eta: float = 0.0,
        interval: int = 1,
        sync_ascent: bool = True,
        freeze_norm_stats: bool | str = True,
        max_update_ratio: float | None = 1e3,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            rho=check_positive("rho", rho, allow_zero=True),
            num_particles=1,
            ascent_steps=1,
            noise_std=0.0,
            adaptive=adaptive,
            adaptive_eta=adaptive_eta,
            interval=interval,
            sync_ascent=sync_ascent,
            freeze_norm_stats=freeze_norm_stats,
            max_update_ratio=max_update_ratio,
            **base_kwargs,
        )
