"""WorstCaseGenerator: Wasserstein-DRO worst-case generation by particle GDA with a neural transport map.

Zhu, Cheng, Xie, Zhu, "Worst-case generation via minimax optimization in Wasserstein space",
arXiv 2512.08176 (DESIGN.md 3.1). The penalty form of Wasserstein DRO, ``gamma > 0``::

    min_theta max_T  L(theta, T) = E_{x~P}[ loss(theta, T(x)) - ||T(x) - x||^2 / (2 gamma) ]

One particle ``v_i`` (initialised at ``x_i``) and one momentum buffer ``g_i`` per training point;
each iteration takes a batch of indices and, from one forward/backward pass (simultaneous GDA):

    particles ascend   g_i <- mu_v g_i + (d_v loss(theta, v_i) - (v_i - x_i) / gamma),   v_i <- v_i + tau g_i
    model descends     h <- mu h + (1/m) sum_i d_theta loss(theta, v_i),                  theta <- theta - eta h
    transport map      Adam step on  mean_j ||T_phi(x_j) - v_j||^2  over m' random particles

``T_phi(x) = x + R_phi(x)`` (last layer zero: the identity at the start) generalises the worst case
to points outside the training set. The math lives in :mod:`lightning_wass.functional.worst_case`; this module
orchestrates it (what steps when, DDP, checkpoints, logging).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_wass.checkpoints import CheckpointedModule
from lightning_wass._validation import (
    check_fraction,
    check_int,
    check_finite,
    check_positive,
    check_shape,
)
from lightning_wass.datamodules.batch import padding_mask, require_index, unpack_batch
from lightning_wass.guard import StepCheck, UpdateGuard, rms_norm
from lightning_wass.modules.worst_case_particles import ParticleTable, WorstCaseParticles
from lightning_wass.nn.modes import eval_mode
from lightning_wass.nn.transport_map import ResidualTransportMap
from lightning_wass.functional.worst_case import (
    ascent_direction,
    checked_losses,
    gradient_norms,
    heavy_ball_ascent,
    resolve_loss,
    squared_distance,
)
from lightning_wass.seeding import seeded_generator

SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")


class WorstCaseGenerator(CheckpointedModule, pl.LightningModule):
    """Worst-case samples of Wasserstein DRO for a model, by particle gradient descent-ascent.

    Args:
        model: the decision model ``f_theta`` (any ``nn.Module``); its output goes to ``loss``.
        loss: ``"mse"`` (per-sample mean squared error), ``"cross_entropy"`` (logits vs labels), or a
            callable ``loss(output, target) -> Tensor`` of per-sample losses, shape ``(N,)``.
        gamma: the penalty ``1 / (2 gamma)`` on the squared transport distance (> 0). The inner
            maximisation is concave only while ``gamma`` times the loss's curvature in ``v`` is
            below 1; larger values make the particles diverge.
        model_lr, model_momentum, model_weight_decay: the model's heavy-ball step
            (``torch.optim.SGD``, dampening 0); paper: 0.01 and 0.7.
        particle_lr, particle_momentum: the particles' heavy-ball ascent step; paper: 0.01 and 0.7.
        train_model: ``False`` freezes the model (kept in eval mode, parameters untouched) and only
            the worst case of the given model is generated.
        model_warmup_steps: iterations at the start during which the particles stay at the data
            (``v_i = x_i``): the model first trains on clean data, so the min-max starts from a
            trained model, as the paper's image experiments start from a pre-trained classifier.
        transport_map: the network ``T(x)`` (or ``T(x, y)``); default: :class:`ResidualTransportMap`
            ``x + R(x)`` with hidden widths ``transport_hidden``, built from the DataModule's data shape.
        transport_hidden: hidden widths of the default transport map.
        transport_conditional: condition the transport map on the target ``y`` (a class label, or
            a regression target: the worst case of a regression point depends on its ``y``).
        transport_lr: Adam learning rate of the transport map (paper 1e-4).
        transport_batch_size: particles per matching step ``m'``, drawn uniformly from all
            particles (paper 50).
        num_particles: number of training points; default: the DataModule's ``train_size``.
        gradient_norm_every: evaluate ``GN_theta`` and ``GN_T`` over all particles every this many
            iterations (0 = never); :class:`~lightning_wass.callbacks.GradientNormStopping` reads them.
        gradient_norm_chunk_size: particles per pass of that evaluation.
        seed: seeds the choice of the matching sub-batches (a function of ``(seed, iteration)``).

    One Trainer step is one GDA iteration (``max_steps`` counts iterations). Batches must carry the
    dataset index of each sample (``return_index=True`` on our DataModules). After ``fit``:
    :attr:`particles` (worst-case samples with their targets), :meth:`transport` for new points.

    Subclasses change one piece by overriding :meth:`compute_losses`, :meth:`matching_losses`,
    :meth:`build_transport_map` or :meth:`apply_transport_map`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "mse",
        gamma: float = 8.0,
        model_lr: float = 0.01,
        model_momentum: float = 0.7,
        model_weight_decay: float = 0.0,
        particle_lr: float = 0.01,
        particle_momentum: float = 0.7,
        train_model: bool = True,
        model_warmup_steps: int = 0,
        transport_map: nn.Module | None = None,
        transport_hidden: Sequence[int] = (256, 256),
        transport_conditional: bool = False,
        transport_lr: float = 1e-4,
        transport_batch_size: int = 50,
        num_particles: int | None = None,
        gradient_norm_every: int = 100,
        gradient_norm_chunk_size: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if transport_map is not None and not isinstance(transport_map, nn.Module):
            raise TypeError(f"transport_map must be a torch.nn.Module or None, got {type(transport_map).__name__}")
        check_positive("gamma", gamma)
        check_positive("model_lr", model_lr)
        check_fraction("model_momentum", model_momentum)
        check_positive("model_weight_decay", model_weight_decay, allow_zero=True)
        check_positive("particle_lr", particle_lr)
        check_fraction("particle_momentum", particle_momentum)
        check_positive("transport_lr", transport_lr)
        check_int("transport_batch_size", transport_batch_size, minimum=1)
        if num_particles is not None:
            check_int("num_particles", num_particles, minimum=1)
        check_int("gradient_norm_every", gradient_norm_every, minimum=0)
        check_int("gradient_norm_chunk_size", gradient_norm_chunk_size, minimum=1)
        check_int("seed", seed, minimum=0)
        check_int("model_warmup_steps", model_warmup_steps, minimum=0)
        hidden = list(check_shape("transport_hidden", transport_hidden, allow_empty=True))
        if not isinstance(train_model, bool):
            raise TypeError(f"train_model must be a bool, got {type(train_model).__name__}")
        # a callable loss (a lambda) may not pickle: keep it on the instance, out of the hparams
        self.save_hyperparameters(ignore=["model", "transport_map"] + (["loss"] if callable(loss) else []))
        self.hparams["transport_hidden"] = hidden
        self.automatic_optimization = False

        self.model = model
        self.loss_fn = resolve_loss(loss)
        self.loss_name: str | None = None if callable(loss) else str(loss)
        self.transport_map: nn.Module | None = transport_map
        self.particle_table = ParticleTable()
        if not train_model:
            self.model.requires_grad_(False)
        self.iteration = 0
        self.gradient_norms: dict[str, float] = {}
        self.gradient_norms_iteration: int | None = None
        self.gradient_norm_history: list[dict[str, float]] = []
        self._default_transport: dict[str, Any] | None = None
        self._labels_checked = False

    # ================================================================== overridable pieces
    def compute_losses(self, output: Tensor, target: Tensor | None) -> Tensor:
        """Per-sample losses ``loss(theta, v_i)`` of the model output, shape ``(N,)``."""
        return checked_losses(self.loss_fn, output, target, output.shape[0])

    def build_transport_map(self, in_features: int, condition: dict[str, int] | None) -> nn.Module:
        """The default transport map ``x + R(x)`` (identity at the start); ``condition`` is
        ``{"num_classes": C}`` or ``{"target_features": k}`` for a target-conditioned map."""
        return ResidualTransportMap(in_features, hidden=self.hparams.transport_hidden, **(condition or {}))

    def apply_transport_map(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``T(x)``, or ``T(x, y)`` for a label-conditioned map (with autograd)."""
        if self.transport_map is None:
            raise RuntimeError("the transport map is built in setup(): fit the module first or pass transport_map=")
        if self.conditional_transport:
            return self.transport_map(x, y)
        return self.transport_map(x)

    def matching_losses(self, x: Tensor, v: Tensor, y: Tensor | None) -> Tensor:
        """The matching loss of each particle, ``||T(x_j) - v_j||^2``, shape ``(N,)``."""
        return squared_distance(self.apply_transport_map(x, y), v)

    # ================================================================== public results
    @property
    def conditional_transport(self) -> bool:
        return bool(self.hparams.transport_conditional or getattr(self.transport_map, "conditional", False))

    @property
    def particles(self) -> WorstCaseParticles:
        """The worst-case samples ``v_i`` with their targets ``y_i`` and the data ``x_i`` they came from."""
        return self.particle_table.export()

    @torch.no_grad()
    def transport(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Map new points to their worst case with the learned transport map (no autograd).

        ``x`` (and a float ``y``) are cast to the map's parameter dtype (the table's when it has none).
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"transport: x must be a tensor, got {type(x).__name__}")
        facts = self._default_transport
        width = facts["in_features"] if facts is not None else (
            math.prod(self.particle_table.samples.shape[1:]) if self.particle_table.allocated else None  # type: ignore[union-attr]
        )
        if width is not None and (x.ndim < 2 or math.prod(x.shape[1:]) != width):
            raise ValueError(f"transport: x must have shape (N, ...) with {width} features per sample (the training data's), got {list(x.shape)}")
        check_finite("transport: x", x)
        dtype = self._transport_dtype()
        if y is not None and y.is_floating_point():
            y = y.to(dtype)
        return self.apply_transport_map(x.to(dtype), y)

    def _transport_dtype(self) -> torch.dtype:
        params = [] if self.transport_map is None else list(self.transport_map.parameters())
        floating = [p.dtype for p in params if p.is_floating_point()]
        return floating[0] if floating else self.particle_table.dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ================================================================== setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        table = self.particle_table
        if stage == "fit" and not table.allocated:
            if datamodule is not None and hasattr(datamodule, "tensors"):
                x, y = datamodule.tensors("train")
                n = self.hparams.num_particles
                if n is not None and n != len(x):
                    raise ValueError(f"num_particles={n} but the DataModule has {len(x)} training points")
                table.fill(x, y)
            elif self.hparams.num_particles is None:
                raise ValueError(
                    "WorstCaseGenerator needs the number of training points (one particle each): use a "
                    "lightning_wass DataModule (its train_size) or pass num_particles="
                )
        if self.transport_map is None:
            in_features, condition = self._data_facts(datamodule)
            self._default_transport = {"in_features": in_features, "condition": condition}
            self.transport_map = self._seeded_transport_map(in_features, condition)

    def _seeded_transport_map(self, in_features: int, condition: dict[str, int] | None) -> nn.Module:
        """Build the default map with its initial weights drawn from ``seed`` (the same in every
        process, whatever the global random state when ``setup`` runs)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.seed)
            network = self.build_transport_map(in_features, condition)
        return network.to(device=self.particle_table.device, dtype=self.particle_table.dtype)

    def _data_facts(self, datamodule: Any) -> tuple[int, dict[str, int] | None]:
        """Input width of the default transport map and what it is conditioned on."""
        if datamodule is not None and hasattr(datamodule, "data_shape"):
            in_features = math.prod(datamodule.data_shape)
        elif self.particle_table.allocated:
            in_features = math.prod(self.particle_table.samples.shape[1:])  # type: ignore[union-attr]
        else:
            raise ValueError(
                "WorstCaseGenerator cannot size its default transport map without a DataModule that has "
                "data_shape (lightning_wass DataModules do): pass transport_map="
            )
        if not self.hparams.transport_conditional:
            return int(in_features), None
        targets = self.particle_table.targets
        if targets is None and datamodule is not None and hasattr(datamodule, "tensors"):
            targets = datamodule.tensors("train")[1]
        if targets is None:
            raise ValueError(
                "transport_conditional=True needs targets: use a DataModule with labels or regression targets, "
                "or pass a conditional transport_map="
            )
        if targets.is_floating_point():
            return int(in_features), {"target_features": math.prod(targets.shape[1:])}
        num_classes = getattr(datamodule, "num_classes", None) or int(targets.max()) + 1
        return int(in_features), {"num_classes": int(num_classes)}

    def on_fit_start(self) -> None:
        if not self.hparams.train_model:
            self.model.eval()  # a frozen model: no dropout, no BatchNorm statistics updates
        precision = str(self.trainer.precision)
        if precision not in SUPPORTED_PRECISIONS:
            raise ValueError(
                f"WorstCaseGenerator supports precision {SUPPORTED_PRECISIONS}, got {precision!r}: the particle "
                "gradients are read from v.grad, which fp16 loss scaling would distort"
            )
        if self.hparams.transport_batch_size < self.trainer.world_size:
            raise ValueError(
                f"transport_batch_size={self.hparams.transport_batch_size} must be >= the number of processes "
                f"({self.trainer.world_size}) so that every process matches at least one particle"
            )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        assert self.transport_map is not None
        optimizers: list[torch.optim.Optimizer] = []
        if self.hparams.train_model:
            optimizers.append(
                torch.optim.SGD(
                    self.model.parameters(),
                    lr=self.hparams.model_lr,
                    momentum=self.hparams.model_momentum,
                    dampening=0.0,
                    weight_decay=self.hparams.model_weight_decay,
                )
            )
        optimizers.append(torch.optim.Adam(self.transport_map.parameters(), lr=self.hparams.transport_lr))
        return optimizers

    def train(self, mode: bool = True) -> "WorstCaseGenerator":
        super().train(mode)
        if not self.hparams.train_model:
            self.model.eval()  # a frozen model: no dropout, no BatchNorm statistics updates
        return self

    # ================================================================== the GDA iteration
    def training_step(self, batch: Any, batch_idx: int) -> None:
        unpacked = unpack_batch(batch)
        index = require_index(unpacked, type(self).__name__)
        table = self.particle_table
        x = unpacked.x.to(table.dtype if table.allocated else unpacked.x.dtype)
        y = unpacked.y
        world, _ = self._world()
        global_index = self._gather(index)
        real = self._real_rows(global_index, world)
        if not table.allocated:
            table.allocate(int(self.hparams.num_particles), x, y)
            x = x.to(table.dtype)
        if not table.complete:
            rows = global_index if real is None else global_index[real]
            self._check_index(rows, table.size)  # one host sync, only while the table fills
            gathered_x, gathered_y = self._gather(x), None if y is None else self._gather(y)
            if real is not None:
                gathered_x, gathered_y = gathered_x[real], None if gathered_y is None else gathered_y[real]
            table.register(rows, gathered_x, gathered_y)
        m = x.shape[0]
        padding = None if real is None else index < 0  # this rank's padding rows (DDP, N not divisible by W)

        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)

        with self._guarded_step() as check:
            check.finite("the training batch", x, "clean the data (NaN or Inf in the inputs)", error=ValueError)
            # one forward/backward: d/dv for the particles, d/dtheta for the model, d/dphi for T
            v_old, g_old = self._read_particles(index, x, padding)
            v = v_old.detach().clone().requires_grad_(True)
            output = self._first_forward(v) if not self._labels_checked else self.model(v)
            self._check_labels_once(y, output)
            losses = self.compute_losses(output, y)
            match_rows, match_total = self._matching_rows(global_index if real is None else global_index[real])
            mx, mv, my = table.origins[match_rows], table.samples[match_rows], None  # type: ignore[index]
            if table.targets is not None and self.conditional_transport:
                my = table.targets[match_rows]
            matching = self.matching_losses(mx, mv, my).sum() * (world / match_total)
            # with padding rows: the mean over the global batch's real rows once DDP averages the ranks' gradients
            per_sample = m if padding is None else real.sum() / world  # d model_loss / d loss_i = 1 / per_sample
            model_loss = losses.mean() if padding is None else torch.where(padding, 0.0, losses).sum() / per_sample
            self.manual_backward(model_loss + matching)

            grad_v = torch.zeros_like(v_old) if v.grad is None else v.grad * per_sample
            direction = ascent_direction(grad_v, v_old, x, self.hparams.gamma)
            v_new, g_new = heavy_ball_ascent(v_old, g_old, direction, self.hparams.particle_lr, self.hparams.particle_momentum)

            # the new rows of the global batch (all-gathered under DDP): every rank decides and writes alike
            if world == 1:
                v_all, g_all, loss_all, match_all = v_new, g_new, losses.detach(), matching.detach().reshape(1)
            else:
                d = v_new[0].numel()
                flat = [v_new.reshape(m, -1), g_new.reshape(m, -1), losses.detach().reshape(m, 1), matching.detach().reshape(1, 1).expand(m, 1)]
                payload = self._gather(torch.cat([t.to(v_new.dtype) for t in flat], dim=1))
                v_all = payload[:, :d].reshape(-1, *v_new.shape[1:])
                g_all = payload[:, d : 2 * d].reshape(-1, *v_new.shape[1:])
                loss_all, match_all = payload[:, 2 * d], payload[:, 2 * d + 1]
            if real is not None:  # the padding rows are no particles: never checked, never written
                global_index, loss_all, v_all, g_all = global_index[real], loss_all[real], v_all[real], g_all[real]
            self._record_checks(check, loss_all, v_all, g_all, match_all, table.origins[global_index], optimizers)  # type: ignore[index]

            for i, opt in enumerate(optimizers):
                # one counted (Lightning) step per iteration, so max_steps counts GDA iterations
                (opt if i == 0 else opt.optimizer).step()
            check.verify()  # one host read of every check; a failure restores the networks and raises
            if self.iteration >= self.hparams.model_warmup_steps:
                table.write(global_index, v_all, g_all)
            self.iteration += 1

        if self._should_log():
            self._log_step(loss_all, match_all, v_old, x, y)
        every = self.hparams.gradient_norm_every
        if every and self.iteration % every == 0:
            self.evaluate_gradient_norms(log=True)

    def on_train_epoch_end(self) -> None:
        self.particle_table.update_complete()  # a lazily filled table stops registering rows once full

    # ------------------------------------------------------------------ helpers of the step
    def _world(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _gather(self, tensor: Tensor) -> Tensor:
        """All-gather along the batch dimension (rank-major); a no-op in one process."""
        world, _ = self._world()
        if world == 1:
            return tensor
        gathered = self.trainer.strategy.all_gather(tensor)
        return gathered.reshape(-1, *tensor.shape[1:])

    @staticmethod
    def _real_rows(global_index: Tensor, world: int) -> Tensor | None:
        """The rows of the global batch that are dataset points, or ``None`` when all are.

        Under DDP with a training-set size not divisible by the world size, the DataModule's sampler
        fills the last batches with padding rows marked ``index = -1`` (see
        :mod:`lightning_wass.datamodules.batch`); they keep every rank's batch the same size but
        are dropped here, so no particle is updated twice an epoch. One host read per step, under
        DDP only (one process never pads).
        """
        if world == 1:
            return None
        real = ~padding_mask(global_index)
        return None if bool(real.all()) else real

    def _read_particles(self, index: Tensor, x: Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(v, g)`` of this rank's rows; a padding row reads its own point with zero momentum."""
        if padding is None:
            return self.particle_table.read(index)
        v, g = self.particle_table.read(index.clamp_min(0))
        pad = padding.reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.where(pad, x, v), torch.where(pad, torch.zeros_like(g), g)

    def _matching_rows(self, global_index: Tensor) -> tuple[Tensor, int]:
        """This rank's share of the ``m'`` particles the transport map matches this iteration.

        They are drawn uniformly from all particles (every rank holds the whole table) by a
        generator seeded with ``(seed, iteration)``: the same rows for any number of processes and
        after a resume, at O(m') cost. A lazily filled table draws from the (sorted) global batch.
        """
        table = self.particle_table
        k = self.hparams.transport_batch_size
        # a fresh CPU generator (a few microseconds; one kept on the module would not survive
        # ddp_spawn's shared-memory pickling of the module)
        generator = seeded_generator(None, self.hparams.seed, self.iteration)
        if not table.complete:
            ordered = torch.sort(global_index).values
            if k < ordered.shape[0]:
                ordered = ordered[torch.randperm(ordered.shape[0], generator=generator)[:k].to(ordered.device)]
            rows = ordered
        elif k >= table.size:
            rows = torch.arange(table.size)
        elif table.size <= 8 * k:
            rows = torch.randperm(table.size, generator=generator)[:k]
        else:
            rows = torch.randint(0, table.size, (k,), generator=generator)
        world, rank = self._world()
        return rows[rank::world].to(table.device), int(rows.shape[0])

    @staticmethod
    def _check_index(index: Tensor, size: int) -> None:
        """Dataset indices must address a particle: ``0 <= i < num_particles``."""
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= size:
            raise ValueError(
                f"num_particles={size} but a batch carries dataset index {high if high >= size else low}: "
                f"num_particles must be the number of training points (indices 0..num_particles-1)"
            )

    def _check_labels_once(self, y: Tensor | None, output: Tensor) -> None:
        """Class labels out of range give a clear error instead of an error inside torch.

        A table filled from the DataModule is checked whole, once (one host sync); a lazily filled
        table checks each batch until it is complete.
        """
        table = self.particle_table
        if self._labels_checked and table.complete:
            return
        if self.loss_name != "cross_entropy" or output.ndim != 2:
            self._labels_checked = True
            return
        labels = table.targets if table.complete and not self._labels_checked else y
        self._labels_checked = True
        if labels is None or labels.is_floating_point() or labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= output.shape[1]:
            raise ValueError(
                f"cross_entropy labels must lie in [0, {output.shape[1] - 1}] for a model with "
                f"{output.shape[1]} outputs, got labels in [{low}, {high}]"
            )

    max_transport_ratio: float | None = 100.0
    """Particles may move at most this many times the data batch's RMS norm from their points
    (``max_i ||v_i - x_i|| <= r sqrt(mean_i ||x_i||^2)``; ``None``: no bound). A worst case that far
    out is no longer a nearby distribution: the inner maximisation has lost its concavity."""
    max_update_ratio: float | None = 1e3
    """One step may move the model's or the map's parameters at most this many times their norm."""

    def _guarded_step(self) -> Any:
        guard = UpdateGuard.of(self, self.max_update_ratio)
        return guard.step(f"{type(self).__name__} iteration {self.iteration + 1}", owner=self, counters=("iteration",))

    def _first_forward(self, v: Tensor) -> Tensor:
        """The model's first forward pass, with a clear error if it cannot take the data's samples."""
        try:
            return self.model(v)
        except RuntimeError as error:
            raise ValueError(
                f"WorstCaseGenerator: the model cannot take the training samples (shape {list(v.shape[1:])}, "
                f"dtype {v.dtype}): {error}. Give a model whose input matches the DataModule's data_shape "
                "(and Trainer(precision='64-true') for float64 data)"
            ) from error

    def _record_checks(
        self, check: StepCheck, losses: Tensor, samples: Tensor, momentum: Tensor, matching: Tensor, origins: Tensor,
        optimizers: list[Any],
    ) -> None:
        """What must stay finite and bounded this iteration (read back once, in ``check.verify``).

        The order is cause before effect: the model's loss at the particles (read from the table, so
        finite), then the new particles, then the transport map's matching loss, then each update.
        """
        hp = self.hparams
        particle_hint = (
            f"the inner maximisation diverges: use a smaller gamma (now {hp.gamma:g}; it must keep gamma times the "
            f"loss's curvature in v below 1) or a smaller particle_lr (now {hp.particle_lr:g})"
        )
        check.finite("the model's loss on the particles", losses, lambda: self._loss_hint(samples, origins))
        check.finite("the particles' momentum", momentum, particle_hint)
        if self.max_transport_ratio is not None:
            moved = (samples - origins).detach().flatten(1).norm(dim=1).max() / rms_norm(origins).clamp_min(1e-12)
            check.bounded("the particles' largest move over the data's RMS norm", moved, self.max_transport_ratio, particle_hint)
        else:
            check.finite("the particles", samples, particle_hint)
        check.finite("the transport map's matching loss", matching, f"lower transport_lr (now {hp.transport_lr:g})")
        if hp.train_model:
            check.update("model", optimizers[0], f"lower model_lr (now {hp.model_lr:g})")
        check.update("transport map", optimizers[-1], f"lower transport_lr (now {hp.transport_lr:g})")

    def _loss_hint(self, samples: Tensor, origins: Tensor) -> str:
        """Blame what blew up: the particles (far from their points) or the model (its weights grew)."""
        hp = self.hparams
        if not bool(torch.isfinite(samples).all()) or (
            self.max_transport_ratio is not None
            and float((samples - origins).flatten(1).norm(dim=1).max() / rms_norm(origins).clamp_min(1e-12)) > 0.1 * self.max_transport_ratio
        ):
            return f"the particles moved far from the data: use a smaller gamma (now {hp.gamma:g}) or a smaller particle_lr (now {hp.particle_lr:g})"
        if hp.train_model:
            norm = float(torch.stack([p.detach().float().norm() for p in self.model.parameters()]).norm())
            return f"the model's output overflowed (its weights have norm {norm:.3g}): lower model_lr (now {hp.model_lr:g}) or check the loss"
        return "the frozen model's output is not finite on the data: check the model and the loss"

    def _should_log(self) -> bool:
        trainer = self._trainer
        if trainer is None or not trainer.loggers and not trainer.progress_bar_callback:
            return False
        connector = getattr(trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _log_step(self, losses: Tensor, matching: Tensor, v_old: Tensor, x: Tensor, y: Tensor | None) -> None:
        """Log the step's statistics at the particles the forward pass used (global-batch means)."""
        distance_sq = squared_distance(v_old, x)
        with torch.no_grad(), eval_mode(self.model):  # logging must not change BatchNorm stats or dropout RNG
            loss_clean = self.compute_losses(self.model(x), y).mean()
        loss_particles = losses.mean()  # already the global batch
        penalty = self.trainer.strategy.reduce(distance_sq.mean(), reduce_op="mean") / (2 * self.hparams.gamma)
        self.log_dict(
            {
                "train/loss_particles": loss_particles,
                "train/penalty": penalty,
                "train/objective": loss_particles - penalty,
                "train/matching_loss": matching.mean(),
            },
            on_step=True,
            on_epoch=False,
        )
        self.log_dict(
            {"train/loss_clean": loss_clean, "train/transport_distance": distance_sq.sqrt().mean()},
            on_step=True,
            on_epoch=False,
            sync_dist=True,
        )

    # ================================================================== optimality
    def compute_gradient_norms(self) -> dict[str, Tensor]:
        """``GN_theta`` and ``GN_T`` over all particles (see :func:`lightning_wass.functional.worst_case.gradient_norms`).

        Under DDP each rank evaluates a strided share of the particles and the sums are all-reduced.
        ``GN_theta`` is absent for a frozen model.
        """
        table = self.particle_table
        if not table.allocated:
            raise RuntimeError("no particles yet: fit the WorstCaseGenerator first")
        rows = table.seen_rows()
        total = table.size if rows is None else int(rows.shape[0])
        world, rank = self._world()
        shard: Tensor | slice | None
        if rows is None:
            shard = slice(rank, None, world) if world > 1 else None
        else:
            shard = rows[rank::world]
        params = [p for p in self.model.parameters() if p.requires_grad] if self.hparams.train_model else []
        reduce = (lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if world > 1 else None
        return gradient_norms(
            self.model,
            self.compute_losses,
            table.samples,  # type: ignore[arg-type]
            table.origins,  # type: ignore[arg-type]
            table.targets,
            self.hparams.gamma,
            parameters=params,
            weight_decay=self.hparams.model_weight_decay,
            chunk_size=self.hparams.gradient_norm_chunk_size,
            rows=shard,
            total=total,
            reduce=reduce,
        )

    def evaluate_gradient_norms(self, log: bool = False) -> dict[str, float]:
        """Compute the gradient norms and store them for :class:`GradientNormStopping`.

        ``log=True`` (inside ``training_step``) also logs them as ``gn_theta`` / ``gn_T``.
        """
        norms = {k: float(v) for k, v in self.compute_gradient_norms().items()}
        self.gradient_norms = norms
        self.gradient_norms_iteration = self.iteration
        self.gradient_norm_history.append({"iteration": float(self.iteration), **norms})
        if log and self._trainer is not None:
            self.log_dict(norms, on_step=True, on_epoch=False, prog_bar=True, logger=False)
            for logger in self.trainer.loggers:  # every evaluation reaches the logger, whatever log_every_n_steps
                logger.log_metrics(norms, step=self.trainer.global_step)
        return norms

    # ================================================================== evaluation
    def _evaluate(self, batch: Any, prefix: str) -> None:
        unpacked = unpack_batch(batch)
        x = unpacked.x.to(self.particle_table.dtype)
        y = unpacked.y
        transported = self.transport(x, y)
        with torch.no_grad():
            out_clean, out_moved = self.model(x), self.model(transported)
            metrics = {
                f"{prefix}/loss_clean": self.compute_losses(out_clean, y).mean(),
                f"{prefix}/loss_transported": self.compute_losses(out_moved, y).mean(),
                f"{prefix}/transport_distance": squared_distance(transported, x).sqrt().mean(),
            }
            if y is not None and not y.is_floating_point() and out_clean.ndim == 2 and out_clean.shape[1] > 1:
                metrics[f"{prefix}/acc_clean"] = (out_clean.argmax(1) == y).float().mean()
                metrics[f"{prefix}/acc_transported"] = (out_moved.argmax(1) == y).float().mean()
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor | None]:
        unpacked = unpack_batch(batch)
        x = unpacked.x.to(self.particle_table.dtype)
        return {"x": x, "transported": self.transport(x, unpacked.y), "y": unpacked.y}

    # ================================================================== state
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "gradient_norms": dict(self.gradient_norms),
            "gradient_norms_iteration": self.gradient_norms_iteration,
            "gradient_norm_history": [dict(h) for h in self.gradient_norm_history],
            # the map's dtype when saved (the precision plugin converts it after setup)
            "default_transport": None if self._default_transport is None else {**self._default_transport, "dtype": str(self._transport_dtype())},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.gradient_norms = dict(state["gradient_norms"])
        self.gradient_norms_iteration = state["gradient_norms_iteration"]
        self.gradient_norm_history = [dict(h) for h in state["gradient_norm_history"]]
        facts = state.get("default_transport")
        if self.transport_map is None and facts is not None:
            # rebuild the default map before load_state_dict reaches its weights (it loads this
            # extra state before the children): load_from_checkpoint and ddp_spawn's hand-back work
            self._default_transport = facts
            self.transport_map = self._seeded_transport_map(facts["in_features"], facts["condition"])
            dtype = facts.get("dtype")  # the table's dtype at fit time (its own extra state loads later)
            if isinstance(dtype, str) and dtype.startswith("torch."):
                self.transport_map.to(dtype=getattr(torch, dtype[len("torch."):]))
