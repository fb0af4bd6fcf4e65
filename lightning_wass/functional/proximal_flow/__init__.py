"""The math of W1 (+) W2 proximal generative flows (arXiv:2407.11901), free of Lightning.

- :mod:`.rollout`: forward-Euler trajectories of ``v = -grad U / alpha``, kinetic energy, straightness;
- :mod:`.divergences`: dual forms of KL (Donsker-Varadhan), reverse KL and alpha-divergences, and
  the one-sided gradient penalty (the W1 proximal);
- :mod:`.indicators`: the Hamilton-Jacobi residual (sign derived there) and the terminal error, the
  same three indicators in the official code's conventions (``*_official``, comparable with the
  paper's figures), and the path length / chord of trajectories;
- :mod:`.reference`: the reference distributions;
- :mod:`.figures`: trajectory, image-strip and indicator-curve figures (matplotlib).

:class:`lightning_wass.W1W2ProximalFlow` orchestrates them.
"""

from lightning_wass.functional.proximal_flow.divergences import (
    DIVERGENCES,
    alpha_dual,
    f_divergence_dual,
    kl_dual,
    lipschitz_penalty,
    reverse_kl_dual,
)
from lightning_wass.functional.proximal_flow.indicators import (
    hj_residual,
    hj_residual_official,
    hj_residual_pointwise,
    kinetic_energy_official,
    median_path_straightness,
    path_straightness,
    terminal_error,
    terminal_error_official,
)
from lightning_wass.functional.proximal_flow.reference import REFERENCES, sample_reference
from lightning_wass.functional.proximal_flow.rollout import (
    Rollout,
    euler_rollout,
    evaluate_potential,
    excess_path_length,
    kinetic_energy,
    potential_gradient,
)

__all__ = [
    "DIVERGENCES",
    "REFERENCES",
    "Rollout",
    "alpha_dual",
    "euler_rollout",
    "evaluate_potential",
    "excess_path_length",
    "f_divergence_dual",
    "hj_residual",
    "hj_residual_official",
    "hj_residual_pointwise",
    "kinetic_energy",
    "kinetic_energy_official",
    "kl_dual",
    "lipschitz_penalty",
    "median_path_straightness",
    "path_straightness",
    "potential_gradient",
    "reverse_kl_dual",
    "sample_reference",
    "terminal_error",
    "terminal_error_official",
]
