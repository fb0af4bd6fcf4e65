"""OTMDRClassifier: a classifier, an ensemble or a Bayesian net trained with OT-MDR, SAM or the base optimizer.

OT-MDR (arXiv:2306.04178) in its three settings:

- single model (Dirac centre distribution): ``network`` alone;
- ensemble (uniform centre over ``M`` models): ``ensemble_size=M``; the members are trained together
  by one optimizer (so they are perturbed together with one global gradient norm) on the mixture
  likelihood ``log p(y|x) = log (1/M) sum_m softmax(f_m(x))_y``;
- Bayesian net (mean-field Gaussian centre): a ``network`` built from
  :class:`~lightning_wass.nn.BayesLinear` / :class:`~lightning_wass.nn.BayesConv2d`; the loss is the
  negative ELBO per sample ``NLL + kl_weight * KL(q || p) / train_size``; the optimizer perturbs
  the means (and the sigmas with ``perturb_sigma=True``); all passes of one step share the weight
  noise ``eps`` (common random numbers, the official code's ``reuse_eps``); predictions average
  ``mc_samples`` Monte-Carlo draws.

``method`` picks the optimizer: ``"otmdr"`` (:class:`~lightning_wass.optim.OTMDR`), ``"sam"``
(:class:`~lightning_wass.optim.SAM`) or ``"base"`` (the base optimizer alone). Training uses
Lightning's automatic optimization, so precision, gradient clipping, accumulation and DDP are
Lightning's; the training step honours the optimizer's chunks (``chunked_ascent=True`` is the
official variant: ascent steps on batch halves, the final pass on the whole batch).

Validation and test log accuracy, NLL, ECE (15 bins, L1; torchmetrics) and the Brier score
``sum_c (p_c - 1[c = y])^2`` (averaged over samples) as ``val/acc``, ``val/nll``, ``val/ece``,
``val/brier`` (``test/...``).

Overridable pieces: :meth:`log_probs` (the model's predictive log-probabilities),
:meth:`data_loss` (NLL with label smoothing), :meth:`kl_term`, :meth:`build_optimizer`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_wass.checkpoints import CheckpointedModule
from lightning_wass.modules.spawned_process_group import ReleasesSpawnedProcessGroup
from lightning_wass._validation import DivergenceError, check_choice, check_fraction, check_int, check_positive, raise_if_diverged
from lightning_wass.datamodules import unpack_batch
from lightning_wass.guard import guarded_optimizer_step
from lightning_wass.modules.classifier_metrics import (
    PairwiseDisagreement,
    calibration_metrics,
    classifier_metrics,
    fit_temperature,
    tempered,
)
from lightning_wass.nn.bayesian import bayesian_parameter_groups, is_bayesian, kl_divergence, shared_noise
from lightning_wass.nn.classifiers import Ensemble
from lightning_wass.optim import OTMDR, SAM
from lightning_wass.optim.otmdr import CHAIN_DIRECTIONS, NORM_STATS_FREEZES, PARTICLE_REDUCTIONS
from lightning_wass.seeding import mix_seed
from lightning_wass.optim.passes import PassInfo
from lightning_wass.plugins.sam_precision import SAMMixedPrecision

METHODS = ("otmdr", "sam", "base")
BNN_NOISE = ("shared", "official")
BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
SCHEDULERS = ("cosine", "plateau", "none")


class OTMDRClassifier(ReleasesSpawnedProcessGroup, CheckpointedModule, pl.LightningModule):
    """Classifier / ensemble / BNN trained with OT-MDR, SAM or the plain base optimizer.

    Args:
        network: the classifier (logits ``(N, num_classes)``); Bayesian if it contains Bayesian layers.
            A list of networks (e.g. a ResNet, a MobileNet and an EfficientNet, as in the paper) or an
            :class:`~lightning_wass.nn.Ensemble` is an ensemble of those members.
        num_classes: number of classes (checked against the labels and the network's output width).
        ensemble_size: ``M`` members (``network`` plus ``M - 1`` re-initialised copies) for one network.
        method: ``"otmdr"``, ``"sam"`` or ``"base"``.
        base_optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr, momentum, weight_decay, nesterov: base optimizer settings (``momentum``/``nesterov`` for SGD).
        scheduler: ``"cosine"`` (cosine annealing over the run, per epoch), ``"plateau"`` (learning rate
            divided by 10 after ``plateau_patience`` epochs without a lower ``val/nll``: the official BNN
            run) or ``"none"``.
        plateau_patience: epochs without improvement before ``"plateau"`` lowers the learning rate.
        rho: radius (SAM), or OT-MDR radius per ascent step (a number is used for every step).
        ascent_steps: OT-MDR chain length (default ``len(rho)`` for a list, else 2).
        num_particles: OT-MDR particles ``K``.
        noise_std: OT-MDR Langevin noise.
        adaptive: ASAM geometry (SAM and OT-MDR).
        chunked_ascent: OT-MDR ascent passes on disjoint chunks of the batch (official variant).
        chain_direction: ``"summed"`` (official single model), ``"averaged"`` (official ensembles) or ``"current"``.
        particle_reduction: OT-MDR: ``"mean"`` or ``"sum"`` (official) of the particles' gradients.
        freeze_norm_stats: ``True`` (BatchNorm statistics from the first pass only), ``"final_passes"``
            (updated on the ascent passes too: the official code) or ``False``.
        sync_ascent: DDP: perturb from replica-averaged gradients (``False``: per replica, m-sharpness).
        perturb_sigma: BNN: perturb the sigmas too (default: the means only).
        kl_weight: BNN: weight of the KL term (1 = the ELBO).
        train_size: BNN: number of training samples that divides the KL (default: the train set size).
        train_samples: BNN: Monte-Carlo weight draws per training forward (log-mean-exp of their
            likelihoods); each draw has its own noise.
        bnn_noise: BNN: ``"shared"`` (the same draws on every pass of a step) or ``"official"`` (fresh
            draws per ascent pass, the final pass reusing the last one); see :meth:`draw_seeds`.
        mc_samples: BNN: Monte-Carlo draws for validation / test / prediction.
        label_smoothing: label smoothing of the training NLL (0.1 in the paper's CIFAR runs).
        label_smoothing_mode: ``"uniform"`` (``eps / C`` on every class) or ``"others"`` (``eps / (C - 1)``
            on the wrong classes, the official code); see :meth:`data_loss`.
        ece_bins: bins of the expected calibration error.
        seed: seeds the OT-MDR noise and the BNN's shared weight noise.
    """

    def __init__(
        self,
        network: nn.Module | list[nn.Module],
        num_classes: int = 10,
        ensemble_size: int = 1,
        method: str = "otmdr",
        base_optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        scheduler: str = "cosine",
        plateau_patience: int = 6,
        rho: float | list[float] = 0.05,
        ascent_steps: int | None = None,
        num_particles: int = 1,
        noise_std: float = 1e-4,
        adaptive: bool = False,
        chunked_ascent: bool = True,
        chain_direction: str = "summed",
        particle_reduction: str = "mean",
        freeze_norm_stats: bool | str = True,
        sync_ascent: bool = True,
        perturb_sigma: bool = False,
        kl_weight: float = 1.0,
        train_size: int | None = None,
        train_samples: int = 1,
        bnn_noise: str = "shared",
        mc_samples: int = 10,
        label_smoothing: float = 0.0,
        label_smoothing_mode: str = "uniform",
        ece_bins: int = 15,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        check_int("ensemble_size", ensemble_size, minimum=1)
        self.method = check_choice("method", method, METHODS)
        check_choice("base_optimizer", base_optimizer, BASE_OPTIMIZERS)
        check_positive("lr", lr)
        check_fraction("momentum", momentum)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        check_choice("scheduler", scheduler, SCHEDULERS)
        check_int("plateau_patience", plateau_patience, minimum=0)
        if isinstance(rho, (list, tuple)):
            self.rho: tuple[float, ...] = tuple(check_positive(f"rho[{i}]", r, allow_zero=True) for i, r in enumerate(rho))
            if not self.rho:
                raise ValueError("rho must not be empty")
            if ascent_steps is not None and check_int("ascent_steps", ascent_steps, minimum=1) != len(self.rho):
                raise ValueError(f"rho has {len(self.rho)} radii but ascent_steps={ascent_steps}")
            if self.method == "sam" and len(self.rho) != 1:
                raise ValueError(f"method='sam' takes one radius; got rho={list(self.rho)} (a list is for OT-MDR's ascent steps)")
        else:
            steps = 2 if ascent_steps is None else check_int("ascent_steps", ascent_steps, minimum=1)
            self.rho = (check_positive("rho", rho, allow_zero=True),) * (1 if self.method == "sam" else steps)
        check_int("num_particles", num_particles, minimum=1)
        check_positive("noise_std", noise_std, allow_zero=True)
        if chunked_ascent is not None and not isinstance(chunked_ascent, bool):
            raise TypeError(f"chunked_ascent must be True, False or None, got {chunked_ascent!r}")
        check_choice("chain_direction", chain_direction, CHAIN_DIRECTIONS)
        check_choice("particle_reduction", particle_reduction, PARTICLE_REDUCTIONS)
        if freeze_norm_stats not in NORM_STATS_FREEZES:
            raise ValueError(f"freeze_norm_stats must be True, False or 'final_passes', got {freeze_norm_stats!r}")
        check_positive("kl_weight", kl_weight, allow_zero=True)
        if train_size is not None:
            check_int("train_size", train_size, minimum=1)
        check_int("train_samples", train_samples, minimum=1)
        check_choice("bnn_noise", bnn_noise, BNN_NOISE)
        check_int("mc_samples", mc_samples, minimum=1)
        check_fraction("label_smoothing", label_smoothing)
        check_choice("label_smoothing_mode", label_smoothing_mode, ("uniform", "others"))
        check_int("ece_bins", ece_bins, minimum=1)
        check_int("seed", seed)

        self.model = Ensemble.build(network, ensemble_size)
        self.bayesian = is_bayesian(self.model)
        self._train_size = train_size
        self.val_metrics = classifier_metrics(self.num_classes, ece_bins, "val/")
        self.test_metrics = classifier_metrics(self.num_classes, ece_bins, "test/")
        self.test_scaled_metrics = calibration_metrics(self.num_classes, ece_bins, "test/", suffix="_ts")
        self.val_disagreement = PairwiseDisagreement()
        self.test_disagreement = PairwiseDisagreement()
        self.register_buffer("temperature", torch.ones(()))  # fitted on the validation split, kept in checkpoints
        self._val_outputs: list[tuple[Tensor, Tensor]] = []

    # ------------------------------------------------------------------ the model
    def forward(self, x: Tensor) -> Tensor:
        """Predictive probabilities ``(N, num_classes)`` (averaged over members and MC draws)."""
        return self.log_probs(x, self._eval_samples()).exp()

    def _eval_samples(self) -> int:
        return self.hparams.mc_samples if self.bayesian else 1

    def log_probs(self, x: Tensor, samples: int = 1, draw_seeds: list[int] | None = None) -> Tensor:
        """``log (1 / (M S)) sum_{m, s} softmax(f_m(x; w_s))``: the mixture over members and weight draws.

        ``draw_seeds``: one seed per draw ``w_s`` (the training step's common random numbers, see
        :meth:`draw_seeds`); without them every draw is fresh.
        """
        return self.mixture(self.member_log_probs(x, samples, draw_seeds))

    def member_log_probs(self, x: Tensor, samples: int = 1, draw_seeds: list[int] | None = None) -> Tensor:
        """``log softmax(f_m(x; w_s))`` of every draw ``s`` and member ``m``: ``(S, M, N, K)``."""
        if draw_seeds is not None and len(draw_seeds) != samples:
            raise ValueError(f"draw_seeds has {len(draw_seeds)} seeds for {samples} draws")
        draws = []
        for s in range(samples):
            with shared_noise(self.model, draw_seeds[s]) if draw_seeds is not None else nullcontext():
                draws.append(F.log_softmax(self.model(x).float(), dim=-1))  # each (M, N, K)
        return torch.stack(draws)

    @staticmethod
    def mixture(member_log_probs: Tensor) -> Tensor:
        """``log (1 / (S M)) sum_{s, m} p_{s, m}`` of ``(S, M, N, K)`` log-probabilities: ``(N, K)``."""
        flat = member_log_probs.flatten(0, 1)
        return torch.logsumexp(flat, dim=0) - math.log(flat.shape[0])

    def data_loss(self, log_probs: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of the targets with label smoothing ``eps``:

        - ``label_smoothing_mode="uniform"``: ``(1 - eps) NLL + eps mean_c(-log p_c)`` (``eps / C`` on
          every class; torch's ``cross_entropy(label_smoothing=eps)``);
        - ``"others"``: ``-(1 - eps) log p_y - eps / (C - 1) sum_{c != y} log p_c`` (the official code's
          ``smooth_crossentropy``; its ``kl_div`` form differs by the target's entropy, a constant).
        """
        nll = F.nll_loss(log_probs, y)
        eps = self.hparams.label_smoothing
        if eps == 0:
            return nll
        if self.hparams.label_smoothing_mode == "others":
            classes = log_probs.shape[-1]
            others = -(log_probs.sum(-1).mean() + nll)  # mean over the batch of -sum_{c != y} log p_c
            return (1 - eps) * nll + eps / (classes - 1) * others
        return (1 - eps) * nll - eps * log_probs.mean(-1).mean()

    def kl_term(self) -> Tensor:
        """``kl_weight * KL(q || p) / train_size`` for a BNN, else 0."""
        if not self.bayesian or self.hparams.kl_weight == 0:
            return torch.zeros((), device=self.device)
        size = self._train_size or 1
        return self.hparams.kl_weight * kl_divergence(self.model) / size

    def draw_seeds(self, batch_idx: int, info: PassInfo | None) -> list[int]:
        """The seeds of the ``train_samples`` weight draws of one training pass (BNN).

        ``bnn_noise="shared"`` (default): the same ``S`` different draws on every pass of a step
        (common random numbers: the optimizer's passes see one loss surface). ``"official"``: the
        official ``train_otmrd_BNN.py`` pattern: every ascent pass draws ``S`` fresh noises, and the
        final pass reuses the last noise drawn (``reuse_eps=True``) for all ``S`` of its draws.
        """
        S = self.hparams.train_samples
        base = mix_seed(self.hparams.seed, self.global_step, batch_idx, self.global_rank)
        if self.hparams.bnn_noise == "shared" or info is None:
            return [mix_seed(base, s) for s in range(S)]
        if info.is_final and info.index > 0:
            return [mix_seed(base, info.index - 1, S - 1)] * S
        return [mix_seed(base, info.index, s) for s in range(S)]

    # ------------------------------------------------------------------ checks
    def check_labels(self, y: Tensor) -> None:
        """Labels must be integer class indices in ``[0, num_classes)`` (``ValueError`` naming both)."""
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(
                f"OTMDRClassifier needs integer class labels (torch.long), got dtype {y.dtype}; one-hot or soft "
                "labels are not supported: pass class indices"
            )
        if y.numel() == 0:
            return
        low, high = torch.stack([y.min(), y.max()]).tolist()
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"label {bad} is out of range for num_classes={self.num_classes} (labels must lie in "
                f"[0, {self.num_classes - 1}]); set num_classes to the number of classes of the data"
            )

    def check_output_width(self, outputs: Tensor) -> None:
        """The network must give ``num_classes`` logits per sample."""
        width = outputs.shape[-1]
        if width != self.num_classes:
            raise ValueError(
                f"the network outputs {width} logits per sample but num_classes={self.num_classes}; build the network "
                f"with {self.num_classes} outputs or set num_classes={width}"
            )

    # ------------------------------------------------------------------ training
    def _current_pass(self) -> PassInfo | None:
        if self._trainer is None:
            return None
        optimizer = getattr(self.optimizers(use_pl_optimizer=False), "current_pass", None)
        return optimizer

    def on_train_start(self) -> None:
        if self.bayesian and self._train_size is None:
            loader = self.trainer.train_dataloader
            dataset = getattr(loader, "dataset", None)
            self._train_size = len(dataset) if dataset is not None else None
            if not self._train_size:
                raise ValueError("OTMDRClassifier with a Bayesian network needs train_size (could not read the train set size)")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        data = unpack_batch(batch)
        if data.y is None:
            raise ValueError("OTMDRClassifier needs labelled batches: a 'y' entry / (x, y) tuples")
        x, y = data.x, data.y
        info = self._current_pass()
        if info is None or info.index == 0:  # once per step: the range check reads two numbers back
            self.check_labels(y)
        if info is not None:
            x, y = info.select(x, y)
        samples = self.hparams.train_samples
        seeds = self.draw_seeds(batch_idx, info) if self.bayesian else None
        log_probs = self.log_probs(x, samples, seeds)
        self.check_output_width(log_probs)
        nll = self.data_loss(log_probs, y)
        kl = self.kl_term()
        loss = nll + kl
        if info is None and self.method == "base":  # OTMDR / SAM check every pass themselves
            raise_if_diverged(
                "training loss", loss.detach(), where=f"{type(self).__name__} step {self.global_step}",
                hint="lower lr, or check the data",
            )
        if info is None or info.index == 0:
            self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True)
            acc = (log_probs.detach().argmax(-1) == y).float().mean()
            self.log("train/acc", acc, on_step=False, on_epoch=True)
            if self.bayesian:
                self.log("train/kl", kl.detach(), on_step=False, on_epoch=True)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: Any, stage: str) -> None:
        """Accuracy, NLL, ECE, Brier; for ensembles the members' disagreement; on the test split
        also ECE / NLL after temperature scaling with the temperature fitted on the validation split.

        An ensemble's prediction is computed once from :meth:`member_log_probs` (whose mixture is
        :meth:`log_probs`), so the disagreement costs no extra forward pass.
        """
        data = unpack_batch(batch)
        if data.y is None:
            raise ValueError("OTMDRClassifier evaluates on labelled batches")
        self.check_labels(data.y)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if len(self.model) > 1:
            members = self.member_log_probs(data.x, self._eval_samples())
            log_probs = self.mixture(members)
            disagreement = self.val_disagreement if stage == "val" else self.test_disagreement
            disagreement.update(members.exp().mean(0))
            self.log(f"{stage}/disagreement", disagreement, on_step=False, on_epoch=True)
        else:
            log_probs = self.log_probs(data.x, self._eval_samples())
        self.check_output_width(log_probs)
        metrics.update(log_probs.exp(), data.y)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        if stage == "val" and not self.trainer.sanity_checking:
            self._val_outputs.append((log_probs.detach(), data.y.detach()))
        if stage == "test":
            self.test_scaled_metrics.update(tempered(log_probs, self.temperature), data.y)
            self.log_dict(self.test_scaled_metrics, on_step=False, on_epoch=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        state.setdefault("temperature", torch.ones(()))  # checkpoints saved before temperature scaling

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """Fit the temperature on this epoch's validation predictions (all processes' under DDP)."""
        if not self._val_outputs:
            return
        log_probs = torch.cat([lp for lp, _ in self._val_outputs])
        target = torch.cat([y for _, y in self._val_outputs])
        self._val_outputs = []
        if self.trainer.world_size > 1:
            log_probs = self.all_gather(log_probs).flatten(0, 1)  # equal shards: the DistributedSampler pads
            target = self.all_gather(target).flatten(0, 1)
        self.temperature.copy_(fit_temperature(log_probs, target).to(self.temperature))
        self.log("val/temperature", self.temperature, on_step=False, on_epoch=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(unpack_batch(batch).x)

    # ------------------------------------------------------------------ optimizers
    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer ``method`` names, over all members' parameters (BNN: means and sigmas in two groups)."""
        hp = self.hparams
        groups = bayesian_parameter_groups(self.model, hp.perturb_sigma) if self.bayesian else [{"params": list(self.model.parameters())}]
        base = BASE_OPTIMIZERS[hp.base_optimizer]
        kwargs: dict[str, Any] = dict(lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.base_optimizer == "sgd":
            kwargs.update(momentum=hp.momentum, nesterov=hp.nesterov)
        if self.method == "base":
            return base(groups, **kwargs)
        if self.method == "sam":
            return SAM(groups, base, rho=self.rho[0], adaptive=hp.adaptive, sync_ascent=hp.sync_ascent,
                       freeze_norm_stats=hp.freeze_norm_stats, max_update_ratio=self.max_update_ratio, **kwargs)
        return OTMDR(
            groups,
            base,
            max_update_ratio=self.max_update_ratio,
            rho=self.rho,
            num_particles=hp.num_particles,
            noise_std=hp.noise_std,
            adaptive=hp.adaptive,
            chain_direction=hp.chain_direction,
            particle_reduction=hp.particle_reduction,
            freeze_norm_stats=hp.freeze_norm_stats,
            chunked_ascent=hp.chunked_ascent,
            sync_ascent=hp.sync_ascent,
            seed=hp.seed,
            **kwargs,
        )

    max_update_ratio: float | None = 1e3
    """The largest step, ``||theta' - theta|| <= r max(||theta||, 1)`` (``None``: no bound), for every ``method``."""

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """``method="base"``: Lightning's step, undone and reported when its result diverges
        (:mod:`lightning_wass.guard`); OTMDR and SAM check and undo their own steps."""
        if self.method != "base":
            try:
                optimizer.step(closure=optimizer_closure)
            except DivergenceError as error:  # name the module too: the optimizer only knows its own step
                raise DivergenceError(f"{type(self).__name__} (global step {self.global_step}): {error}") from error
            return
        guarded_optimizer_step(
            self, optimizer, optimizer_closure, name="network", hint=f"lower lr (now {self.hparams.lr:g}; check what the scheduler sets)",
            where=f"{type(self).__name__} step {self.global_step}",
        )

    def configure_optimizers(self) -> Any:
        precision = str(getattr(self.trainer, "precision", ""))
        plugin = getattr(self.trainer, "precision_plugin", None)
        if self.method != "base" and precision.startswith("16") and not isinstance(plugin, SAMMixedPrecision):
            raise ValueError(
                f"OTMDRClassifier(method={self.method!r}) with precision={precision!r}: Lightning's fp16 plugin steps "
                "the optimizer without its closure, so the passes at perturbed parameters cannot be unscaled. Use "
                "Trainer(plugins=[lightning_wass.SAMMixedPrecision('16-mixed', device)]) instead of "
                "precision='16-mixed' (or precision='bf16-mixed' / '32-true')."
            )
        optimizer = self.build_optimizer()
        if isinstance(optimizer, OTMDR) and not self.hparams.sync_ascent:
            block = getattr(self.trainer.strategy, "block_backward_sync", None)
            if block is not None:
                optimizer.attach_no_sync(block)
        if self.hparams.scheduler == "none":
            return optimizer
        if self.hparams.scheduler == "plateau":  # the official BNN run: ReduceLROnPlateau(patience=6) on the eval loss
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=self.hparams.plateau_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": plateau, "interval": "epoch", "monitor": "val/nll", "strict": True}}
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
