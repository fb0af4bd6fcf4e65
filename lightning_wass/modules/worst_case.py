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
to points outside the training set. The math lives in :mod:`lightning_wass.functional.worst_case`;
this module orchestrates it (what steps when, checkpoints, logging), with the DDP row exchange in
:mod:`.worst_case_exchange`, the particle table in :mod:`.worst_case_particles` and the default
transport map's sizing in :mod:`.worst_case_transport`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_wass.checkpoints import CheckpointedModule
from lightning_wass.modules.spawned_process_group import ReleasesSpawnedProcessGroup
from lightning_wass._validation import (
    check_bool,
    check_fraction,
    check_int,
    check_finite,
    check_module,
    check_positive,
    check_shape,
)
from lightning_wass.datamodules.batch import Batch, require_index, unpack_batch
from lightning_wass.modules.direct_path import DirectLightningPath
from lightning_wass.modules.worst_case_checks import Iterate, StepChecks
from lightning_wass.modules.worst_case_exchange import GlobalBatch, NewRows, RowExchange
from lightning_wass.modules.optimizers import build_optimizer
from lightning_wass.modules.worst_case_particles import ParticleTable, WorstCaseParticles
from lightning_wass.modules.worst_case_transport import TransportMapSpec
from lightning_wass.nn.modes import eval_mode
from lightning_wass.nn.transport_map import ResidualTransportMap
from lightning_wass.functional.worst_case import (
    ascent_direction,
    checked_losses,
    gradient_norms,
    heavy_ball_ascent,
    resolve_loss,
    squared_distance,
    transport_penalty,
)
from lightning_wass.seeding import seeded_generator

SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")



