"""How a :class:`~lightning_wass.modules.worst_case.WorstCaseGenerator` step checks its GDA iterations.

Every iteration must keep its losses, particles and updates finite and bounded
(:meth:`StepChecks._record_checks`), and a failed step must leave nothing written: the guard
(:class:`~lightning_wass.guard.UpdateGuard`) puts back the networks, optimizers, buffers and
counters, :meth:`StepChecks._undo_on_failure` the particle rows and the gradient-norm record.

Two ways to run the checks:

- **deferred** (one process): each iteration keeps a few scalars, read back with the guard's update
  checks in one host read at the step's end (:meth:`StepChecks._deferred_step`); a suspect value
  puts the step's start back and replays the step with every check in place, so the error names
  the first iteration that failed and the knob to turn;
- **in place** (DDP, and the replay): every check is recorded as it is made
  (:meth:`StepChecks._checked_iterations`) and read back once at the step's end.

:class:`StepChecks` is a mixin of ``WorstCaseGenerator``: it uses the module's GDA pieces
(``_gda_gradients``, ``_gda_updates``, ``_gradient_norms_due``, ``evaluate_gradient_norms``), its
particle table and its hyperparameters (``gamma``, ``particle_lr``, ``model_lr``, ``transport_lr``,
``train_model``, ``max_transport_ratio``, ``max_update_ratio``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_wass.datamodules.batch import Batch
from lightning_wass._validation import DivergenceError
from lightning_wass.guard import StepCheck, UpdateGuard, rms_norm
from lightning_wass.modules.worst_case_exchange import GlobalBatch, NewRows, RowExchange

class Iterate(NamedTuple):
    """One GDA iteration before its updates: its batch, the rows it read (``previous``: their
    particles and momentum, in one process), the new rows, the model's mean loss and the map's loss."""

    step: GlobalBatch
    v_old: Tensor
    new: NewRows
    model_loss: Tensor
    matching: Tensor
    previous: tuple[Tensor, Tensor] | None


class DeferredRun:
    """A step with deferred checks: the parts run so far, the scalars not yet read back, the state
    a replay starts from, and whether an error comes from a replay (it names its iteration)."""

    def __init__(self, kept: ReplayState) -> None:
        self.kept = kept
        self.done: list[Batch] = []
        self.values: list[list[Any]] = [[], [], [], []]  # finite scalars, largest moves, data norms, rows
        self.attributed = False


class ReplayState:
    """What the guard does not put back but a replay of the step needs as it was at the step's
    start: the random state (dropout). (The guard's restore puts back every module buffer,
    BatchNorm's batch counter included.)"""

    def __init__(self, cpu: Tensor, device: tuple[torch.device, Tensor] | None) -> None:
        self.cpu, self.device = cpu, device

    @classmethod
    def capture(cls, module: pl.LightningModule) -> "ReplayState":
        device = module.device
        kept = (device, torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), kept)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.device[1], self.device[0])


