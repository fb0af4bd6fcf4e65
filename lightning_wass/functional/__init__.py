"""The Lightning-free math of every method: one file (or folder) per method, pure torch.

``functional/<method>`` holds the equations that ``modules/<method>.py`` (or ``optim/otmdr.py``)
runs, so a method's math is read and tested without a Trainer:

- :mod:`.worst_case`: worst-case generation for Wasserstein DRO (per-sample losses, the transport
  cost, the particle ascent direction, heavy-ball ascent, the two gradient norms, closed forms for
  linear regression; arXiv:2512.08176);
- :mod:`.otmdr`: the SAM-family ascent kernels on tensor lists (SAM, ASAM, OT-MDR; arXiv:2306.04178);
- :mod:`.wgan`: Kantorovich-Rubinstein critic losses, weight clipping, the gradient penalty
  (arXiv:1701.07875, arXiv:1704.00028);
- :mod:`.w2_gradient_flow`: W2-FE's Euler targets, the semi-dual and W2-GAN dual losses (arXiv:2009.14540);
- :mod:`.proximal_flow`: the W1 (+) W2 proximal flow's rollout, divergences, HJ indicators and
  reference distributions (arXiv:2407.11901);
- :mod:`.penalties`: gradients of a critic at random interpolates, shared by both gradient penalties.

The names re-exported here are the per-method functions users call directly.
"""

from lightning_wass.functional.proximal_flow import *  # noqa: F403
from lightning_wass.functional.proximal_flow import __all__ as _proximal_flow_all
from lightning_wass.functional.w2_gradient_flow import (
    adversarial_map,
    forward_euler_targets,
    minibatch_ot_targets,
    potential_map,
    semi_dual_loss,
    w2gan_dual_loss,
)
from lightning_wass.functional.wgan import (
    clip_weights,
    critic_gap,
    critic_loss,
    generator_loss,
    gradient_penalty,
    lipschitz_estimate,
)

__all__ = [
    "adversarial_map",
    "clip_weights",
    "critic_gap",
    "critic_loss",
    "forward_euler_targets",
    "generator_loss",
    "gradient_penalty",
    "lipschitz_estimate",
    "minibatch_ot_targets",
    "potential_map",
    "semi_dual_loss",
    "w2gan_dual_loss",
    *_proximal_flow_all,
]
