"""The base classes of the generative modules: :class:`GenerativeModule` and :class:`LatentGenerativeModule`.

:class:`GenerativeModule` is the one base of :class:`~lightning_wass.modules.WGAN`,
:class:`~lightning_wass.modules.W2GradientFlow` and :class:`~lightning_wass.modules.W1W2ProximalFlow`.
It gives every one of them, written once:

- **counters** named ``<network>_step`` (the number of that network's updates so far, like
  Lightning's ``global_step``): ``generator_step`` for every module (the generator, or the proximal
  flow's potential), plus those a subclass lists in :attr:`GenerativeModule.counter_names`
  (``critic_step``, ``outer_step``, the noise stream's ``noise_draw``). They are saved in checkpoints
  under :data:`COUNTERS_KEY` and restored with the parameters when a step diverges. Checkpoints
  written before this layout (the proximal flow's ``"proximal_flow_counters"`` with
  ``critic_steps`` / ``potential_steps``, and the ``_draws`` counter of the latent generators) still
  load: see :data:`LEGACY_COUNTER_NAMES`;
- **seeded random streams**: :meth:`GenerativeModule.random_stream` is
  ``seeded_generator(device, seed, rank, *parts)`` (:mod:`lightning_wass.seeding`), so replicas under
  DDP draw different numbers and a resumed run draws what the uninterrupted one would have;
- **the DDP zero-gradient trick** :meth:`GenerativeModule.zero_touch` (added to a loss by
  :meth:`~GenerativeModule.touch_unused` only when the Trainer's strategy reduces gradients across
  processes: a single-device run skips it, the update is the same);
- **training figures logged on Lightning's log steps** (:meth:`GenerativeModule.log_train_metrics`,
  see "What is logged when" below);
- **the backward and the optimizer step** (:meth:`~lightning_wass.modules.direct_path.DirectLightningPath.run_backward`,
  :meth:`~lightning_wass.modules.direct_path.DirectLightningPath.step_optimizer`): ``manual_backward(loss)`` and ``optimizer.step()``,
  or, where Lightning's wrappers around them add nothing (one device, 32/64-bit precision, no
  profiler, no overridden backward hooks: :meth:`~lightning_wass.modules.direct_path.DirectLightningPath.direct_lightning_path`), what
  those wrappers then do, without their layers of calls;
- **divergence reporting through the guard** (:mod:`lightning_wass.guard`):
  :meth:`GenerativeModule.guarded_step`, :meth:`~GenerativeModule.check_finite`,
  :meth:`~GenerativeModule.check_batch`, :meth:`~GenerativeModule.check_samples`.

:class:`LatentGenerativeModule` adds what only latent-noise generators ``x = G(z)``,
``z ~ N(0, I)`` have (WGAN, W2-FE): ``latent_dim``, :meth:`~LatentGenerativeModule.noise`,
``sample(n)`` through ``G`` and the validation that logs the exact ``W1`` / ``W2`` (POT) between
generated and held-out samples. The proximal flow, which pushes a reference distribution through
an ODE instead, subclasses :class:`GenerativeModule` directly.

What is logged when. Every ``train/*`` figure of these modules goes through
:meth:`GenerativeModule.log_train_metrics`: its newest value is kept, and handed to
``LightningModule.log`` (which costs about a millisecond a call on a CPU, more than many of the
updates it reports) only on the batches where it can be read:

- the batches after which the Trainer writes step logs to its loggers (every ``log_every_n_steps``-th
  batch, and a batch after which training stops: ``trainer._logger_connector.should_update_logs``),
  and every batch under ``fast_dev_run``;
- the last batch of an epoch (epoch-end callbacks, ``ModelCheckpoint`` / ``EarlyStopping`` at epoch
  end) and the batch that reaches ``max_steps``;
- a batch that produces a figure not yet in ``trainer.callback_metrics`` (so every figure is there,
  for callbacks, the progress bar and ``ModelCheckpoint(monitor=...)``, from the batch that first
  computes it).

On the other batches ``trainer.callback_metrics`` and the progress bar hold the value of the last
logged batch (at most ``log_every_n_steps - 1`` batches old). The loggers receive, at their steps,
the values they received when every batch logged (the newest value of every figure).
``Trainer(log_every_n_steps=1)`` logs every figure on every batch. Validation figures (``val/*``)
are logged as before, once per validation.

How the callbacks evaluate any of these modules (``sample(n)``, ``generator_step``, held-out
data, the sample floor) is in :mod:`lightning_wass.callbacks.evaluation` (their one home).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn

from lightning_wass.callbacks.evaluation import draw_samples, exact_distances
from lightning_wass.checkpoints import CheckpointedModule
from lightning_wass.modules.spawned_process_group import ReleasesSpawnedProcessGroup
from lightning_wass._validation import check_data_batch, check_int, raise_if_diverged
from lightning_wass.datamodules.batch import unpack_batch
from lightning_wass.guard import StepCheck, UpdateGuard, rms_ratio
from lightning_wass.modules.direct_path import DirectLightningPath
from lightning_wass.nn.gan_nets import is_image_shape
from lightning_wass.seeding import seeded_generator

__all__ = [
    "COUNTERS_KEY",
    "GenerativeModule",
    "LEGACY_COUNTER_NAMES",
    "LatentGenerativeModule",
    "default_latent_dim",
    "infer_latent_dim",
]

COUNTERS_KEY = "lightning_wass_counters"
"""The checkpoint key under which every generative module saves its counters (``{name: int}``)."""

LEGACY_COUNTERS_KEY = "proximal_flow_counters"
"""The key the proximal flow used before (read when :data:`COUNTERS_KEY` is absent)."""

LEGACY_COUNTER_NAMES: Mapping[str, str] = {
    "critic_steps": "critic_step",
    "potential_steps": "generator_step",
    "_draws": "noise_draw",
}
"""Former counter names in checkpoints -> the current ones (read when loading an older checkpoint)."""


def default_latent_dim(data_shape: Sequence[int]) -> int:
    """100 for images (DCGAN), else the data dimension (at least 2)."""
    shape = tuple(data_shape)
    if is_image_shape(shape):
        return 100
    return max(2, math.prod(shape))


def infer_latent_dim(generator: nn.Module | None, latent_dim: int | None) -> int | None:
    """``latent_dim`` if given, else the generator's ``latent_dim`` / ``in_features`` attribute."""
    if latent_dim is not None:
        return check_int("latent_dim", latent_dim, minimum=1)
    if generator is None:
        return None
    for attr in ("latent_dim", "in_features"):
        value = getattr(generator, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"latent_dim is required with a generator ({type(generator).__name__}) that has no latent_dim or "
        "in_features attribute"
    )


