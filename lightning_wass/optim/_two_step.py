"""The two-step API of davda54/sam and the official OT-MDR code: ``first_step`` / ``second_step``.

Users of those codes call the optimizer between their own backward passes instead of handing it a
closure::

    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)      # theta -> theta + e(theta)
    loss_fn(model(x), y).backward()
    optimizer.second_step(zero_grad=True)     # back to theta, base step with grad L(theta + e)

:class:`TwoStepAPI` is the part of :class:`~lightning_wass.optim.OTMDR` that implements this on top
of the same pieces as ``step(closure)`` (the ascent rule, the rollback, the checks, the fp16
unscaling), so both forms take the same steps. It holds no state of its own: the step in progress
is ``self._progress.run``.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

import torch

from lightning_wass.optim import _grad_scaling as scaling
from lightning_wass.optim.norm_stats import frozen_running_stats
from lightning_wass.optim._step_run import Grads, StepRun

if TYPE_CHECKING:
    from lightning_wass.optim.otmdr import OTMDR


class TwoStepAPI:
    """``first_step`` / ``second_step`` / ``cancel_step`` for :class:`~lightning_wass.optim.OTMDR`.

    An exception between ``first_step`` and ``second_step`` leaves the parameters perturbed and the
    BatchNorm statistics frozen: :meth:`cancel_step` puts both back.
    """

    @torch.no_grad()
    def first_step(self: OTMDR, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None) -> None:
        """Ascent step from the gradient now in ``.grad`` (davda54/sam and the official code's ``first_step``).

        The davda54/sam loop runs unchanged::

            loss_fn(model(x), y).backward()
            optimizer.first_step(zero_grad=True)      # theta -> theta + e(theta)
            loss_fn(model(x), y).backward()
            optimizer.second_step(zero_grad=True)     # back to theta, base step with grad L(theta + e)

        For OT-MDR, call it after the backward of each of the ``S`` ascent passes of a particle
        (the official ``first_step`` / ``first_step_grad``), then :meth:`second_step` after the
        particle's final backward; with ``K`` particles repeat that ``K`` times (each particle
        starts again at ``theta``: back-propagate its first chunk there). ``zero_grad=False`` keeps
        ``.grad``, so the next backward adds to it (as in davda54/sam). BatchNorm statistics are
        frozen from the first ``first_step`` of a step to its last ``second_step``. With fp16 give
        the ``grad_scaler`` that scaled the losses (or :meth:`attach_grad_scaler` it).
        """
        name = type(self).__name__
        if self.interval > 1:
            raise RuntimeError(
                f"{name}(interval={self.interval}) skips perturbations inside step(closure) only: the two-step loop has "
                "computed both passes before the optimizer sees them. Skip first_step yourself on the plain steps "
                "(backward; optimizer.base_optimizer.step(); optimizer.zero_grad()), or build it with interval=1."
            )
        run = self._progress.run
        if run is None:
            run = self._begin(grad_scaler, two_step=True)
        s, k = run.ascent_step, run.particle
        if s >= self.ascent_steps:
            self._cancel(run)
            raise RuntimeError(
                f"{name}.first_step() was called {s + 1} times for particle {k}, but ascent_steps={self.ascent_steps}: "
                "call second_step() after the backward of the particle's final pass. The step was cancelled and the "
                "parameters restored."
            )
        # zero_grad=False: .grad stays for the next backward to add to, so it stays scaled (copy unscaled)
        grads = self._two_step_gradients(run, f"ascent step {s} of particle {k}", keep=not zero_grad,
                                         grad_scaler=grad_scaler, rescale=not zero_grad)
        run.history = self._ascend_chain(run, grads, run.history, k, s)
        run.ascent_step += 1
        freeze_now = self.freeze_norm_stats is True or (
            self.freeze_norm_stats == "final_passes" and run.ascent_step == self.ascent_steps
        )
        if freeze_now and run.frozen is None:  # the next pass is perturbed (True) or final ("final_passes")
            run.frozen = ExitStack()
            run.frozen.enter_context(frozen_running_stats(param_ids=run.structure.id_set))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self: OTMDR, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None) -> None:
        """Back to ``theta`` and, after the ``K``-th particle, the base step with the gradient now in ``.grad``.

        davda54/sam's ``second_step``: the gradient stepped is whatever ``.grad`` holds after the
        final backward. With ``K > 1`` particles each call ends one particle's chain (the official
        ``save_grad``): its gradient is kept, the parameters return to ``theta`` and ``.grad`` is
        cleared; the ``K``-th call combines the ``K`` gradients (``particle_reduction``) and steps
        (the official ``second_step``). After the base step ``.grad`` holds the gradient that was
        stepped unless ``zero_grad=True``.
        """
        name = type(self).__name__
        run = self._progress.run
        if run is None:
            raise RuntimeError(f"{name}.second_step() was called without first_step(): call first_step() after the first backward")
        if run.ascent_step < self.ascent_steps:
            done = run.ascent_step
            self._cancel(run)
            raise RuntimeError(
                f"{name}.second_step() was called after {done} of the {self.ascent_steps} ascent steps of particle "
                f"{run.particle} (ascent_steps={self.ascent_steps}): call first_step() after each ascent pass. The step "
                "was cancelled and the parameters restored."
            )
        # K > 1: a copy, since the next particle's passes may reuse the gradient buffers (DDP bucket views)
        final = self._two_step_gradients(run, f"the final pass of particle {run.particle}", keep=self.num_particles > 1,
                                         grad_scaler=grad_scaler)
        run.add_final(final)
        run.restore_theta()
        if run.particle + 1 < self.num_particles:
            if self.freeze_norm_stats == "final_passes":
                run.release()  # the next particle's ascent passes update the statistics again
            run.particle += 1
            run.ascent_step = 0
            run.history = []
            for p in run.params:
                p.grad = None
            return
        try:
            run.release()
            self._finish(run)
        finally:
            self._end(run)
        if run.update_scaler and run.scaling is not None:
            run.scaling.scaler.update()  # the attached scaler of a Lightning plugin: nobody else calls update
        if zero_grad:
            self.zero_grad()

    def cancel_step(self: OTMDR) -> None:
        """Abandon a two-step step in progress: parameters back to ``theta``, BatchNorm statistics released."""
        run = self._progress.run
        if run is not None:
            self._cancel(run)

    def _two_step_gradients(
        self: OTMDR, run: StepRun, label: str, keep: bool, grad_scaler: torch.amp.GradScaler | None = None, rescale: bool = False
    ) -> Grads:
        """The gradients now in ``.grad`` for ``label``: unscaled (fp16), checked, copied if ``keep``.

        ``rescale``: leave ``.grad`` itself scaled again (the caller's next scaled backward adds to it).
        """
        if grad_scaler is not None and scaling.is_active(grad_scaler) and (run.scaling is None or run.scaling.scaler is not grad_scaler):
            self._cancel(run)
            raise RuntimeError(
                f"{run.where}: a grad_scaler was given for {label} but not to the first first_step() of the step, whose "
                "gradients were then used scaled: give the same grad_scaler to every first_step() and second_step() "
                "(or attach_grad_scaler it once). The step was cancelled and the parameters restored."
            )
        if run.scaling is not None:
            run.scaling.unscale_present()
        grads = run.gradients()
        if all(g is None for g in grads):
            self._cancel(run)
            raise RuntimeError(f"{run.where}: no gradients in .grad for {label}: call backward() before first_step() / second_step()")
        present = [g for g in grads if g is not None]
        run.check("the gradient of {}", torch.stack([n.to(run.device) for n in torch._foreach_norm(present, 2, dtype=torch.float32)]).norm(), label)
        if keep:  # the caller keeps .grad, so the next backward would add to it in place
            grads = [None if g is None else g.clone() for g in grads]
        if rescale and run.scaling is not None and present:
            torch._foreach_mul_(present, run.scaling.scaler._get_scale_async().to(present[0].device))
        return grads

    def _cancel(self: OTMDR, run: StepRun) -> None:
        run.restore_theta()
        self._end(run)

