r"""Wasserstein GAN with a weight-clipping, gradient-penalty or spectral-norm critic.

By Kantorovich-Rubinstein duality ``W1(P, Q) = sup_{||f||_L <= 1} E_P f - E_Q f``. The critic ``f``
maximises the critic gap ``E_data f(x) - E_z f(G(z))`` under a Lipschitz constraint and the
generator ``G`` minimises ``-E_z f(G(z))``:

- ``lipschitz="clip"``: WGAN (Arjovsky, Chintala & Bottou 2017, arXiv:1701.07875): clamp the critic's
  weights to ``[-0.01, 0.01]`` after every step; RMSprop lr 5e-5; 5 critic steps per generator step.
- ``lipschitz="gp"``: WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028): add
  ``lambda E (||grad f(x_hat)||_2 - 1)^2`` on interpolates ``x_hat = eps x + (1 - eps) G(z)``,
  ``lambda = 10``; Adam lr 1e-4, betas (0.5, 0.9); 5 critic steps per generator step.
- ``lipschitz="sn"``: spectral normalisation (Miyato et al. 2018, arXiv:1802.05957) of every critic
  weight (``torch.nn.utils.parametrizations.spectral_norm``); Adam lr 2e-4, betas (0.5, 0.999);
  1 critic step per generator step (their setting C).

Each training batch is one critic step on fresh data (the papers' inner loop); after every
``n_critic``-th critic step the generator takes one step. ``generator_step`` and ``critic_step``
count them (Lightning's ``global_step`` counts both). With a clipped or spectrally normalised critic
the gap is a *lower bound* of (a multiple of, for clipping) ``W1``; with the penalty it is an
estimate of ``W1`` itself. Validation logs the exact ``W1`` and ``W2`` to held-out data (POT) next to
the critic's estimate on the same points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import is_parametrized

from lightning_wass._validation import check_betas, check_choice, check_int, check_module, check_positive, check_shape
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.functional.wgan import clip_weights, critic_gap, generator_loss, gradient_penalty
from lightning_wass.modules.generative import LatentGenerativeModule, default_latent_dim, infer_latent_dim
from lightning_wass.modules.optimizers import build_optimizer
from lightning_wass.nn.gan_nets import (
    apply_spectral_norm,
    default_critic,
    default_generator,
    spectral_norm_from_bytes,
    spectral_norm_to_bytes,
)

__all__ = ["LIPSCHITZ_DEFAULTS", "WGAN"]

LIPSCHITZ_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {"optimizer": "rmsprop", "lr": 5e-5, "betas": None, "n_critic": 5},
    "gp": {"optimizer": "adam", "lr": 1e-4, "betas": (0.5, 0.9), "n_critic": 5},
    "sn": {"optimizer": "adam", "lr": 2e-4, "betas": (0.5, 0.999), "n_critic": 1},
}
"""The published optimiser and critic-step defaults of each Lipschitz constraint."""


class WGAN(LatentGenerativeModule):
    """Wasserstein GAN; the Lipschitz constraint is chosen by ``lipschitz``.

    Args:
        generator: ``z (n, latent_dim) -> x (n, *data_shape)``. Default: a 3 x 512 ReLU MLP for vectors,
            a DCGAN generator for images (:func:`lightning_wass.nn.gan_nets.default_generator`).
        critic: ``x -> f(x)`` of shape ``(n,)`` (or ``(n, 1)``). Default: a 3 x 512 ReLU MLP / a
            DCGAN-style critic without BatchNorm. With ``lipschitz="sn"`` every Linear/Conv layer of
            the critic is spectrally normalised here.
        data_shape: shape of one sample, e.g. ``[2]`` or ``[1, 28, 28]``. ``None``: taken from the
            DataModule's ``data_shape`` at ``Trainer.fit`` (the default networks are built then).
        latent_dim: noise dimension; default 100 for images, the data dimension for vectors, or the
            given generator's ``latent_dim``/``in_features``.
        lipschitz: ``"clip"``, ``"gp"`` or ``"sn"`` (see the module docstring).
        n_critic: critic steps per generator step (default: 5 for clip and gp, 1 for sn).
        lr: learning rate of both optimisers (default: 5e-5 clip, 1e-4 gp, 2e-4 sn).
        betas: Adam betas for gp/sn (default (0.5, 0.9) gp, (0.5, 0.999) sn); unused with clip (RMSprop).
        clip_value: weight-clipping bound ``c`` (clip only).
        gp_weight: gradient-penalty weight ``lambda`` (gp only).
        eval_samples: held-out points (and as many samples) for the exact ``W1``/``W2`` at validation
            (0 = off).
        seed: seed of the training noise stream (independent of the global seed).

    Overridable pieces: :meth:`critic_objective` (the critic's loss and logged figures) and
    :meth:`generator_objective`.
    """

    def __init__(
        self,
        generator: nn.Module | None = None,
        critic: nn.Module | None = None,
        data_shape: Sequence[int] | None = None,
        latent_dim: int | None = None,
        lipschitz: str = "gp",
        n_critic: int | None = None,
        lr: float | None = None,
        betas: tuple[float, float] | None = None,
        clip_value: float = 0.01,
        gp_weight: float = 10.0,
        eval_samples: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.lipschitz = check_choice("lipschitz", lipschitz, LIPSCHITZ_DEFAULTS)
        defaults = LIPSCHITZ_DEFAULTS[self.lipschitz]
        self.n_critic = check_int("n_critic", defaults["n_critic"] if n_critic is None else n_critic, minimum=1)
        self.lr = check_positive("lr", defaults["lr"] if lr is None else lr)
        self.betas = check_betas("betas", betas) if betas is not None else defaults["betas"]
        self.clip_value = check_positive("clip_value", clip_value)
        self.gp_weight = check_positive("gp_weight", gp_weight, allow_zero=True)
        check_module("generator", generator, optional=True)
        check_module("critic", critic, optional=True)
        self.save_hyperparameters(ignore=["generator", "critic"])
        self.automatic_optimization = False
        self.init_latent(seed=seed, eval_samples=eval_samples)
        self.generator = generator  # type: ignore[assignment]
        self.critic = critic  # type: ignore[assignment]
        self.latent_dim = infer_latent_dim(generator, latent_dim)
        self.data_shape = None
        if data_shape is not None:
            self._build(data_shape)
        elif critic is not None and generator is not None:
            self._finish_networks()

    counter_names = ("generator_step", "critic_step", "noise_draw")

    # ------------------------------------------------------------------ pickling (ddp_spawn)
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        critic = state["_modules"].get("critic")
        if critic is not None and any(is_parametrized(m) for m in critic.modules()):
            modules = dict(state["_modules"])
            modules["critic"] = None
            state["_modules"] = modules
            state["_critic_bytes"] = spectral_norm_to_bytes(critic)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        critic_bytes = state.pop("_critic_bytes", None)
        super().__setstate__(state)
        if critic_bytes is not None:
            self._modules["critic"] = spectral_norm_from_bytes(critic_bytes)

    # ------------------------------------------------------------------ networks
    def _build(self, data_shape: Sequence[int]) -> None:
        shape = check_shape("data_shape", data_shape)
        self.data_shape = shape
        if self.latent_dim is None:
            self.latent_dim = default_latent_dim(shape)
        if self.generator is None:
            self.generator = default_generator(shape, self.latent_dim)
        if self.critic is None:
            self.critic = default_critic(shape)
        self.hparams["data_shape"] = list(shape)
        self._finish_networks()

    def _finish_networks(self) -> None:
        self.hparams["latent_dim"] = self.latent_dim
        if self.lipschitz == "sn":
            apply_spectral_norm(self.critic)

    def setup(self, stage: str) -> None:
        if self.generator is not None and self.critic is not None:
            return
        shape = getattr(getattr(self.trainer, "datamodule", None), "data_shape", None)
        if shape is None:
            raise ValueError(
                "WGAN needs data_shape (or both a generator and a critic) when the DataModule has no data_shape"
            )
        self._build(shape)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if self.generator is None or self.critic is None:
            raise ValueError("WGAN has no networks: give data_shape, or a DataModule with data_shape")
        if self.lipschitz == "clip":
            return [
                build_optimizer(torch.optim.RMSprop, self.generator.parameters(), lr=self.lr),
                build_optimizer(torch.optim.RMSprop, self.critic.parameters(), lr=self.lr),
            ]
        return [
            build_optimizer(torch.optim.Adam, self.generator.parameters(), lr=self.lr, betas=self.betas),
            build_optimizer(torch.optim.Adam, self.critic.parameters(), lr=self.lr, betas=self.betas),
        ]

    def critic_score(self, x: Tensor) -> Tensor:
        """``f(x)`` as a vector of shape ``(n,)``."""
        return self.critic(x).reshape(len(x))

    # ------------------------------------------------------------------ objectives (overridable)
    def critic_objective(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's loss ``mean f(fake) - mean f(real) [+ lambda GP]`` and the figures to log."""
        gap = critic_gap(self.critic_score(real), self.critic_score(fake))
        loss = -gap
        logs = {"train/critic_W1": gap.detach()}
        if self.lipschitz == "gp":
            penalty = gradient_penalty(self.critic_score, real, fake, self.uniform(len(real)))
            loss = loss + self.gp_weight * penalty
            logs["train/gradient_penalty"] = penalty.detach()
        logs["train/critic_loss"] = loss.detach()
        return loss, logs

    def generator_objective(self, fake: Tensor) -> Tensor:
        """The generator's loss ``-mean f(G(z))``."""
        return generator_loss(self.critic_score(fake))

    # ------------------------------------------------------------------ training
    def critic_hint(self) -> str:
        """What to change when the critic diverges, for this Lipschitz constraint."""
        if self.lipschitz == "clip":
            return f"lower lr (now {self.lr:g}; WGAN's RMSprop default is 5e-5)"
        if self.lipschitz == "gp":
            return f"lower lr (now {self.lr:g}) or gp_weight (now {self.gp_weight:g})"
        return f"lower lr (now {self.lr:g}; SN-GAN's default is 2e-4)"

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = unpack_batch(batch).x
        n = len(real)
        opt_g, opt_c = self.optimizers()
        with self.guarded_step() as check:
            self.check_batch(real, check)
            with torch.no_grad():
                fake = self.generate(self.noise(n), real)
            loss_c, logs = self.critic_objective(real, fake)
            self.check_finite("the critic loss", loss_c, self.critic_hint())
            opt_c.zero_grad(set_to_none=True)
            # The generator is not in this graph; under DDP zero_touch gives it zero gradients so the reducer completes.
            self.run_backward(self.touch_unused(loss_c, self.generator))
            check.update("critic", opt_c, self.critic_hint())
            self.step_optimizer(opt_c)
            if self.lipschitz == "clip":
                clip_weights(self.critic.parameters(), self.clip_value)
            self.critic_step += 1

            stepped_generator = self.critic_step % self.n_critic == 0
            if stepped_generator:
                fake = self.generate(self.noise(n), real)
                loss_g = self.generator_objective(fake)
                hint = f"lower lr (now {self.lr:g}) or raise n_critic (now {self.n_critic})"
                self.check_finite("the generator loss", loss_g, hint)
                self.check_samples(fake, real, hint)
                opt_g.zero_grad(set_to_none=True)
                self.run_backward(loss_g)  # reaches the critic too (it is in the graph); its grads are discarded
                check.update("generator", opt_g, hint)
                self.step_optimizer(opt_g)
                opt_c.zero_grad(set_to_none=True)
                self.generator_step += 1
        if stepped_generator:
            logs["train/generator_loss"] = loss_g.detach()
        logs["train/generator_step"] = float(self.generator_step)
        self.log_train_metrics(logs)  # on Lightning's log steps (see modules.generative, "What is logged when")

    # ------------------------------------------------------------------ validation extras
    def validation_metrics(self, held_out: Tensor, generated: Tensor) -> dict[str, float]:
        """The critic's estimate of ``W1`` on the same held-out and generated points as the exact one."""
        with torch.no_grad():
            gap = critic_gap(self.critic_score(held_out.to(self.device)), self.critic_score(generated.to(self.device)))
        return {"val/critic_W1": float(gap)}