@contextlib.contextmanager
def tracked_check(module: nn.Module, step: contextlib.AbstractContextManager[StepCheck]) -> Iterator[StepCheck]:
    """Enter ``step`` and make its check the module's current one (read by :meth:`GenerativeModule.check_finite`)."""
    with step as check:
        module.__dict__["_check"] = check
        try:
            yield check
        finally:
            module.__dict__["_check"] = None


# ----------------------------------------------------------------------------- the one base
class GenerativeModule(ReleasesSpawnedProcessGroup, DirectLightningPath, CheckpointedModule, pl.LightningModule):
    """Base of the generative modules: counters, seeded streams, the DDP zero-gradient trick and
    divergence reporting through :mod:`lightning_wass.guard` (see the module docstring).

    Subclasses call :meth:`init_generative` from ``__init__`` and list their counters in
    :attr:`counter_names`; a training step runs inside ``with self.guarded_step() as check:``.
    """

    counter_names: tuple[str, ...] = ("generator_step",)
    """The integer attributes saved in checkpoints and restored when a step diverges."""

    max_update_ratio: float | None = 1e3
    """One step may move an optimizer's parameters at most this many times their norm (``None``: no bound)."""
    sample_spread_bound: float | None = 1e3
    """Generated samples may be at most this many times the data batch's RMS norm (``None``: no bound)."""

    def init_generative(self, *, seed: int, seed_minimum: int | None = 0) -> None:
        """Set ``seed`` (checked, ``>= seed_minimum`` unless ``None``) and every counter to 0."""
        self.seed = check_int("seed", seed, minimum=seed_minimum)
        for name in self.counter_names:
            setattr(self, name, 0)

    # ------------------------------------------------------------------ seeded streams
    @property
    def rank(self) -> int:
        """This process's global rank (0 before a Trainer is attached)."""
        return int(self.global_rank) if self._trainer is not None else 0

    def random_stream(self, *parts: int) -> torch.Generator:
        """A fresh ``torch.Generator`` on the module's device seeded by ``(seed, rank, *parts)``
        (:func:`lightning_wass.seeding.seeded_generator`)."""
        return seeded_generator(self.device, self.seed, self.rank, *parts)

    # ------------------------------------------------------------------ DDP
    def zero_touch(self, *modules: nn.Module) -> Tensor:
        """``0 * sum(p.sum())`` over the trainable parameters of ``modules``, added to a loss.

        Under DDP with ``find_unused_parameters=False`` (the default), every backward must reach every
        parameter DDP tracks, or its gradient reduction never completes. A step that updates one
        network (the critic, say) while the other (the generator) is not in its graph adds this term:
        the other network gets an exact zero gradient at the cost of one tiny op per parameter, and
        the update is unchanged. (Freezing the other network with ``requires_grad_(False)`` does not
        help: DDP's reducer fixes the set of parameters it waits for when it wraps the module.)
        """
        terms = [p.sum() for m in modules for p in m.parameters() if p.requires_grad]
        if not terms:
            return torch.zeros((), device=self.device)
        return torch.stack(terms).sum() * 0.0

    def reduces_gradients(self) -> bool:
        """Whether the Trainer's strategy wraps the module for a gradient reduction across processes
        (DDP and the other multi-device strategies; ``True`` without a Trainer): then every backward
        must reach every parameter, and :meth:`touch_unused` adds :meth:`zero_touch`."""
        trainer = self._trainer
        return trainer is None or not isinstance(trainer.strategy, SingleDeviceStrategy)

    def touch_unused(self, loss: Tensor, *modules: nn.Module) -> Tensor:
        """``loss + zero_touch(*modules)`` when :meth:`reduces_gradients`, else ``loss`` itself.

        The extra term only gives ``modules`` exact zero gradients (which the step discards or on
        which Adam makes no move), so the update is the same either way; a single-device run skips
        its ops, a few per parameter in the forward and the backward.
        """
        return loss + self.zero_touch(*modules) if self.reduces_gradients() else loss

    # ------------------------------------------------------------------ training figures
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.__dict__["_pending_train_metrics"] = {}  # no figure of an earlier fit is logged in this one

    def log_train_metrics(
        self,
        metrics: Mapping[str, Tensor | float],
        *,
        prog_bar: Collection[str] = (),
        batch_size: int | None = None,
    ) -> None:
        """Log this batch's training figures (``name -> scalar``) on the batches where they are read.

        The newest value of every figure is kept; all kept figures go to ``self.log`` (``prog_bar``
        for the names in ``prog_bar``) when :meth:`is_log_batch` says so, or when one of them is not
        in ``trainer.callback_metrics`` yet (see the module docstring, "What is logged when").
        Values should be detached scalars (or numbers).
        """
        pending: dict[str, tuple[Tensor | float, bool, int | None]] = self.__dict__.setdefault("_pending_train_metrics", {})
        for name, value in metrics.items():
            pending[name] = (value, name in prog_bar, batch_size)
        if not (self.is_log_batch() or self._has_new_metric(pending)):
            return
        for name, (value, bar, size) in pending.items():
            self.log(name, value, prog_bar=bar, batch_size=size)
        pending.clear()

    def is_log_batch(self) -> bool:
        """Whether this training batch's figures are logged whatever they are (:meth:`log_train_metrics`):
        the Trainer writes step logs after it (every ``log_every_n_steps``-th batch, a stopping batch,
        ``fast_dev_run``), or it ends an epoch or reaches ``max_steps``. ``True`` without a Trainer."""
        trainer = self._trainer
        if trainer is None:
            return True
        try:
            if trainer.fast_dev_run or trainer._logger_connector.should_update_logs:
                return True
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                return True
            return 0 <= trainer.max_steps <= trainer.global_step
        except (AttributeError, NotImplementedError):  # a Lightning without these internals: log every batch
            return True

    def _has_new_metric(self, names: Collection[str]) -> bool:
        trainer = self._trainer
        known = getattr(getattr(trainer, "_logger_connector", None), "_callback_metrics", None)
        if not isinstance(known, dict):
            return True
        return any(name not in known for name in names)

    # ------------------------------------------------------------------ divergence (lightning_wass.guard)
    def where(self) -> str:
        """The module and step named in divergence messages."""
        return f"{type(self).__name__} generator step {self.generator_step}"

    def guarded_step(self) -> contextlib.AbstractContextManager[StepCheck]:
        """``with self.guarded_step() as check:`` around a training step (see :mod:`lightning_wass.guard`).

        A diverged step restores the networks, the optimizer states and the :attr:`counter_names`
        before :class:`~lightning_wass.DivergenceError` propagates, so nothing diverged reaches a
        checkpoint.
        """
        guard = UpdateGuard.of(self, self.max_update_ratio)
        return tracked_check(self, guard.step(self.where(), owner=self, counters=self.counter_names))

    def current_check(self) -> StepCheck | None:
        """The running guarded step's check (``None`` outside one)."""
        return self.__dict__.get("_check")

    def check_finite(self, what: str, value: Tensor, hint: str) -> None:
        """``value`` must be finite: recorded in the running guarded step (read back once at its end),
        or checked now outside one; :class:`~lightning_wass.DivergenceError` names the module and step."""
        check = self.current_check()
        if check is not None:
            check.finite(what, value, hint)
        else:
            raise_if_diverged(what, value, where=self.where(), hint=hint)

    def check_batch(
        self,
        x: Tensor,
        check: StepCheck | None = None,
        *,
        hint: str = "clean the data (the DataModules refuse non-finite data at setup)",
        parameters: nn.Module | None = None,
    ) -> None:
        """A training batch must match what the module was built for: float, ``(n, *data_shape)``,
        the dtype of ``parameters`` (default: the module's), and (recorded in ``check``, read back
        with the step's flags) finite (``ValueError`` with ``hint``)."""
        check_data_batch(type(self).__name__, x, getattr(self, "data_shape", None), self if parameters is None else parameters)
        if check is not None:
            check.finite("the training batch", x, hint, error=ValueError)

    def check_samples(self, generated: Tensor, data: Tensor, hint: str, *, what: str = "the generator output") -> None:
        """Generated samples must be finite and within :attr:`sample_spread_bound` times the data's RMS norm.

        ``rms(x) = sqrt(mean_i ||x_i||^2)``; the bound is on ``rms(generated) / rms(data)``.
        """
        self.check_finite(what, generated, hint)
        self.check_spread(generated, data, hint, what=what)

    def check_spread(self, generated: Tensor, data: Tensor, hint: str, *, what: str = "the generator output") -> None:
        """Record ``rms(generated) / rms(data) <= sample_spread_bound`` in the running guarded step."""
        check = self.current_check()
        if check is None or self.sample_spread_bound is None:
            return
        check.bounded(f"the RMS norm of {what} over the data batch's", rms_ratio(generated, data), self.sample_spread_bound, hint)

    # ------------------------------------------------------------------ counters in checkpoints
    def counters(self) -> dict[str, int]:
        """The current value of every counter in :attr:`counter_names`."""
        return {name: int(getattr(self, name)) for name in self.counter_names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[COUNTERS_KEY] = self.counters()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(COUNTERS_KEY)
        if stored is None:
            stored = checkpoint.get(LEGACY_COUNTERS_KEY, {})
        for name, value in stored.items():
            name = LEGACY_COUNTER_NAMES.get(name, name)
            if name in self.counter_names:
                setattr(self, name, int(value))


# ----------------------------------------------------------------------------- latent-noise generators
class LatentGenerativeModule(GenerativeModule):
    """Base of latent-noise generators ``x = G(z)``, ``z ~ N(0, I_latent_dim)``.

    Subclasses set ``self.generator`` (an ``nn.Module`` mapping ``(n, latent_dim)`` to
    ``(n, *data_shape)``), ``self.latent_dim`` and ``self.data_shape`` (``None`` until known), and
    call :meth:`init_latent` from ``__init__``. On top of :class:`GenerativeModule` they get:

    - :meth:`sample` (the shared interface), in eval mode when called through :func:`draw_samples`;
    - :meth:`noise`: training noise drawn from the stream ``(seed, rank, noise_draw)``, so replicas
      under DDP draw different ``z`` and a resumed run draws the same ``z`` as an uninterrupted one
      (``noise_draw`` is a counter, saved in the checkpoint);
    - validation that collects the held-out batches and logs ``val/W1`` and ``val/W2``: exact
      distances (POT) between up to ``eval_samples`` held-out points and as many samples (drawn
      with a fixed seed, so the figure is the same on every replica and not noisier than needed).
    """

    generator: nn.Module
    latent_dim: int | None
    data_shape: tuple[int, ...] | None

    counter_names = ("generator_step", "noise_draw")

    def init_latent(self, *, seed: int, eval_samples: int) -> None:
        """:meth:`GenerativeModule.init_generative` plus ``eval_samples`` (``>= 0``)."""
        self.init_generative(seed=seed)
        self.eval_samples = check_int("eval_samples", eval_samples, minimum=0)
        self.val_batches: list[Tensor] = []

    # ------------------------------------------------------------------ the shared interface
    def sample(self, n: int) -> Tensor:
        """``n`` samples ``G(z)``, ``z ~ N(0, I)`` from torch's global generator: shape ``(n, *data_shape)``."""
        n = check_int("n", n, minimum=1)
        if getattr(self, "generator", None) is None or self.latent_dim is None:
            raise RuntimeError(
                f"{type(self).__name__} has no generator yet: give data_shape (or a generator) to the "
                "constructor, or call sample() after Trainer.fit has set the module up"
            )
        z = torch.randn(n, self.latent_dim, device=self.device)
        return self.generator(z)

    # ------------------------------------------------------------------ training noise
    def noise(self, n: int) -> Tensor:
        """Training noise ``z`` of shape ``(n, latent_dim)`` from the stream ``(seed, rank, noise_draw)``."""
        assert self.latent_dim is not None
        generator = self.random_stream(self.noise_draw)
        self.noise_draw += 1
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def uniform(self, n: int) -> Tensor:
        """Uniform ``[0, 1)`` numbers of shape ``(n,)`` from the stream ``(seed, rank, noise_draw, 1)``."""
        generator = self.random_stream(self.noise_draw, 1)
        self.noise_draw += 1
        return torch.rand(n, generator=generator, device=self.device)

    def generate(self, z: Tensor, data: Tensor | None = None) -> Tensor:
        """``G(z)``, checked against the data's per-sample shape (``ValueError`` on a mismatch)."""
        x = self.generator(z)
        expected = tuple(data.shape[1:]) if data is not None else self.data_shape
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__}: the generator's output shape {tuple(x.shape[1:])} does not match the "
                f"data shape {tuple(expected)}; give a generator whose output matches the data (or data_shape)"
            )
        return x

    # ------------------------------------------------------------------ validation: exact W1, W2
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batches.append(unpack_batch(batch).x.detach())

    def on_validation_epoch_start(self) -> None:
        self.val_batches = []

    def on_validation_epoch_end(self) -> None:
        if not self.val_batches or self.eval_samples == 0:
            return
        held_out = torch.cat(self.val_batches)
        self.val_batches = []
        if self.trainer.world_size > 1:
            held_out = self.all_gather(held_out).flatten(0, 1)
        held_out = held_out[: self.eval_samples]
        generated = draw_samples(self, len(held_out), seed=self.seed + 1)
        metrics = {f"val/W{p}": value for p, value in exact_distances(generated, held_out, ps=(1, 2)).items()}
        metrics.update(self.validation_metrics(held_out.float(), generated.to(held_out.device)))
        for name, value in metrics.items():
            if math.isfinite(value):
                self.log(name, value, prog_bar=name == "val/W2", sync_dist=False)

    def validation_metrics(self, held_out: Tensor, generated: Tensor) -> dict[str, float]:
        """Extra validation figures from the held-out points and as many samples (override to add some)."""
        return {}