class WorstCaseGenerator(ReleasesSpawnedProcessGroup, StepChecks, DirectLightningPath, CheckpointedModule, pl.LightningModule):
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
        iterations_per_step: ``k``, the GDA iterations of one Lightning step (default 1). Each
            training batch of ``B`` rows is split into ``k`` consecutive GDA batches of ``m = B / k``
            rows (``k`` must divide the DataLoader's ``batch_size``; give the DataModule
            ``batch_size = k m``), so Lightning's fixed cost per step (its loop, the DataLoader, the
            hooks, the divergence guard's snapshot and host read) is paid once per ``k`` iterations.
            The iterates are those of ``k`` steps of ``k = 1`` with batch ``m`` (the same
            rows in the same order: our samplers' order does not depend on the batch size).

    An *iteration* is one GDA update (one batch of ``m`` indices, the three updates above);
    :attr:`iteration` and ``trainer.global_step`` count iterations, and so do ``max_steps`` (the
    last step runs only the iterations it leaves), ``model_warmup_steps``, ``gradient_norm_every``
    and the matching rows' seed. A Lightning *step* runs ``k`` iterations (fewer at the end of an
    epoch); ``batch_idx``, ``log_every_n_steps`` and the ``on_train_batch_*`` hooks count steps,
    the logged ``train/*`` statistics are the step's last iteration's, and a divergence anywhere in
    a step undoes the whole step (every iteration of it: networks, optimizers, particles, counters).
    The gradient norms are evaluated after each iteration that is a multiple of
    ``gradient_norm_every`` (the same evaluations as with ``k = 1``; ``gradient_norm_every`` must be
    0 or ``>= k``, so a step makes at most one), and
    :class:`~lightning_wass.callbacks.GradientNormStopping` reads them at the end of the step: it
    stops training at the end of the step of the stopping evaluation (``stopped_iteration`` is the
    evaluation's iteration; up to ``k - 1`` iterations may follow it in that step). Callbacks
    that act at multiples of ``global_step`` (``ModelCheckpoint(every_n_train_steps=...)``) see
    only step ends: use multiples of ``k``. With ``k = 1`` one Trainer step is one GDA iteration.

    Batches must carry the dataset index of each sample (``return_index=True`` on our
    DataModules). After ``fit``: :attr:`particles` (worst-case samples with their targets),
    :meth:`transport` for new points.

    The constructor arguments are validated and kept as typed attributes of the same names (also
    saved as hyperparameters, for checkpoints and the CLI).

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
        iterations_per_step: int = 1,
    ) -> None:
        super().__init__()
        check_module("model", model)
        check_module("transport_map", transport_map, optional=True)
        self.gamma: float = check_positive("gamma", gamma)
        self.model_lr: float = check_positive("model_lr", model_lr)
        self.model_momentum: float = check_fraction("model_momentum", model_momentum)
        self.model_weight_decay: float = check_positive("model_weight_decay", model_weight_decay, allow_zero=True)
        self.particle_lr: float = check_positive("particle_lr", particle_lr)
        self.particle_momentum: float = check_fraction("particle_momentum", particle_momentum)
        self.transport_lr: float = check_positive("transport_lr", transport_lr)
        self.transport_batch_size: int = check_int("transport_batch_size", transport_batch_size, minimum=1)
        self.num_particles: int | None = None if num_particles is None else check_int("num_particles", num_particles, minimum=1)
        self.gradient_norm_every: int = check_int("gradient_norm_every", gradient_norm_every, minimum=0)
        self.gradient_norm_chunk_size: int = check_int("gradient_norm_chunk_size", gradient_norm_chunk_size, minimum=1)
        self.seed: int = check_int("seed", seed, minimum=0)
        self.iterations_per_step: int = check_int("iterations_per_step", iterations_per_step, minimum=1)
        if 0 < self.gradient_norm_every < self.iterations_per_step:
            raise ValueError(
                f"gradient_norm_every={gradient_norm_every} must be 0 or >= iterations_per_step={iterations_per_step}: "
                "GradientNormStopping checks the latest evaluation once per Lightning step, so a step may make at most one"
            )
        self.model_warmup_steps: int = check_int("model_warmup_steps", model_warmup_steps, minimum=0)
        self.transport_hidden: list[int] = list(check_shape("transport_hidden", transport_hidden, allow_empty=True))
        self.train_model: bool = check_bool("train_model", train_model)
        self.transport_conditional: bool = bool(transport_conditional)
        # a callable loss (a lambda) may not pickle: keep it on the instance, out of the hparams
        self.save_hyperparameters(ignore=["model", "transport_map"] + (["loss"] if callable(loss) else []))
        self.hparams["transport_hidden"] = self.transport_hidden
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
        self.transport_spec: TransportMapSpec | None = None
        """The data facts of the default transport map (``None`` for a given ``transport_map``)."""
        self._labels_checked = False

    # ================================================================== overridable pieces
    def compute_losses(self, output: Tensor, target: Tensor | None) -> Tensor:
        """Per-sample losses ``loss(theta, v_i)`` of the model output, shape ``(N,)``."""
        return checked_losses(self.loss_fn, output, target, output.shape[0])

    def build_transport_map(self, in_features: int, condition: dict[str, int] | None) -> nn.Module:
        """The default transport map ``x + R(x)`` (identity at the start); ``condition`` is
        ``{"num_classes": C}`` or ``{"target_features": k}`` for a target-conditioned map."""
        return ResidualTransportMap(in_features, hidden=self.transport_hidden, **(condition or {}))

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
        return bool(self.transport_conditional or getattr(self.transport_map, "conditional", False))

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
        spec, table = self.transport_spec, self.particle_table
        width = spec.in_features if spec is not None else (
            math.prod(table.samples.shape[1:]) if table.samples is not None else None
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
                n = self.num_particles
                if n is not None and n != len(x):
                    raise ValueError(f"num_particles={n} but the DataModule has {len(x)} training points")
                table.fill(x, y)
            elif self.num_particles is None:
                raise ValueError(
                    "WorstCaseGenerator needs the number of training points (one particle each): use a "
                    "lightning_wass DataModule (its train_size) or pass num_particles="
                )
        if self.transport_map is None:
            self.transport_spec = TransportMapSpec.from_data(
                datamodule, table.samples, table.targets, conditional=self.transport_conditional
            )
            self.transport_map = self._build_default_map(self.transport_spec)

    def _build_default_map(self, spec: TransportMapSpec) -> nn.Module:
        """The default map from its spec, seeded by ``seed`` (the same in every process, whatever
        the global random state when ``setup`` runs), on the particle table's device and dtype."""
        table = self.particle_table
        return spec.build(self.build_transport_map, seed=self.seed, device=table.device, dtype=table.dtype)

    def on_fit_start(self) -> None:
        if not self.train_model:
            self.model.eval()  # a frozen model: no dropout, no BatchNorm statistics updates
        precision = str(self.trainer.precision)
        if precision not in SUPPORTED_PRECISIONS:
            raise ValueError(
                f"WorstCaseGenerator supports precision {SUPPORTED_PRECISIONS}, got {precision!r}: the particle "
                "gradients are read from v.grad, which fp16 loss scaling would distort"
            )
        if self.transport_batch_size < self.trainer.world_size:
            raise ValueError(
                f"transport_batch_size={self.transport_batch_size} must be >= the number of processes "
                f"({self.trainer.world_size}) so that every process matches at least one particle"
            )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        assert self.transport_map is not None
        optimizers: list[torch.optim.Optimizer] = []
        if self.train_model:
            optimizers.append(
                build_optimizer(
                    torch.optim.SGD,
                    self.model.parameters(),
                    lr=self.model_lr,
                    momentum=self.model_momentum,
                    dampening=0.0,
                    weight_decay=self.model_weight_decay,
                )
            )
        optimizers.append(build_optimizer(torch.optim.Adam, self.transport_map.parameters(), lr=self.transport_lr))
        return optimizers

    def train(self, mode: bool = True) -> "WorstCaseGenerator":
        super().train(mode)
        if not self.train_model:
            self.model.eval()  # a frozen model: no dropout, no BatchNorm statistics updates
        return self

    # ================================================================== the GDA iterations
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """``iterations_per_step`` GDA iterations, one per part of the batch (see the class docstring)."""
        parts = self._split_batch(batch)  # the step's GDA batches of m rows each
        optimizers = self._optimizer_list()
        exchange = RowExchange(self._trainer)
        direct = self.direct_lightning_path()
        # every iteration writes its rows for the next one to read (undone if the step fails); the
        # guard's end verifies the whole step in one host read
        with self._undo_on_failure() as undo:
            if exchange.world == 1:
                last = self._deferred_step(parts, optimizers, undo, exchange, direct)
            else:
                with self._guarded_step(len(parts)) as check:
                    last = self._checked_iterations(parts, optimizers, check, undo, exchange, direct)
        if self._should_log():
            self._log_step(last.new, last.v_old, last.step)

    def on_train_epoch_end(self) -> None:
        self.particle_table.update_complete()  # a lazily filled table stops registering rows once full

    # ------------------------------------------------------------------ the pieces of an iteration
    def _gda_gradients(self, part: Batch, optimizers: list[Any], exchange: RowExchange, direct: bool) -> "Iterate":
        """One iteration up to its updates: the forward pass, the one backward and the particles' ascent."""
        step = self._draw_batch(part, exchange)  # this rank's rows, and the global batch's indices
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        v_old, g_old = self._read_particles(step)  # the particles v_i and momentum g_i of the batch (copies)
        v = v_old.detach().requires_grad_(True)
        losses = self._particle_losses(v, step.y)  # loss(theta, v_i)
        matching = self._matching_loss(step, exchange)  # the transport map's loss over m' particles
        model_loss = self._model_loss(losses, step)
        # one backward: d/dtheta for the model, d/dv for the particles, d/dphi for the map
        self.run_backward(model_loss + matching, direct)
        v_new, g_new = self._particle_ascent(v, v_old, g_old, step)
        new = exchange.finish(step, v_new, g_new, losses, matching)  # the global batch's rows
        previous = (v_old, g_old) if exchange.world == 1 else None  # the rows' values before (one process: new.index == step.index)
        return Iterate(step, v_old, new, model_loss.detach(), matching.detach(), previous)

    def _gda_updates(self, it: "Iterate", optimizers: list[Any], undo: list[Any], direct: bool) -> None:
        """The iteration's updates: the model descends (SGD), the transport map steps (Adam), the rows are written."""
        self._step_optimizers(optimizers, direct)
        self._write_particles(it.new, undo, it.previous)
        self.iteration += 1

    def _split_batch(self, batch: Any) -> list[Batch]:
        """The Lightning batch as the step's GDA batches: consecutive parts of ``m`` rows.

        ``m = B / iterations_per_step`` for the training DataLoader's ``batch_size`` ``B`` (the
        epoch's last, shorter batch gives fewer or shorter parts: the batches a DataLoader with
        batch size ``m`` would give); at most as many parts as ``max_steps`` leaves.
        """
        unpacked = unpack_batch(batch)
        index = require_index(unpacked, type(self).__name__)
        k = self.iterations_per_step
        if k == 1:
            return [Batch(unpacked.x, unpacked.y, index)]
        size = self._part_size(len(unpacked))
        parts = [
            Batch(x, None if unpacked.y is None else unpacked.y[start : start + size], index[start : start + size])
            for start, x in zip(range(0, len(unpacked), size), torch.split(unpacked.x, size))
        ]
        trainer = self._trainer
        max_steps = -1 if trainer is None else int(trainer.max_steps)
        if max_steps >= 0:
            parts = parts[: max(1, max_steps - int(trainer.global_step))]  # type: ignore[union-attr]
        return parts

    def _part_size(self, rows: int) -> int:
        """Rows ``m`` of one GDA batch: the train DataLoader's batch size over ``iterations_per_step``
        (without a known batch size: this batch's rows over ``iterations_per_step``, rounded up)."""
        k = self.iterations_per_step
        loader = None if self._trainer is None else getattr(self.trainer, "train_dataloader", None)
        batch_size = getattr(loader, "batch_size", None)
        if not isinstance(batch_size, int):
            return -(-rows // k)
        if batch_size % k:
            raise ValueError(
                f"iterations_per_step={k} must divide the training DataLoader's batch_size={batch_size}: each "
                f"batch is split into {k} GDA batches of batch_size / iterations_per_step rows (for GDA batches "
                f"of m rows, give the DataModule batch_size=m * {k})"
            )
        return batch_size // k

    def _draw_batch(self, part: Batch, exchange: RowExchange) -> GlobalBatch:
        """This rank's rows of one GDA batch, the global batch's indices; registers new rows."""
        table = self.particle_table
        if not table.allocated:
            table.allocate(int(self.num_particles), part.x, part.y)  # type: ignore[arg-type]
        x = part.x.to(table.dtype)
        step = exchange.start(part.index, x, part.y, with_data=not table.complete)  # type: ignore[arg-type]
        if not table.complete:
            self._check_index(step.rows, table.size)  # one host sync, only while the table fills
            table.register(step.rows, step.x_all, step.y_all)
        return step

    def _optimizer_list(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _read_particles(self, step: GlobalBatch) -> tuple[Tensor, Tensor]:
        """``(v, g)`` of this rank's rows; a padding row reads its own point with zero momentum."""
        if step.padding is None:
            return self.particle_table.read(step.index)
        v, g = self.particle_table.read(step.index.clamp_min(0))
        pad = step.padding.reshape((-1,) + (1,) * (step.x.dim() - 1))
        return torch.where(pad, step.x, v), torch.where(pad, torch.zeros_like(g), g)

    def _particle_losses(self, v: Tensor, y: Tensor | None) -> Tensor:
        """``loss(theta, v_i)`` of each row (the model's forward pass)."""
        output = self._first_forward(v) if not self._labels_checked else self.model(v)
        self._check_labels_once(y, output)
        return self.compute_losses(output, y)

    def _matching_loss(self, step: GlobalBatch, exchange: RowExchange) -> Tensor:
        """This rank's term of ``mean_j ||T(x_j) - v_j||^2`` over the iteration's ``m'`` particles
        (scaled by the world size: DDP's average of the ranks' gradients is the gradient of the mean)."""
        table = self.particle_table
        rows, total = self._matching_rows(step.rows, exchange)
        mx, mv, my = table.origins.index_select(0, rows), table.samples.index_select(0, rows), None  # type: ignore[union-attr]
        if table.targets is not None and self.conditional_transport:
            my = table.targets.index_select(0, rows)
        return self.matching_losses(mx, mv, my).sum() * (step.world / total)

    @staticmethod
    def _per_sample(step: GlobalBatch) -> Tensor | int:
        """``1 / (d model_loss / d loss_i)``: the rows a rank's mean is over (with padding rows:
        the global batch's real rows over the world size, so DDP's average is the real mean)."""
        return step.size if step.padding is None else step.real.sum() / step.world  # type: ignore[union-attr]

    def _model_loss(self, losses: Tensor, step: GlobalBatch) -> Tensor:
        """``(1/m) sum_i loss(theta, v_i)`` over the real rows of the global batch."""
        if step.padding is None:
            return losses.mean()
        return torch.where(step.padding, 0.0, losses).sum() / self._per_sample(step)

    def _particle_ascent(self, v: Tensor, v_old: Tensor, g_old: Tensor, step: GlobalBatch) -> tuple[Tensor, Tensor]:
        """``g <- mu_v g + d_v loss - (v - x) / gamma``, ``v <- v + tau g`` for this rank's rows."""
        grad_v = torch.zeros_like(v_old) if v.grad is None else v.grad * self._per_sample(step)
        direction = ascent_direction(grad_v, v_old, step.x, self.gamma)
        return heavy_ball_ascent(v_old, g_old, direction, self.particle_lr, self.particle_momentum)

    def _step_optimizers(self, optimizers: list[Any], direct: bool = False) -> None:
        # one counted (Lightning) step per iteration, so max_steps counts GDA iterations
        self.step_optimizer(optimizers[0], direct)
        for opt in optimizers[1:]:
            opt.optimizer.step()

    def _write_particles(
        self, new: NewRows, undo: list[tuple[Tensor, Tensor, Tensor]] | None = None, previous: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """Every rank writes the global batch's new rows alike (after the warm-up), recording the
        old rows in ``undo`` (``previous``: the rows' values, when the caller read them already)."""
        if self.iteration >= self.model_warmup_steps:
            if undo is not None and previous is not None:
                undo.append((new.index, *previous))
                undo = None
            self.particle_table.write(new.index, new.samples, new.momentum, undo=undo)

    def _matching_rows(self, global_index: Tensor, exchange: RowExchange) -> tuple[Tensor, int]:
        """This rank's share of the ``m'`` particles the transport map matches this iteration.

        They are drawn uniformly from all particles (every rank holds the whole table) by a
        generator seeded with ``(seed, iteration)``: the same rows for any number of processes and
        after a resume, at O(m') cost. A lazily filled table draws from the (sorted) global batch.
        """
        table = self.particle_table
        k = self.transport_batch_size
        # a fresh CPU generator (a few microseconds; one kept on the module would not survive
        # ddp_spawn's shared-memory pickling of the module)
        generator = seeded_generator(None, self.seed, self.iteration)
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
        return exchange.share(rows).to(table.device), int(rows.shape[0])

    # ------------------------------------------------------------------ checks
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

    # ------------------------------------------------------------------ logging
    def _should_log(self) -> bool:
        trainer = self._trainer
        if trainer is None or not trainer.loggers and not trainer.progress_bar_callback:
            return False
        connector = getattr(trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _log_step(self, new: NewRows, v_old: Tensor, step: GlobalBatch) -> None:
        """Log the iteration's statistics at the particles the forward pass used (global-batch means):
        ``loss(theta, v_i)``, the penalty ``||v_i - x_i||^2 / (2 gamma)``, their difference (the
        objective), the matching loss, the clean loss and the transport distance ``||v_i - x_i||``."""
        x, y = step.x, step.y
        with torch.no_grad(), eval_mode(self.model):  # logging must not change BatchNorm stats or dropout RNG
            loss_clean = self.compute_losses(self.model(x), y).mean()
        loss_particles = new.losses.mean()  # already the global batch
        exchange = RowExchange(self._trainer)
        penalty = exchange.reduce(transport_penalty(v_old, x, self.gamma).mean(), "mean")
        self.log_dict(
            {
                "train/loss_particles": loss_particles,
                "train/penalty": penalty,
                "train/objective": loss_particles - penalty,
                "train/matching_loss": new.matching.mean(),
            },
            on_step=True,
            on_epoch=False,
        )
        self.log_dict(
            {"train/loss_clean": loss_clean, "train/transport_distance": squared_distance(v_old, x).sqrt().mean()},
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
        exchange = RowExchange(self._trainer)
        params = [p for p in self.model.parameters() if p.requires_grad] if self.train_model else []
        reduce = (lambda t: exchange.reduce(t, "sum")) if exchange.world > 1 else None
        return gradient_norms(
            self.model,
            self.compute_losses,
            table.samples,  # type: ignore[arg-type]
            table.origins,  # type: ignore[arg-type]
            table.targets,
            self.gamma,
            parameters=params,
            weight_decay=self.model_weight_decay,
            chunk_size=self.gradient_norm_chunk_size,
            rows=exchange.shard(rows),
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
        spec = self.transport_spec
        return {
            "iteration": self.iteration,
            "gradient_norms": dict(self.gradient_norms),
            "gradient_norms_iteration": self.gradient_norms_iteration,
            "gradient_norm_history": [dict(h) for h in self.gradient_norm_history],
            # the map's dtype when saved (the precision plugin converts it after setup)
            "default_transport": None if spec is None else spec.to_state(self._transport_dtype()),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.gradient_norms = dict(state["gradient_norms"])
        self.gradient_norms_iteration = state["gradient_norms_iteration"]
        self.gradient_norm_history = [dict(h) for h in state["gradient_norm_history"]]
        saved = state.get("default_transport")
        if self.transport_map is None and saved is not None:
            # rebuild the default map before load_state_dict reaches its weights (it loads this
            # extra state before the children): load_from_checkpoint and ddp_spawn's hand-back work;
            # in the dtype it had when saved (the table's own extra state loads later)
            self.transport_spec = TransportMapSpec.from_state(saved)
            self.transport_map = self._build_default_map(self.transport_spec)
