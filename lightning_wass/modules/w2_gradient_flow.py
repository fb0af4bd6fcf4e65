r"""W2-FE: a generator trained along the forward-Euler W2 gradient flow, with persistent training.

Huang & Malik, *Generative Modeling by Minimizing the Wasserstein-2 Loss* (2024, arXiv:2406.13619).
The distribution-dependent ODE ``dY_t/dt = -grad phi_t(Y_t)``, with ``phi_t`` the Kantorovich
potential from the law ``mu_t`` of ``Y_t`` to the data distribution ``P``, is the W2 gradient flow
of ``W2^2(., P) / 2``; its marginals converge to ``P`` exponentially. Since the optimal map is
``T_t = id - grad phi_t``, the velocity is ``T_t(y) - y``. W2-FE discretises the flow with forward
Euler on the generator's output ``y = G_theta(z)``:

    y_hat = y + dt (T(y) - y),                                            (one Euler step)
    theta <- argmin_theta  (1/2) mean_i ||G_theta(z_i) - y_hat_i||^2,    (K regression steps)

and *persistent training*: the regression takes ``K = persistent_steps`` optimiser steps on the same
``z`` (and targets) before the next outer iteration draws new ones.

The map ``T`` is estimated per outer iteration from a generated batch and a data batch of the same
size, by one of three estimators (``transport=``):

- ``"adversarial"``: **the paper's estimator.** Huang & Malik estimate the flow's direction with the
  discriminator of W2-GAN (Leygonie et al., arXiv:1906.09691): a potential pair trained
  adversarially on the L2-regularised Kantorovich dual of ``W2^2 / 2``,

      max_{phi, psi}  E_P phi(x) + E_mu psi(y) - lambda E_{P (x) mu} (phi(x) + psi(y) - ||x - y||^2 / 2)_+^2,

  with ``psi = -phi + eps`` parametrised as in W2-GAN (two networks, ``potential`` = ``phi`` on the
  data side and ``potential_correction`` = ``eps``), ``lambda = dual_penalty``, ``potential_steps``
  Adam steps per outer iteration (warm-started), and ``T(y) = y - grad psi(y)``
  (:func:`lightning_wass.functional.w2gan_dual_loss`). The W2-FE authors' code moves the generated
  points along ``+grad phi(y)`` instead (the data-side potential's gradient at generated points),
  which equals ``-grad psi(y)`` only where ``eps`` is flat; on two Gaussians with a non-trivial
  linear map it is several times further from the closed-form map than ``y - grad psi(y)``, so we
  use the latter (the map the dual characterises).
- ``"exact"`` (the default): exact minibatch OT (``ot.emd`` through
  :func:`lightning_wass.ot.barycentric_map`: for equal batches the optimal matching). Not in the
  paper; on the 2-D benchmarks it is the fastest of the three (``benchmarks/generative_2d.py``).
- ``"potential"``: a learned potential network ``phi`` with ``T(y) = y - grad phi(y)``, trained for
  ``potential_steps`` Adam steps per outer iteration on the semi-dual
  ``max_phi mean phi(y) + mean_x min_y (||x - y||^2 / 2 - phi(y))`` with a minibatch c-transform
  (warm-started). Not the paper's estimator either.

Counters: ``outer_step`` (Euler steps, one per training batch) and ``generator_step`` (generator
updates, ``K`` per outer step). Logged: ``train/W2_minibatch`` (the W2 between the generated and data
batches: the loss the flow decreases), ``train/regression_loss``; validation logs the exact ``W1`` and
``W2`` to held-out data (POT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_wass._validation import check_betas, check_choice, check_int, check_module, check_positive, check_shape
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.functional.w2_gradient_flow import (
    adversarial_map,
    forward_euler_targets,
    minibatch_ot_targets,
    potential_map,
    semi_dual_loss,
    w2gan_dual_loss,
)
from lightning_wass.modules.generative import LatentGenerativeModule, default_latent_dim, infer_latent_dim
from lightning_wass.modules.optimizers import build_optimizer
from lightning_wass.nn.gan_nets import default_generator
from lightning_wass.nn.mlp import MLP

__all__ = ["TRANSPORTS", "W2GradientFlow"]

TRANSPORTS = ("exact", "potential", "adversarial")
"""Estimators of the OT map ``T`` that :class:`W2GradientFlow` accepts."""

DEFAULT_POTENTIAL_STEPS = {"potential": 5, "adversarial": 25}
"""``potential_steps`` when it is ``None``, per estimator."""


class _VectorPotential(nn.Module):
    """Scalar potential ``phi: (n, *data_shape) -> (n,)``: a SiLU MLP on the flattened input (smooth gradients)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        self.net = MLP(dim, 1, hidden, activation="silu")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(-1)


