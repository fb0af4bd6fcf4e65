"""W1 (+) W2 proximal generative flow (Gu, Katsoulakis, Rey-Bellet, Zhang, arXiv:2407.11901).

A potential ``U(x, t)`` drives samples of a reference distribution ``rho_0`` to the data ``Q`` by
forward Euler, ``x_{k+1} = x_k - dt grad_x U(x_k, t_k) / alpha`` (``K = num_steps`` steps,
``dt = T / K``). Training solves the mean-field game

    min_U  alpha * KE(U) + D_f^L(rho_T || Q),      KE = sum_k dt mean ||grad U(x_k, t_k)||^2 / (2 alpha^2),

- the **W2 proximal** ``alpha * KE`` (Benamou-Brenier kinetic energy) makes the optimal trajectories
  straight lines and the flow unique; ``alpha = 0`` switches it off;
- the **W1 proximal** ``D_f^L`` is the f-divergence with its discriminator restricted to
  ``L``-Lipschitz functions (:mod:`lightning_wass.functional.proximal_flow.divergences`), enforced by the one-sided
  gradient penalty ``gp_weight * mean max(0, ||grad phi||^2 - L^2)``; it stays finite for data on a
  low-dimensional manifold; ``L = None`` switches it off.

Adversarial training with manual optimisation: every training batch makes one discriminator
(ascent) step on the dual objective ``E_gen phi - E_data f*(phi)`` (KL in Donsker-Varadhan form by
default); after every ``n_critic`` of them the potential makes one (descent) step on
``mean phi(x_T) + alpha * KE``, back-propagated through the unrolled Euler steps.

Defaults. Adam betas (0.5, 0.9), lr 1e-4 for phi and 5e-4 for U, lambda 0.1, L 1, 5 critic steps
and 5 Euler steps are the official *MNIST* run's (``POT_Flow_GAN_CNN.py``'s argparse defaults and
the README's MNIST line, which also has T 5, dt 1, alpha 0.05: pass ``T=5.0, alpha=0.05`` for it,
as ``examples/proximal_flow_mnist.yaml`` does). ``T = 1`` (dt 0.2, the official 2-D horizon) and
``alpha = 0.1`` are ours, chosen for straight trajectories on 2-D data
(``benchmarks/proximal_flow_straightness.py``: 8 Gaussians from ``N(0, I)``, 180 CPU-seconds, one
thread). A straight path of length ``D`` over ``[0, T]`` costs ``alpha D^2 / (2 T)``, so the W2
proximal's strength is ``alpha / T``: the former defaults T 5, alpha 0.05 (``alpha / T = 0.01``)
left the paths curved and the samples far (median path / chord 1.20 and 1.23, exact W2 2.31x and
2.77x the sample floor, seeds 0 and 1); ``T = 1`` alone (0.05) gave 1.112 and 1.20x (seed 0);
``T = 1, alpha = 0.1`` (0.1) gives path / chord 1.077, 1.091, 1.085 and W2 1.16x, 2.11x, 2.18x the
floor (seeds 0, 1, 2): straight paths on every seed, and closer samples than the former defaults,
but W2 under 2x the floor on seed 0 only (docs/proximal_flow.md). The Lipschitz bound caps
how far the flow is worth moving, ``D <~ L T / alpha = 10``, well beyond the displacements of
these sets. The official *2-D* runs (``POT_Flow_GAN.py``) use alpha 0.5 (0.1 for the sets embedded
in 7 and 12 dimensions), lr 1e-4 (U) / 2e-5 (phi), T 1, dt 0.2, a 5-layer tanh U and a 3-layer
ReLU phi (48 wide by default, 64 on the README's Pinwheel lines), 25,000 iterations;
``examples/*_official.yaml`` set them.

Validation logs the optimality indicators (:mod:`lightning_wass.functional.proximal_flow.indicators`, where the
sign of the Hamilton-Jacobi residual is derived for this flow convention): ``val/hj_residual``,
``val/terminal_error`` and their scale-free versions ``val/hj_residual_relative`` and
``val/terminal_error_relative`` (see :meth:`optimality_indicators`), ``val/kinetic_energy``; the
same three in the official code's conventions, the figures comparable with the paper's,
``val/kinetic_energy_official``, ``val/hj_residual_official`` and ``val/terminal_error_official``;
``val/excess_path_length`` and ``val/path_straightness`` (median path length / chord of the
trajectories), the divergence estimate with ``dt`` and with ``dt/2``
(``val/divergence``, ``val/divergence_half_dt``) and the mean distance between the ``dt`` and
``dt/2`` endpoints of the same reference samples (``val/discretisation_gap``), all synced across
DDP ranks. It runs its autograd inside ``torch.inference_mode(False)`` + ``torch.enable_grad()``,
so a default ``Trainer()`` works. :class:`~lightning_wass.callbacks.HJResidualStopping` stops on them.

Steps: Lightning's ``global_step`` counts both optimizers' steps (``max_steps = (n_critic + 1) x``
potential steps); :attr:`critic_step` and :attr:`generator_step` (the potential's updates) count
each, and are checkpointed with every generative module's counters
(:class:`~lightning_wass.modules.generative.GenerativeModule`; ``critic_steps`` and
``potential_steps`` are their former names, kept as aliases, and checkpoints that stored them still
load). Reference samples and penalty interpolates come from the streams ``(seed, rank,
global_step, stream)`` (:meth:`~lightning_wass.modules.generative.GenerativeModule.random_stream`):
replicas draw different samples, and a resumed run draws what the uninterrupted run would have. DDP
works with the default ``find_unused_parameters=False`` (the network a step does not update gets
exact zero gradients, :meth:`~lightning_wass.modules.generative.GenerativeModule.zero_touch`).

Differences from the official code (deliberate): the kinetic energy uses the same gradients as the
rollout, at ``(x_k, t_k)`` (exact gradient of the discretised objective; the official code
recomputes them at the stop-gradient states ``(x_{k+1}, t_k)``); our HJ residual has the sign
derived for ``v = -grad U / alpha``, is evaluated at ``(x_k, t_k)`` and is centred per time step
(gauge-free), and our terminal error is the mean per-sample norm (the official one is the
Frobenius norm over the batch divided by ``N``, about ``sqrt(N)`` times smaller); the
``*_official`` indicators are logged beside ours for comparison with the paper. The official
code's ``--f reverse_KL`` (its default and the README's MNIST runs) tests ``f == 'reverseKL'``,
never true, and so trains with the Donsker-Varadhan KL objective: our ``divergence="kl"``.

Subclass and override one piece: :meth:`sample_reference`, :meth:`flow`,
:meth:`divergence_estimate`, :meth:`discriminator_loss`, :meth:`potential_loss`,
:meth:`optimality_indicators`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_wass._validation import check_betas, check_choice, check_int, check_module, check_positive, check_shape, raise_if_diverged
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.guard import StepCheck
from lightning_wass.modules.generative import GenerativeModule
from lightning_wass.modules.optimizers import build_optimizer
from lightning_wass.nn.potentials import ConvDiscriminator, ConvPotential, MLPDiscriminator, PotentialMLP
from lightning_wass.functional.proximal_flow.divergences import DIVERGENCES, f_divergence_dual, lipschitz_penalty
from lightning_wass.functional.proximal_flow.indicators import (
    hj_residual,
    hj_residual_official,
    kinetic_energy_official,
    median_path_straightness,
    terminal_error,
    terminal_error_official,
)
from lightning_wass.functional.proximal_flow.reference import REFERENCES, check_reference_range, sample_reference
from lightning_wass.functional.proximal_flow.rollout import Rollout, euler_rollout, excess_path_length, kinetic_energy, potential_gradient

__all__ = ["STREAM_DISCRIMINATOR", "STREAM_POTENTIAL", "STREAM_VALIDATION", "W1W2ProximalFlow", "autograd_enabled", "default_discriminator", "default_potential"]

STREAM_DISCRIMINATOR, STREAM_POTENTIAL, STREAM_VALIDATION = 0, 1, 2
"""The last part of the random streams ``(seed, rank, step, stream)`` of the discriminator step
(reference samples and penalty interpolates), the potential step and validation."""


def default_potential(data_shape: Sequence[int]) -> nn.Module:
    """Our default potential for ``data_shape``: a tanh MLP (3 x 128) on ``[x, t]`` for vectors (the
    official 2-D potential is a tanh MLP too, 5 x 48 by default or 5 x 64: set
    ``potential=PotentialMLP(d, hidden=(64,) * 5)``), :class:`~lightning_wass.nn.ConvPotential` (the
    official MNIST layers) for ``(C, H, W)`` images. The last layer is zero-initialised, so the flow
    starts as the identity map."""
    shape = tuple(int(s) for s in data_shape)
    if len(shape) == 3:
        return ConvPotential(shape, zero_init_last=True)
    return PotentialMLP(int(np.prod(shape)), zero_init_last=True)


def default_discriminator(data_shape: Sequence[int]) -> nn.Module:
    """ReLU MLP (3 x 128) for vectors (official 2-D: ReLU, 3 x 48 or 3 x 64),
    :class:`~lightning_wass.nn.ConvDiscriminator` for images."""
    shape = tuple(int(s) for s in data_shape)
    if len(shape) == 3:
        return ConvDiscriminator(shape)
    return MLPDiscriminator(int(np.prod(shape)))


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Turn autograd on even inside ``torch.inference_mode()`` / ``torch.no_grad()`` (Lightning's
    evaluation loops). Tensors created before entering (e.g. the batch) are inference tensors:
    clone them inside the block before they enter autograd."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


class W1W2ProximalFlow(GenerativeModule):
    """Potential-driven generative flow with W1 and W2 proximals (arXiv:2407.11901).

    Args:
        data_shape: shape of one sample (``(2,)`` for 2-D sets, ``(1, 28, 28)`` for MNIST); builds
            the default networks and the reference samples.
        potential: ``U(x, t) -> (N,)``; default :func:`default_potential`.
        discriminator: ``phi(x) -> (N,)``; default :func:`default_discriminator`.
        T: terminal time (> 0; default 1, ours and the official 2-D runs'; official MNIST: 5).
        num_steps: Euler steps ``K >= 1`` (``dt = T / K``).
        alpha: weight of the W2 proximal (kinetic energy), ``>= 0``; ``0`` switches it off (default
            0.1, ours: see "Defaults" above; official 2-D 0.5, embedded 0.1, MNIST 0.05).
        L: Lipschitz bound of the discriminator (the W1 proximal), ``> 0``; ``None`` switches it off.
        gp_weight: weight ``lambda`` of the one-sided gradient penalty (used when ``L`` is set).
        divergence: ``"kl"`` (Donsker-Varadhan), ``"reverse_kl"`` or ``"alpha"``.
        divergence_order: the order ``a > 1`` of the alpha-divergence.
        n_critic: discriminator steps per potential step (``>= 1``).
        reference: ``"normal"`` (``N(0, I)``) or ``"uniform"`` (``U[reference_range]`` per coordinate).
        reference_range: ``(low, high)`` of the uniform reference (official MNIST: ``(0, 0.5)``).
        lr_potential, lr_discriminator: Adam learning rates (official MNIST: 5e-4 and 1e-4;
            official 2-D: 1e-4 and 2e-5).
        betas: Adam betas of both optimizers (official: (0.5, 0.9)).
        flow_alpha: the velocity scale of ``v = -grad U / flow_alpha``; ``None`` = ``alpha`` when
            ``alpha > 0``, else 1. Set it to the W1+W2 run's ``alpha`` in an ablation with
            ``alpha = 0`` to keep the same parametrisation of the flow (the official W1-only runs
            do). The indicators use it in place of ``alpha``.
        center_hj: centre the HJ residual per time step (gauge-free; see
            :mod:`lightning_wass.functional.proximal_flow.indicators`).
        indicator_samples: reference samples the validation indicators are computed on, per
            validation batch; ``None`` = the batch's size. ``terminal_error_official`` scales as
            ``1 / sqrt(N)`` with it: the official code evaluates on ``N = 5000``.
        seed: seeds the reference samples and penalty interpolates (per step and rank, so a resumed
            run draws what the uninterrupted run would have).

    Example::

        model = W1W2ProximalFlow(data_shape=(2,), T=1.0, num_steps=5, alpha=0.1, L=1.0)
        pl.Trainer(max_epochs=50).fit(model, datamodule=ToyDataModule("8gaussians"))
        x = model.sample(1000)
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (2,),
        potential: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        T: float = 1.0,
        num_steps: int = 5,
        alpha: float = 0.1,
        L: float | None = 1.0,
        gp_weight: float = 0.1,
        divergence: str = "kl",
        divergence_order: float = 2.0,
        n_critic: int = 5,
        reference: str = "normal",
        reference_range: Sequence[float] = (0.0, 0.5),
        lr_potential: float = 5e-4,
        lr_discriminator: float = 1e-4,
        betas: Sequence[float] = (0.5, 0.9),
        flow_alpha: float | None = None,
        center_hj: bool = True,
        indicator_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_shape = check_shape("data_shape", data_shape)
        self.T = check_positive("T", T)
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.L = None if L is None else check_positive("L", L)
        self.gp_weight = check_positive("gp_weight", gp_weight, allow_zero=True)
        self.divergence = check_choice("divergence", divergence, DIVERGENCES)
        self.divergence_order = check_positive("divergence_order", divergence_order)
        if self.divergence_order <= 1.0:
            raise ValueError(f"divergence_order must be > 1, got {divergence_order!r}")
        self.n_critic = check_int("n_critic", n_critic, minimum=1)
        self.reference = check_choice("reference", reference, REFERENCES)
        self.reference_range = check_reference_range(reference_range)
        self.lr_potential = check_positive("lr_potential", lr_potential)
        self.lr_discriminator = check_positive("lr_discriminator", lr_discriminator)
        self.betas = check_betas("betas", betas)
        if flow_alpha is None:
            self.flow_alpha = self.alpha if self.alpha > 0 else 1.0
        else:
            self.flow_alpha = check_positive("flow_alpha", flow_alpha)
        self.center_hj = bool(center_hj)
        self.indicator_samples = None if indicator_samples is None else check_int("indicator_samples", indicator_samples, minimum=1)
        self.init_generative(seed=seed, seed_minimum=None)  # counters critic_step, generator_step = 0
        check_module("potential", potential, optional=True)
        check_module("discriminator", discriminator, optional=True)
        self.save_hyperparameters(ignore=["potential", "discriminator"])
        self.potential = potential if potential is not None else default_potential(self.data_shape)
        self.discriminator = discriminator if discriminator is not None else default_discriminator(self.data_shape)
        self.automatic_optimization = False

    counter_names = ("generator_step", "critic_step")
    """Checkpointed: ``generator_step`` (potential updates) and ``critic_step`` (discriminator updates)."""

    # ----------------------------------------------------------------------------- derived values
    @property
    def dt(self) -> float:
        """The Euler step ``T / num_steps``."""
        return self.T / self.num_steps

    @property
    def potential_steps(self) -> int:
        """Potential updates so far: the former name of ``generator_step`` (kept as an alias)."""
        return self.generator_step

    @potential_steps.setter
    def potential_steps(self, value: int) -> None:
        self.generator_step = int(value)

    @property
    def critic_steps(self) -> int:
        """Discriminator updates so far: the former name of ``critic_step`` (kept as an alias)."""
        return self.critic_step

    @critic_steps.setter
    def critic_steps(self, value: int) -> None:
        self.critic_step = int(value)

    def where(self) -> str:
        """The module and step named in divergence messages (Lightning's ``global_step``)."""
        return f"{type(self).__name__} step {self.global_step}"

    def divergence_hint(self) -> str:
        """What to change when training produced NaN/Inf: which regulariser to add."""
        if self.L is None and self.alpha == 0:
            return (
                "neither proximal is on: add the W1 proximal (L=1.0, a Lipschitz discriminator) and the W2 "
                "proximal (alpha=0.1, the kinetic energy), as the paper does; the official unregularised "
                "run went to NaN as well"
            )
        if self.L is None:
            return (
                "the W1 proximal is off: set L (e.g. L=1.0) so the discriminator is L-Lipschitz and the "
                "divergence stays finite; the official W2-only run went to NaN as well"
            )
        if self.alpha == 0:
            return "the W2 proximal is off: set alpha > 0 (e.g. alpha=0.1) to penalise the kinetic energy of the flow"
        return "both proximals are on: lower lr_potential / lr_discriminator, raise alpha, or take more Euler steps (num_steps)"

    # ----------------------------------------------------------------------------- overridable pieces
    def sample_reference(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the reference distribution ``rho_0`` on this module's device."""
        low, high = self.reference_range
        return sample_reference(
            self.reference, n, self.data_shape, low=low, high=high, generator=generator, device=self.device
        )

    def flow(self, x0: Tensor, num_steps: int | None = None, *, create_graph: bool = False) -> Rollout:
        """Euler rollout of ``v = -grad U / flow_alpha`` from ``x0`` over ``[0, T]`` (``num_steps`` steps)."""
        steps = self.num_steps if num_steps is None else check_int("num_steps", num_steps, minimum=1)
        return euler_rollout(self.potential, x0, self.T, steps, self.flow_alpha, create_graph=create_graph)

    def divergence_estimate(self, phi_fake: Tensor, phi_real: Tensor) -> Tensor:
        """Dual objective ``E_gen phi - E_data f*(phi)`` of the chosen divergence (a lower bound)."""
        return f_divergence_dual(self.divergence, phi_fake, phi_real, order=self.divergence_order)

    def scores(self, x: Tensor) -> Tensor:
        """Discriminator scores ``phi(x)`` as a ``(N,)`` tensor."""
        return self.discriminator(x).reshape(x.shape[0])

    def discriminator_loss(self, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``-estimate + gp_weight * penalty`` (to minimise), with its parts."""
        estimate = self.divergence_estimate(self.scores(fake), self.scores(real))
        if self.L is not None and self.gp_weight > 0:
            penalty = lipschitz_penalty(self.discriminator, real, fake, self.L, generator=generator)
        else:
            penalty = estimate.new_zeros(())
        return {"loss": -estimate + self.gp_weight * penalty, "divergence": estimate, "gradient_penalty": penalty}

    def potential_loss(self, rollout: Rollout) -> dict[str, Tensor]:
        """``mean phi(x_T) + alpha * KE`` (to minimise), with its parts; the rollout keeps its graph."""
        terminal = self.scores(rollout.terminal).mean()
        energy = kinetic_energy(rollout.gradients, rollout.dt, self.flow_alpha)
        loss = terminal + self.alpha * energy if self.alpha > 0 else terminal
        return {"loss": loss, "terminal_score": terminal, "kinetic_energy": energy}

    @property
    def indicator_alpha(self) -> float:
        """The ``alpha`` of the W1 (+) W2 problem whose optimality the indicators test: ``alpha``, or
        ``flow_alpha`` when the W2 proximal is off (as the official W1-only runs do)."""
        return self.alpha if self.alpha > 0 else self.flow_alpha

    def value_potential(self, x: Tensor, t: Tensor) -> Tensor:
        """The value function ``U = indicator_alpha * Psi`` of the control problem, where ``Psi`` is
        the velocity potential (``v = -grad Psi``); equal to ``potential(x, t)`` when
        ``flow_alpha == alpha``."""
        return (self.indicator_alpha / self.flow_alpha) * self.potential(x, t)

    def optimality_indicators(self, real: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Indicators on a batch of data ``real`` (autograd must be on). Returns detached scalars.

        ``hj_residual`` and ``terminal_error`` are those of :mod:`lightning_wass.functional.proximal_flow.indicators`
        for ``U = value_potential`` and ``alpha = indicator_alpha``. Their scale-free versions divide
        by what they balance: ``hj_residual_relative = hj_residual / (alpha * kinetic_energy)``
        (``alpha KE = sum_k dt mean ||grad U||^2 / (2 alpha)``, the size of the Hamiltonian term) and
        ``terminal_error_relative = terminal_error / mean ||grad phi(x_T)||``; both are 1 when the
        denominator vanishes (a flow that does not move is not optimal).

        ``kinetic_energy_official``, ``hj_residual_official`` and ``terminal_error_official`` are the
        official code's figures (:func:`~lightning_wass.functional.proximal_flow.indicators.kinetic_energy_official`
        and the others: evaluated at ``(x_{k+1}, t_k)``, ``+`` sign, no centring, terminal error
        ``||.||_F / N``), the ones to put next to the paper's numbers (with
        ``indicator_samples=5000``, the official ``N``). ``path_straightness`` is the median path
        length / chord of the trajectories (1 = straight).

        The indicators are computed on ``indicator_samples`` reference samples (default: as many as
        ``real`` has rows).
        """
        a = self.indicator_alpha
        n = real.shape[0] if self.indicator_samples is None else self.indicator_samples
        x0 = self.sample_reference(n, generator)
        coarse = self.flow(x0)
        fine = self.flow(x0, 2 * self.num_steps)
        x_T, x_T_half = coarse.terminal, fine.terminal
        with torch.no_grad():
            phi_real = self.scores(real)
            energy = kinetic_energy(coarse.gradients, coarse.dt, self.flow_alpha)
            indicators = {
                "divergence": self.divergence_estimate(self.scores(x_T), phi_real),
                "divergence_half_dt": self.divergence_estimate(self.scores(x_T_half), phi_real),
                "discretisation_gap": (x_T - x_T_half).flatten(1).norm(dim=1).mean(),
                "kinetic_energy": energy,
                "excess_path_length": excess_path_length(coarse.states),
                "path_straightness": median_path_straightness(coarse.states),
            }
        hj = hj_residual(self.value_potential, coarse.states, coarse.times, coarse.dt, a, center=self.center_hj)
        terminal = terminal_error(self.value_potential, self.discriminator, x_T, self.T)
        grad_phi = potential_gradient(lambda x, t: self.scores(x), x_T, self.T).flatten(1).norm(dim=1).mean()
        hamiltonian = a * energy
        one = hj.new_ones(())
        indicators["hj_residual"] = hj
        indicators["hj_residual_relative"] = hj / hamiltonian if float(hamiltonian) > 0 else one
        indicators["terminal_error"] = terminal
        indicators["terminal_error_relative"] = terminal / grad_phi if float(grad_phi) > 0 else one
        states, times, dt = coarse.states, coarse.times, coarse.dt
        indicators["kinetic_energy_official"] = kinetic_energy_official(self.value_potential, states, times, dt, a)
        indicators["hj_residual_official"] = hj_residual_official(self.value_potential, states, times, dt, a)
        indicators["terminal_error_official"] = terminal_error_official(self.value_potential, self.discriminator, x_T, self.T)
        return {k: v.detach() for k, v in indicators.items()}

    # ----------------------------------------------------------------------------- sampling
    def trajectories(self, n: int, num_steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """All Euler states of ``n`` fresh trajectories: ``(K + 1, n, *data_shape)``, detached."""
        n = check_int("n", n, minimum=1)
        with autograd_enabled():
            x0 = self.sample_reference(n, generator)
            return self.flow(x0, num_steps).stacked()

    def sample(self, n: int, num_steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` generated samples ``x_T`` of shape ``(n, *data_shape)``, detached.

        ``num_steps`` overrides the number of Euler steps (e.g. ``2 * num_steps`` for ``dt / 2``).
        """
        n = check_int("n", n, minimum=1)
        with autograd_enabled():
            x0 = self.sample_reference(n, generator)
            return self.flow(x0, num_steps).terminal.detach()

    # ----------------------------------------------------------------------------- Lightning hooks
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_phi = build_optimizer(torch.optim.Adam, self.discriminator.parameters(), lr=self.lr_discriminator, betas=self.betas)
        opt_u = build_optimizer(torch.optim.Adam, self.potential.parameters(), lr=self.lr_potential, betas=self.betas)
        return [opt_phi, opt_u]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = unpack_batch(batch).x
        # a diverged step puts the networks, their optimizers and the counters back, then raises
        with self.guarded_step() as check:
            self.check_batch(real, check, hint="clean the data (NaN or Inf in the inputs)", parameters=self.potential)
            self.guarded_training_step(real, check)

    def guarded_training_step(self, real: Tensor, check: StepCheck) -> None:
        """One discriminator step and, after every ``n_critic``-th, one potential step (inside the guard)."""
        n = real.shape[0]
        opt_phi, opt_u = self.optimizers()  # type: ignore[misc]
        step = self.global_step
        gen = self.random_stream(step, STREAM_DISCRIMINATOR)

        # Discriminator (ascent on the dual objective, with the Lipschitz penalty).
        fake = self.flow(self.sample_reference(n, gen)).terminal
        self.check_spread(fake, real, self.divergence_hint(), what="the flow's samples")
        parts = self.discriminator_loss(real, fake, gen)
        check.finite("the discriminator loss", parts["loss"], self.divergence_hint())
        opt_phi.zero_grad(set_to_none=True)
        # The potential is not in this graph: give it exact zero gradients so that DDP's reducer
        # (find_unused_parameters=False, the default) completes; the update is unchanged.
        self.run_backward(self.touch_unused(parts["loss"], self.potential))
        check.update("discriminator", opt_phi, f"lower lr_discriminator (now {self.lr_discriminator:g}); " + self.divergence_hint())
        self.step_optimizer(opt_phi)
        self.critic_step += 1
        logs: dict[str, Tensor | float] = {
            "train/divergence": parts["divergence"].detach(),
            "train/gradient_penalty": parts["gradient_penalty"].detach(),
        }
        if self.critic_step % self.n_critic == 0:
            # Potential (descent through the unrolled Euler steps).
            gen_u = self.random_stream(step, STREAM_POTENTIAL)
            rollout = self.flow(self.sample_reference(n, gen_u), create_graph=True)
            parts_u = self.potential_loss(rollout)
            check.finite("the potential loss", parts_u["loss"], self.divergence_hint())
            opt_u.zero_grad(set_to_none=True)
            # The loss reaches phi too (x_T goes through it; discarded below) but not the potential's
            # output bias (only grad_x U enters the flow): zero-touch it for DDP's reducer.
            self.run_backward(self.touch_unused(parts_u["loss"], self.potential))
            check.update("potential", opt_u, f"lower lr_potential (now {self.lr_potential:g}); " + self.divergence_hint())
            self.step_optimizer(opt_u)
            opt_phi.zero_grad(set_to_none=True)
            self.generator_step += 1
            logs["train/kinetic_energy"] = parts_u["kinetic_energy"].detach()
            logs["train/potential_loss"] = parts_u["loss"].detach()
            logs["train/potential_steps"] = float(self.generator_step)
        # on Lightning's log steps (see modules.generative, "What is logged when")
        self.log_train_metrics(logs, prog_bar=("train/divergence", "train/kinetic_energy"), batch_size=n)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        # Lightning runs evaluation under torch.inference_mode(); the indicators need grad_x, so turn
        # autograd back on here, and clone the batch (inference tensors cannot enter autograd).
        with autograd_enabled():
            real = unpack_batch(batch).x.clone()
            gen = self.random_stream(batch_idx, STREAM_VALIDATION)
            indicators = self.optimality_indicators(real, gen)
        for name, value in indicators.items():
            raise_if_diverged(f"validation {name}", value, where=self.where(), hint=self.divergence_hint())
        self.log_dict({f"val/{k}": v for k, v in indicators.items()}, sync_dist=True, batch_size=real.shape[0])
        return indicators
