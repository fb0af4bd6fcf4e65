"""Variational auto-encoder (Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv:1312.6114).

The VAE makes the latent spaces the worst-case generation method (seed 000) works in: images are
encoded to their posterior means, transported there, and decoded for figures.

Objective (the negative ELBO, averaged over the batch; ``beta = 1`` is the VAE, ``beta != 1`` the
beta-VAE of Higgins et al. 2017)::

    L(x) = E_{q(z|x)}[ -log p(x | z) ] + beta * KL( q(z|x) || N(0, I) )
    q(z|x) = N(mu(x), diag(sigma^2(x))),  z = mu + sigma * eps,  eps ~ N(0, I)  (reparameterisation)
    KL = 1/2 * sum_j ( mu_j^2 + sigma_j^2 - 1 - log sigma_j^2 )

Likelihoods ``p(x | z)`` with mean ``m = sigmoid(decoder(z))`` in ``[0, 1]``:

- ``"bernoulli"``: ``-log p = sum_pixels BCE(m, x)`` (the usual choice for images in [0, 1]);
- ``"gaussian"``: ``N(m, s^2 I)`` with the single scale ``s`` set to its maximum-likelihood value
  ``s^2 = mean (x - m)^2`` over the batch (the "optimal sigma-VAE" of Rybkin et al.,
  arXiv:2006.13202), so the reconstruction/KL balance needs no tuning:
  ``-log p = sum_pixels (x - m)^2 / (2 s^2) + D log s + D/2 log(2 pi)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_wass.checkpoints import CheckpointedModule
from lightning_wass.modules.spawned_process_group import ReleasesSpawnedProcessGroup
from lightning_wass._validation import check_choice, check_data_batch, check_int, check_positive, check_shape, raise_if_diverged
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.guard import guarded_optimizer_step
from lightning_wass.modules.optimizers import build_optimizer
from lightning_wass.nn.vae_nets import ARCHITECTURES, build_vae_nets, resolve_architecture

LIKELIHOODS = ("bernoulli", "gaussian")
GRID_IMAGES = 8  # images per row of the logged reconstruction grid


class VAE(ReleasesSpawnedProcessGroup, CheckpointedModule, pl.LightningModule):
    """Variational auto-encoder with an MLP or convolutional encoder/decoder chosen from the data shape.

    Args:
        data_shape: shape of one sample, e.g. ``(1, 8, 8)`` for scikit-learn digits, ``(1, 28, 28)``
            for MNIST, ``(3, 32, 32)`` for CIFAR-10, ``(d,)`` for vectors.
        latent_dim: dimension of the latent code ``z`` (>= 1).
        architecture: ``"mlp"``, ``"conv"`` or ``"auto"`` (convolutional for images whose sides are
            >= 16 and divisible by 4, such as 28x28 and 32x32; MLP otherwise).
        hidden: MLP hidden widths (default ``(256, 128)``) or convolutional channel widths
            (default ``(32, 64)``, one stride-2 layer each).
        beta: weight of the KL term (1 = the VAE; other values give the beta-VAE).
        lr: Adam learning rate.
        likelihood: ``"gaussian"`` (default; measured sharper on digits and MNIST) or ``"bernoulli"``
            (see the module docstring).

    Interface other modules rely on: :meth:`encode` ``x -> (mu, logvar)``, :meth:`embed` ``x -> mu``,
    :meth:`decode` ``z -> x`` in ``[0, 1]``, :meth:`sample` ``n -> (n, *data_shape)``.

    Override points for subclasses: :meth:`build_networks`, :meth:`reconstruction_nll`,
    :meth:`kl_divergence`, :meth:`loss_terms`.

    Logged: ``{train,val,test}/loss`` (negative ELBO per sample), ``/recon_mse`` (per-pixel MSE of
    the reconstruction; validation and test decode the posterior mean, training the sampled ``z``)
    and ``/kl``; at the end of each validation a grid of originals (top row) and reconstructions
    (bottom row) goes to every TensorBoard logger as ``val/reconstructions``.
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 8, 8),
        latent_dim: int = 8,
        architecture: str = "auto",
        hidden: Sequence[int] | None = None,
        beta: float = 1.0,
        lr: float = 1e-3,
        likelihood: str = "gaussian",
    ) -> None:
        super().__init__()
        self.data_shape: tuple[int, ...] = check_shape("data_shape", data_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        check_choice("architecture", architecture, ARCHITECTURES)
        self.architecture = resolve_architecture(self.data_shape, architecture)
        self.beta = check_positive("beta", beta, allow_zero=True)
        self.lr = check_positive("lr", lr)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        if hidden is not None and (isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence)):
            raise ValueError(f"hidden must be a sequence of positive ints (layer widths or channels), got {hidden!r}")
        self.hidden: tuple[int, ...] | None = None if hidden is None else tuple(hidden)
        self.save_hyperparameters()
        self.encoder, self.decoder = self.build_networks()
        self._grid: tuple[Tensor, Tensor] | None = None

    # ----------------------------------------------------------------- override points
    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """Return ``(encoder, decoder)``: ``encoder(x) -> (mu, logvar)``, ``decoder(z) -> logits`` of shape ``x``."""
        return build_vae_nets(self.data_shape, self.latent_dim, self.architecture, self.hidden)

    def reconstruction_nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-sample ``-log p(x | z)`` (shape ``(N,)``) given the decoder's logits."""
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        squared = (torch.sigmoid(logits) - x).pow(2).flatten(1)
        # optimal sigma-VAE: s^2 = batch MSE, floored at 1e-6 so a perfect fit stays finite
        log_s = 0.5 * torch.log(squared.mean().clamp_min(1e-6))
        dims = squared.shape[1]
        return 0.5 * squared.sum(1) * torch.exp(-2 * log_s) + dims * (log_s + 0.5 * math.log(2 * math.pi))

    def kl_divergence(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """Per-sample ``KL(N(mu, diag exp(logvar)) || N(0, I)) = 1/2 sum (mu^2 + exp(logvar) - 1 - logvar)``."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)

    def loss_terms(self, x: Tensor, *, deterministic_recon: bool = False) -> dict[str, Tensor]:
        """``{"loss", "nll", "kl", "recon_mse"}`` for a batch ``x`` (one reparameterised sample of ``z``).

        ``recon_mse`` decodes the posterior mean when ``deterministic_recon`` (validation), the sample otherwise.
        """
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.decoder(z)
        nll = self.reconstruction_nll(logits, x)
        kl = self.kl_divergence(mu, logvar)
        loss = (nll + self.beta * kl).mean()
        with torch.no_grad():
            recon = self.decode(mu) if deterministic_recon else torch.sigmoid(logits)
            recon_mse = (recon - x).pow(2).mean()
        return {"loss": loss, "nll": nll.mean(), "kl": kl.mean(), "recon_mse": recon_mse}

    # ----------------------------------------------------------------- the shared interface
    def check_input(self, x: Tensor) -> Tensor:
        """Raise ``ValueError`` naming both shapes when ``x``'s sample shape is not ``data_shape``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"VAE input x must be a tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"VAE was built for data_shape={self.data_shape} but got a batch x of shape {tuple(x.shape)} "
                f"(sample shape {tuple(x.shape[1:])}); set data_shape to the DataModule's data_shape"
            )
        if not x.is_floating_point():
            raise TypeError(f"VAE input must be a float tensor in [0, 1], got dtype {x.dtype}")
        return x.to(self._param_dtype())

    def _param_dtype(self) -> torch.dtype:
        """The networks' dtype: inputs of another float dtype (e.g. float64 latents) are cast to it."""
        return next(self.parameters()).dtype

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each of shape ``(N, latent_dim)``."""
        return self.encoder(self.check_input(x))

    def embed(self, x: Tensor) -> Tensor:
        """Deterministic latent code: the posterior mean ``mu(x)``, shape ``(N, latent_dim)``."""
        return self.encode(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood means ``sigmoid(decoder(z))`` in ``[0, 1]``, shape ``(N, *data_shape)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"decode expects latents of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        return torch.sigmoid(self.decoder(z.to(self._param_dtype())))

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction ``decode(embed(x))``."""
        return self.decode(self.embed(x))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` samples ``decode(z)``, ``z ~ N(0, I)``: shape ``(n, *data_shape)``, values in ``[0, 1]``."""
        check_int("n", n, minimum=1)
        z = torch.randn(n, self.latent_dim, device=self.device, dtype=self.dtype)
        return self.decode(z)

    # ----------------------------------------------------------------- Lightning hooks
    def _step(self, batch: Any, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        x = unpack_batch(batch).x
        terms = self.loss_terms(x, deterministic_recon=stage != "train")
        raise_if_diverged(
            f"VAE {stage} loss",
            terms["loss"].detach(),
            where=f"{type(self).__name__} step {self.global_step}",
            hint="lower lr, and check that the images lie in [0, 1] and the encoder's weights are finite",
        )
        on_step = stage == "train"
        for name in ("loss", "recon_mse", "kl"):
            self.log(
                f"{stage}/{name}",
                terms[name].detach() if name == "loss" else terms[name],
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=name == "loss" or (name == "recon_mse" and stage == "val"),
                batch_size=len(x),
                sync_dist=not on_step,
            )
        return x, terms

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if not self.__dict__.get("_range_checked"):  # the first batch of each fit
            x = unpack_batch(batch).x
            check_data_batch(type(self).__name__, x, self.data_shape, self)
            self.check_range(x)  # one host sync
            self.__dict__["_range_checked"] = True
        return self._step(batch, "train")[1]["loss"]

    def on_fit_start(self) -> None:
        self.__dict__["_range_checked"] = False

    def check_range(self, x: Tensor) -> None:
        """Both likelihoods model intensities in ``[0, 1]``: raise ``ValueError`` for data outside it."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
            return
        low, high = (float(v) for v in torch.stack([x.min(), x.max()]).tolist())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"VAE inputs must lie in [0, 1] (the {self.likelihood!r} likelihood models intensities in [0, 1]), "
                f"but a training batch holds values in [{low:.4g}, {high:.4g}]; rescale the data, e.g. "
                "(x - x.min()) / (x.max() - x.min()), or use one of our image DataModules"
            )

    max_update_ratio: float | None = 1e3
    """One step may move the networks' parameters at most this many times their norm (``None``: no bound)."""

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step, undone and reported when its result diverges (:mod:`lightning_wass.guard`)."""
        guarded_optimizer_step(
            self, optimizer, optimizer_closure, name="VAE", hint=f"lower lr (now {self.lr:g})",
            where=f"{type(self).__name__} step {self.global_step}",
        )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = self._step(batch, "val")
        if batch_idx == 0 and self._grid is None:
            k = min(GRID_IMAGES, len(x))
            self._grid = (x[:k].detach(), self(x[:k]).detach())

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Latent codes ``embed(x)`` of the batch."""
        return self.embed(unpack_batch(batch).x)

    def on_validation_epoch_end(self) -> None:
        grid, self._grid = self._grid, None
        if grid is None or self.trainer.sanity_checking or not self._is_image():
            return
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        from torchvision.utils import make_grid

        originals, recons = grid
        image = make_grid(torch.cat([originals, recons]).float().cpu().clamp(0, 1), nrow=len(originals), pad_value=1.0)
        for logger in loggers:
            logger.experiment.add_image("val/reconstructions", image, global_step=self.global_step)

    def _is_image(self) -> bool:
        return len(self.data_shape) == 3 and self.data_shape[0] in (1, 3)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(torch.optim.Adam, self.parameters(), lr=self.lr)