class StepChecks:
    """The checks of a worst-case generator's step (see the module docstring); a mixin."""

    # ------------------------------------------------------------------ how a step checks its iterations
    def _checked_iterations(
        self, parts: list[Batch], optimizers: list[Any], check: StepCheck, undo: list[Any], exchange: RowExchange,
        direct: bool, *, attribute: bool = False,
    ) -> "Iterate":
        """The iterations with every check recorded as it is made (read back at the step's end, or
        before a gradient-norm evaluation). Under DDP every step runs so.

        ``attribute=True`` (the replay of a step whose deferred checks failed, from the step's start):
        the step is verified before and after each iteration's updates, each iteration under its own
        name, so the error names the first iteration that failed and the quantity that failed first
        in it (the cause before its effects: the data, the loss, the particles, the map's loss, then
        the updates, measured from the step's start as the guard does). No gradient norms are
        evaluated (the first run made them).
        """
        step_where, first = check.where, self.iteration + 1
        last = None
        try:
            for part in parts:
                if attribute and len(parts) > 1:
                    check.where = (
                        f"{type(self).__name__} iteration {self.iteration + 1} "
                        f"(of the step's iterations {first}-{first + len(parts) - 1})"
                    )
                last = self._gda_gradients(part, optimizers, exchange, direct)
                check.finite("the training batch", last.step.x, "clean the data (NaN or Inf in the inputs)", error=ValueError)
                self._record_checks(check, last.new, optimizers)
                if attribute:
                    check.verify()  # this iteration's values, before its updates
                self._gda_updates(last, optimizers, undo, direct)
                if attribute:
                    check.verify()  # the step's updates so far
                elif self._gradient_norms_due():
                    check.verify()  # the step so far is sound (one host read) before the norms measure it
                    self.evaluate_gradient_norms(log=True)
        finally:
            check.where = step_where
        assert last is not None
        return last

    def _deferred_step(
        self, parts: list[Batch], optimizers: list[Any], undo: list[Any], exchange: RowExchange, direct: bool
    ) -> "Iterate":
        """The iterations of one process with their checks deferred to the step's end.

        Each iteration keeps a few scalars (the sum of the particles' new momentum, which is not
        finite where the data are not, the model's mean loss and the map's matching loss, the
        particles' largest move and the data's norm): every check of :meth:`_record_checks` that fails makes one of them non-finite or the
        move more than half its bound. The guard reads them back with its update checks in one host
        read at the end of the step (or before a gradient-norm evaluation inside it). If any is
        suspect, the state of the step's start is put back (the guard's restore, the particle rows,
        the random state, the integer buffers) and the step is replayed with every check in place
        (:meth:`_checked_iterations` with ``attribute=True``), which raises the error naming the
        first iteration that failed and the knob to turn, or, when nothing failed (a move between
        half its bound and its bound, a sum that overflowed), gives the same iterates.
        """
        run = DeferredRun(ReplayState.capture(self))
        try:
            with self._guarded_step(len(parts)) as check:
                return self._deferred_iterations(parts, optimizers, check, undo, exchange, direct, run)
        except DivergenceError:
            if run.attributed:
                raise
            # the guard put the networks, optimizers, buffers and counters back to the step's start
            self.particle_table.rollback(undo)
            run.kept.restore()
            with self._guarded_step(len(parts)) as check:
                return self._checked_iterations(run.done, optimizers, check, undo, exchange, direct, attribute=True)

    def _deferred_iterations(
        self, parts: list[Batch], optimizers: list[Any], check: StepCheck, undo: list[Any], exchange: RowExchange,
        direct: bool, run: "DeferredRun",
    ) -> "Iterate":
        last = None
        for part in parts:
            last = self._gda_gradients(part, optimizers, exchange, direct)
            if not run.done:
                self._register_updates(check, optimizers)
            self._deferred_values(last, run.values)
            self._gda_updates(last, optimizers, undo, direct)
            run.done.append(part)
            if self._gradient_norms_due():
                self._record_deferred(check, run.values)
                try:
                    check.verify()  # the step so far is sound (one host read) before the norms measure it
                except DivergenceError:
                    # verify put the networks, optimizers, buffers and counters back to the step's start
                    self.particle_table.rollback(undo)
                    run.kept.restore()
                    run.attributed = True
                    self._checked_iterations(run.done, optimizers, check, undo, exchange, direct, attribute=True)
                    run.attributed = False  # nothing failed: the replay gave the same iterates
                self.evaluate_gradient_norms(log=True)
        self._record_deferred(check, run.values)  # read back by the guard at the end of the step
        assert last is not None
        return last

    def _deferred_values(self, it: "Iterate", values: list[list[Any]]) -> None:
        """Record the iteration's scalars for :meth:`_record_deferred` (no host read)."""
        new = it.new
        finite, moves, norms, rows = values
        # the batch's data need no sum of their own: g <- mu g + d_v loss - (v - x) / gamma is not
        # finite where x is not (the rows' v and g are checked ones, or this step's, whose own
        # iteration's sum covers them)
        finite += [it.model_loss, new.momentum.sum(), it.matching]
        if self.max_transport_ratio is None:
            finite.append(new.samples.sum())
            return
        origins = self.particle_table.origins.index_select(0, new.index)  # type: ignore[union-attr]
        moves.append(torch.linalg.vector_norm((new.samples - origins).flatten(1), dim=1).max())
        norms.append(torch.linalg.vector_norm(origins))
        rows.append(origins.shape[0])

    def _record_deferred(self, check: StepCheck, values: list[list[Any]]) -> None:
        """One flag for the guard, not finite when a deferred scalar is suspect; empties ``values``."""
        finite, moves, norms, rows = values
        flags = [torch.stack([v.detach().float().reshape(()) for v in finite])] if finite else []
        if moves and self.max_transport_ratio is not None:
            # exact: move / max(rms, 1e-12) <= bound; suspect from half the bound on (rounding cannot
            # bridge a factor of 2), so no exact failure passes
            moved, norm = torch.stack(moves), torch.stack(norms)
            rms = norm / torch.tensor(rows, dtype=norm.dtype, device=norm.device).sqrt()
            within = moved <= (0.5 * self.max_transport_ratio) * rms.clamp_min(1e-12)
            flags.append(torch.where(within, 0.0, math.nan))
        if flags:
            check.finite("the step's deferred checks", torch.cat(flags), "")
        for kept in values:
            kept.clear()

    def _gradient_norms_due(self) -> bool:
        return bool(self.gradient_norm_every) and self.iteration % self.gradient_norm_every == 0

    def _register_updates(self, check: StepCheck, optimizers: list[Any]) -> None:
        """Register the step's optimizers with the guard before their first update (copies of the
        parameters and states; the guard checks the updates when it verifies)."""
        if self.train_model:
            check.update("model", optimizers[0], f"lower model_lr (now {self.model_lr:g})")
        check.update("transport map", optimizers[-1], f"lower transport_lr (now {self.transport_lr:g})")

    def _guarded_step(self, iterations: int = 1) -> Any:
        """One guard over the step's ``iterations`` (one snapshot, one host read at its end)."""
        guard = UpdateGuard.of(self, self.max_update_ratio)
        first = self.iteration + 1
        where = f"iteration {first}" if iterations == 1 else f"iterations {first}-{first + iterations - 1}"
        return guard.step(f"{type(self).__name__} {where}", owner=self, counters=("iteration",))

    def _record_checks(self, check: StepCheck, new: NewRows, optimizers: list[Any]) -> None:
        """What must stay finite and bounded this iteration (read back once, in ``check.verify``).

        The order is cause before effect: the model's loss at the particles (read from the table, so
        finite), then the new particles, then the transport map's matching loss, then each update.
        """
        samples, origins = new.samples, self.particle_table.origins[new.index]  # type: ignore[index]
        particle_hint = (
            f"the inner maximisation diverges: use a smaller gamma (now {self.gamma:g}; it must keep gamma times the "
            f"loss's curvature in v below 1) or a smaller particle_lr (now {self.particle_lr:g})"
        )
        check.finite("the model's loss on the particles", new.losses, lambda: self._loss_hint(samples, origins))
        check.finite("the particles' momentum", new.momentum, particle_hint)
        if self.max_transport_ratio is not None:
            moved = (samples - origins).detach().flatten(1).norm(dim=1).max() / rms_norm(origins).clamp_min(1e-12)
            check.bounded("the particles' largest move over the data's RMS norm", moved, self.max_transport_ratio, particle_hint)
        else:
            check.finite("the particles", samples, particle_hint)
        check.finite("the transport map's matching loss", new.matching, f"lower transport_lr (now {self.transport_lr:g})")
        if self.train_model:
            check.update("model", optimizers[0], f"lower model_lr (now {self.model_lr:g})")
        check.update("transport map", optimizers[-1], f"lower transport_lr (now {self.transport_lr:g})")

    def _loss_hint(self, samples: Tensor, origins: Tensor) -> str:
        """Blame what blew up: the particles (far from their points) or the model (its weights grew)."""
        if not bool(torch.isfinite(samples).all()) or (
            self.max_transport_ratio is not None
            and float((samples - origins).flatten(1).norm(dim=1).max() / rms_norm(origins).clamp_min(1e-12)) > 0.1 * self.max_transport_ratio
        ):
            return f"the particles moved far from the data: use a smaller gamma (now {self.gamma:g}) or a smaller particle_lr (now {self.particle_lr:g})"
        if self.train_model:
            norm = float(torch.stack([p.detach().float().norm() for p in self.model.parameters()]).norm())
            return f"the model's output overflowed (its weights have norm {norm:.3g}): lower model_lr (now {self.model_lr:g}) or check the loss"
        return "the frozen model's output is not finite on the data: check the model and the loss"

    @contextmanager
    def _undo_on_failure(self) -> Iterator[list[tuple[Tensor, Tensor, Tensor]]]:
        """Each iteration writes its particles before the step is verified (the next iteration
        reads them); if the step fails, its writes and its gradient-norm evaluations are undone
        (latest first; the guard restores the networks, the optimizers and the counters), so a
        failed step leaves nothing written, as if it had been verified before writing."""
        undo: list[tuple[Tensor, Tensor, Tensor]] = []
        kept = (dict(self.gradient_norms), self.gradient_norms_iteration, len(self.gradient_norm_history))
        try:
            yield undo
        except BaseException:
            self.particle_table.rollback(undo)
            self.gradient_norms, self.gradient_norms_iteration = kept[0], kept[1]
            del self.gradient_norm_history[kept[2] :]
            raise
