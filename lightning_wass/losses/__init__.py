"""Loss functions of the Wasserstein methods, as pure torch functions (no Lightning)."""

from lightning_wass.losses.critic import (
    clip_weights,
    critic_gap,
    critic_loss,
    generator_loss,
    gradient_penalty,
    lipschitz_estimate,
)
from lightning_wass.losses.w2_flow import (
    adversarial_map,
    forward_euler_targets,
    minibatch_ot_targets,
    potential_map,
    semi_dual_loss,
    w2gan_dual_loss,
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
]