class W2GradientFlow(LatentGenerativeModule):
    """W2-FE generator (forward-Euler W2 gradient flow with persistent training).

    Args:
        generator: ``z (n, latent_dim) -> x (n, *data_shape)``. Default: a 3 x 512 ReLU MLP for vectors,
            a DCGAN generator for images (the same defaults as :class:`~lightning_wass.WGAN`, so the
            two can be compared with the same generator).
        potential: the potential network ``phi: x -> (n,)`` for ``transport="potential"`` (the
            generated-side potential) and ``transport="adversarial"`` (the data-side potential of
            W2-GAN); default: a 3 x 256 SiLU MLP on the flattened input; ignored with ``"exact"``.
        potential_correction: ``eps: x -> (n,)`` of ``psi = -phi + eps`` for ``transport="adversarial"``
            (default as ``potential``); ignored otherwise.
        data_shape: shape of one sample; ``None``: the DataModule's ``data_shape`` at ``Trainer.fit``.
        latent_dim: noise dimension (default as :class:`~lightning_wass.WGAN`).
        dt: forward-Euler step ``dt > 0`` (``dt = 1`` regresses straight onto ``T(y)``).
        persistent_steps: ``K >= 1`` regression steps on the same ``z`` per outer iteration.
        lr: Adam learning rate of the generator.
        betas: Adam betas of the generator.
        transport: ``"exact"`` (minibatch OT), ``"potential"`` (semi-dual potential) or
            ``"adversarial"`` (the paper's W2-GAN potential pair).
        potential_steps: estimator updates per outer iteration (``"potential"``, ``"adversarial"``);
            ``None``: 5 for the semi-dual, 25 for the adversarial pair (which must track a moving
            generated distribution with two networks: with 5 it lags and the flow stalls far from
            the data, ``benchmarks/generative_2d.py``).
        potential_lr: Adam learning rate of the potential(s).
        dual_penalty: ``lambda > 0`` of the W2-GAN penalty (``transport="adversarial"``); larger is
            closer to unregularised OT (``lambda = 1 / (4 eps)`` of the L2-regularised dual) and
            stiffer to train.
        eval_samples: held-out points (and as many samples) for the exact ``W1``/``W2`` at validation.
        seed: seed of the training noise stream.

    Overridable pieces: :meth:`transport_targets` (the OT-map estimator and Euler step) and
    :meth:`regression_loss`.
    """

    def __init__(
        self,
        generator: nn.Module | None = None,
        potential: nn.Module | None = None,
        potential_correction: nn.Module | None = None,
        data_shape: Sequence[int] | None = None,
        latent_dim: int | None = None,
        dt: float = 0.5,
        persistent_steps: int = 5,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        transport: str = "exact",
        potential_steps: int | None = None,
        potential_lr: float = 3e-3,
        dual_penalty: float = 100.0,
        eval_samples: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dt = check_positive("dt", dt)
        self.persistent_steps = check_int("persistent_steps", persistent_steps, minimum=1)
        self.lr = check_positive("lr", lr)
        self.betas = check_betas("betas", betas)
        self.transport = check_choice("transport", transport, TRANSPORTS)
        if potential_steps is None:
            potential_steps = DEFAULT_POTENTIAL_STEPS.get(transport, 5)
        self.potential_steps = check_int("potential_steps", potential_steps, minimum=1)
        self.potential_lr = check_positive("potential_lr", potential_lr)
        self.dual_penalty = check_positive("dual_penalty", dual_penalty)
        for name, value in (("generator", generator), ("potential", potential), ("potential_correction", potential_correction)):
            check_module(name, value, optional=True)
        self.save_hyperparameters(ignore=["generator", "potential", "potential_correction"])
        self.automatic_optimization = False
        self.init_latent(seed=seed, eval_samples=eval_samples)
        self.generator = generator  # type: ignore[assignment]
        self.potential = potential if self.transport != "exact" else None
        self.potential_correction = potential_correction if self.transport == "adversarial" else None
        self.latent_dim = infer_latent_dim(generator, latent_dim)
        self.data_shape = None
        if data_shape is not None:
            self._build(data_shape)

    counter_names = ("generator_step", "outer_step", "noise_draw")

    # ------------------------------------------------------------------ networks
    def _build(self, data_shape: Sequence[int]) -> None:
        shape = check_shape("data_shape", data_shape)
        self.data_shape = shape
        if self.latent_dim is None:
            self.latent_dim = default_latent_dim(shape)
        if self.generator is None:
            self.generator = default_generator(shape, self.latent_dim)
        dim = int(torch.Size(shape).numel())
        if self.transport != "exact" and self.potential is None:
            self.potential = _VectorPotential(dim)
        if self.transport == "adversarial" and self.potential_correction is None:
            self.potential_correction = _VectorPotential(dim)
        self.hparams["data_shape"] = list(shape)
        self.hparams["latent_dim"] = self.latent_dim

    def setup(self, stage: str) -> None:
        if self.generator is not None and not self._missing_estimator_networks():
            return
        shape = getattr(getattr(self.trainer, "datamodule", None), "data_shape", None)
        if shape is None:
            raise ValueError("W2GradientFlow needs data_shape (or a generator) when the DataModule has no data_shape")
        self._build(shape)

    def _missing_estimator_networks(self) -> bool:
        if self.transport == "exact":
            return False
        return self.potential is None or (self.transport == "adversarial" and self.potential_correction is None)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if self.generator is None:
            raise ValueError("W2GradientFlow has no generator: give data_shape, or a DataModule with data_shape")
        optimizers = [build_optimizer(torch.optim.Adam, self.generator.parameters(), lr=self.lr, betas=self.betas)]
        estimator = self._extra_networks()
        if estimator:
            parameters = [p for net in estimator for p in net.parameters()]
            optimizers.append(build_optimizer(torch.optim.Adam, parameters, lr=self.potential_lr))
        return optimizers

    def _extra_networks(self) -> list[nn.Module]:
        return [net for net in (self.potential, self.potential_correction) if net is not None]

    def conjugate_potential(self, y: Tensor) -> Tensor:
        """``psi(y) = -phi(y) + eps(y)``: the generated-side potential of the W2-GAN pair (``"adversarial"``)."""
        assert self.potential is not None and self.potential_correction is not None
        return -self.potential(y).reshape(-1) + self.potential_correction(y).reshape(-1)

    # ------------------------------------------------------------------ pieces (overridable)
    def transport_targets(self, generated: Tensor, data: Tensor) -> tuple[Tensor, Tensor]:
        """Forward-Euler targets ``y + dt (T(y) - y)`` and the minibatch ``W2`` estimate.

        ``transport="exact"``: ``T`` = barycentric projection of the exact minibatch OT plan.
        ``transport="potential"``: ``potential_steps`` semi-dual updates of ``phi``, then
        ``T(y) = y - grad phi(y)``. ``transport="adversarial"``: ``potential_steps`` updates of the
        W2-GAN pair, then ``T(y) = y - grad psi(y)``. For the learned estimators the ``W2`` figure
        is ``sqrt(mean ||T(y) - y||^2)``.
        """
        if self.transport == "exact":
            return minibatch_ot_targets(generated, data, self.dt)
        if self.transport == "potential":
            assert self.potential is not None
            self._fit_estimator(lambda: semi_dual_loss(self.potential, generated, data), "potential (semi-dual) loss")
            mapped = potential_map(self.potential, generated)
        else:
            assert self.potential is not None
            self._fit_estimator(
                lambda: w2gan_dual_loss(self.potential, self.conjugate_potential, data, generated, self.dual_penalty),
                "W2-GAN dual loss",
            )
            mapped = adversarial_map(self.conjugate_potential, generated)
        w2 = (mapped - generated.detach()).flatten(1).square().sum(1).mean().sqrt()
        return forward_euler_targets(generated.detach(), mapped, self.dt), w2

    def _fit_estimator(self, loss_fn: Callable[[], Tensor], what: str) -> None:
        """``potential_steps`` Adam steps of the estimator's network(s) on ``loss_fn()`` (warm-started)."""
        opt = self.optimizers()[1]
        hint = f"lower potential_lr (now {self.potential_lr:g})" + (
            f" or dual_penalty (now {self.dual_penalty:g})" if self.transport == "adversarial" else ""
        )
        check = self.current_check()
        if check is not None:
            check.update("potential", opt, hint)
        for _ in range(self.potential_steps):
            loss = loss_fn()
            self.check_finite(what, loss, hint)
            opt.zero_grad(set_to_none=True)
            self.run_backward(self.touch_unused(loss, self.generator))
            self.step_optimizer(opt)

    def regression_loss(self, output: Tensor, targets: Tensor) -> Tensor:
        """``(1/2) mean_i ||G(z_i) - y_hat_i||^2``."""
        return 0.5 * (output - targets).flatten(1).square().sum(1).mean()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = unpack_batch(batch).x
        z = self.noise(len(real))
        opt_g = self.optimizers()[0] if self.potential is not None else self.optimizers()
        hint = f"lower dt (now {self.dt:g}) or lr (now {self.lr:g})"
        with self.guarded_step() as check:
            self.check_batch(real, check)
            with torch.no_grad():
                generated = self.generate(z, real)
            self.check_samples(generated, real, hint)
            if self.transport == "exact":
                check.verify()  # the OT solver refuses non-finite points: name the module and step first
            targets, w2 = self.transport_targets(generated, real)
            self.check_finite("the minibatch W2 (OT targets)", w2, hint)
            self.check_samples(targets, real, f"the Euler targets y + dt (T(y) - y) overshoot: lower dt (now {self.dt:g})", what="the Euler targets")
            extra = self._extra_networks()
            first = last = None
            check.update("generator", opt_g, hint)
            for _ in range(self.persistent_steps):
                loss = self.regression_loss(self.generator(z), targets)
                self.check_finite("the regression loss", loss, hint)
                opt_g.zero_grad(set_to_none=True)
                # Only the generator is in this graph; zero_touch keeps DDP's reducer complete for phi.
                self.run_backward(self.touch_unused(loss, *extra) if extra else loss)
                self.step_optimizer(opt_g)
                self.generator_step += 1
                first = loss.detach() if first is None else first
                last = loss.detach()
            self.outer_step += 1
        self.log_train_metrics(  # on Lightning's log steps (see modules.generative, "What is logged when")
            {
                "train/W2_minibatch": w2.detach().float(),
                "train/regression_loss": first,
                "train/regression_loss_last": last,
                "train/generator_step": float(self.generator_step),
            }
        )
