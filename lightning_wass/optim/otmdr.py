"""OT-MDR: optimal-transport model distributional robustness as a ``torch.optim`` wrapper.

Paper: Nguyen et al., "Optimal Transport Model Distributional Robustness", NeurIPS 2023,
arXiv:2306.04178 (official code: github.com/anh-ntv/OT_MDR). SAM (Foret et al., arXiv:2010.01412)
is its one-particle, one-step, noise-free case; ASAM (Kwon et al., arXiv:2102.11600) is the
``adaptive`` geometry.

The method: minimise over a centre model distribution the worst expected loss over model
distributions in a Wasserstein ball of radius ``rho`` around it. With entropic regularisation the
inner maximiser is a Gibbs distribution, sampled here with a short chain of normalised gradient
ascent steps plus Langevin noise (``sigma xi``), repeated for ``K`` particles. Per step, from the
current parameters ``theta_0``::

    g_0 = grad L(theta_0)                                   (pass 0: BatchNorm statistics update here only)
    for each particle k = 1..K:
        theta_1 = theta_0 + rho_1 T^2 g_0 / ||T g_0|| + sigma xi_1
        for s = 1..S-1:  g_s = grad L(theta_s)
                         theta_{s+1} = theta_s + rho_{s+1} T^2 d_s / ||T g_s|| + sigma xi_{s+1}
        G_k = grad L(theta_S)                               (the final pass of the particle)
    theta <- base_optimizer step at theta_0 with the gradient (1/K) sum_k G_k   (or the sum)

``d_s = g_0 + ... + g_s`` (``chain_direction="summed"``, the official code's ``merge_grad``,
``mode 1``), ``d_s = (g_0 + ... + g_s) / (s + 1)`` (``"averaged"``: the official ``mode 1.1`` of its
ensemble runs) or ``d_s = g_s`` (``"current"``); ``T = |theta| + eta`` with ``adaptive=True``, else ``T = 1``.
``num_particles=1, ascent_steps=1, noise_std=0`` is exactly SAM. The radius of step ``s`` is
``group["rho"] * group["rho_fractions"][s]``: ``group["rho"]`` is one plain number (the largest
radius) that a schedule may set.

With ``K > 1`` each particle evaluates its ascent passes on its own chunks of the batch (ascent
step ``s`` on chunk ``s`` of ``S`` disjoint parts of a random permutation drawn for the particle, as
the official ``SAMnChain`` does); its first gradient is taken on its own chunk 0 at ``theta_0``.
The closure honours the chunks through :attr:`OTMDR.current_pass`
(:class:`~lightning_wass.optim.PassInfo`). With ``K = 1``, ``chunked_ascent=True`` gives the
official single-chain variant (contiguous halves ``B1``, ``B2`` for ``S = 2``). Final passes always
see the whole batch.

Two ways to drive it, with the same trajectory:

- ``step(closure)``: the closure clears the gradients, computes the loss, back-propagates and
  returns it; the optimizer calls it ``1 + K S`` times (``1 + K (S + 1) - 1`` with chunks).
- the two-step API of davda54/sam and the official code: ``first_step()`` after the backward of each
  ascent pass, ``second_step()`` after the backward of each particle's final pass (the ``K``-th
  takes the base step). See :meth:`OTMDR.first_step`.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_wass._validation import DivergenceError, check_choice, check_int, check_positive
from lightning_wass.optim import _entry_gradients as entry_grads
from lightning_wass.optim import _grad_scaling as scaling
from lightning_wass.optim import _options as options
from lightning_wass.functional import otmdr as P
from lightning_wass.seeding import mix_seed
from lightning_wass.optim.norm_stats import frozen_running_stats
from lightning_wass.optim._step_run import Grads, Progress, StepRun, current_structure, describe, has_none, norm_buffer
from lightning_wass.optim.snapshot import copy_into
from lightning_wass.optim._two_step import TwoStepAPI
from lightning_wass.optim.passes import PassInfo

CHAIN_DIRECTIONS = ("summed", "averaged", "current")
NORM_STATS_FREEZES = (True, False, "final_passes")
PARTICLE_REDUCTIONS = ("mean", "sum")

_NO_CLOSURE = (
    "{name}.step() needs a closure that clears the gradients, computes the loss, calls backward() and returns "
    "the loss (the contract of torch.optim.LBFGS): it evaluates the loss at several perturbed parameter points per "
    "step. It was called without one. For the davda54/sam loop (backward, first_step, backward, second_step) call "
    "first_step() and second_step() instead of step(). {scaler_hint}"
)
_SCALER_HINT = (
    "It was called by a GradScaler without a closure (Lightning's precision='16-mixed' does this, as does "
    "scaler.step(optimizer)): with fp16 use Trainer(plugins=[lightning_wass.SAMMixedPrecision('16-mixed', "
    "device)]) in Lightning, or optimizer.step(closure, grad_scaler=scaler); scaler.update() in a plain loop."
)


class OTMDR(TwoStepAPI, Optimizer):
    """OT-MDR optimizer (SAM family) wrapping a base optimizer; see the module docstring for the math.

    Args:
        params: parameters or parameter groups (as for any ``torch.optim`` optimizer). A group may
            override ``rho``, ``adaptive``, ``adaptive_eta`` and ``noise_std``, and set
            ``perturb=False`` to be stepped but never perturbed (e.g. the sigmas of a Bayesian net).
        base_optimizer: the optimizer class that takes the step (``torch.optim.SGD``, ``Adam``, ...),
            built on the same parameter groups with ``**base_kwargs``.
        rho: the radius of each ascent step (a number: the same for every step). Stored per group as
            ``group["rho"]`` (the largest radius, a plain number a schedule may set) and
            ``group["rho_fractions"]`` (each step's radius as a fraction of it).
        num_particles: ``K``, the number of chains whose final gradients are combined.
        ascent_steps: ``S``, the chain length (default ``len(rho)``, or 1 for a number).
        noise_std: ``sigma``, the Langevin noise added after each ascent step.
        adaptive, adaptive_eta: ASAM geometry ``T = |theta| + eta``.
        chain_direction: ``"summed"`` (official single model, ``mode 1``), ``"averaged"`` (official
            ensembles, ``mode 1.1``) or ``"current"``.
        chunked_ascent: ascent passes on disjoint chunks of the batch. Default (``None``): on when
            ``K > 1`` (each particle its own chunks: identical particles would waste K-fold work, so
            ``K > 1`` with ``chunked_ascent=False`` or ``ascent_steps=1`` is refused), off for ``K = 1``.
        particle_reduction: how the ``K`` final gradients combine: ``"mean"`` (default; the step size
            does not depend on ``K``) or ``"sum"`` (what the official ``SAMnChain`` does, mode 1).
        interval: take the perturbed step every ``interval``-th step and a plain base step (one
            closure call) otherwise, as MosaicML Composer's SAM does (steps ``interval``,
            ``2 interval``, ...). ``step(closure)`` only.
        sync_ascent: under DDP, compute the perturbation from gradients averaged over replicas
            (default). ``False``: from each replica's own gradient (the SAM paper's m-sharpness);
            the ascent passes then run inside the context given to :meth:`attach_no_sync`.
        freeze_norm_stats: ``True``: BatchNorm running statistics change on the first pass only
            (works on ``torch.compile``-d models too); ``"final_passes"``: they change on every
            ascent pass and stay frozen on the final passes (the official code's
            ``enable_running_stats`` / ``disable_running_stats`` pattern); ``False``: never frozen.
        seed: seeds the noise and the chunk permutations (with the step number and particle), so a
            resumed run draws the same noise as an uninterrupted one.
        max_update_ratio: the largest base step allowed, ``||theta' - theta|| <= max_update_ratio *
            max(||theta||, 1)`` (``None``: no bound). A step beyond it (an exploding learning rate
            makes finite but useless weights, e.g. 1e22) is undone and raises ``DivergenceError``.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...);
            non-finite or negative ``lr`` / ``weight_decay`` and ``momentum`` or ``betas`` outside
            ``[0, 1)`` are refused here.

    Closure contract: ``closure()`` clears the gradients, computes the loss, back-propagates and
    returns the loss. Gradients present when ``step`` is entered are the earlier micro-batches of
    Lightning's ``accumulate_grad_batches`` (added to every pass, whose closure does not clear
    them), or, in the davda54/sam README form, this batch's gradient at ``theta`` (recognised and
    used once); see :mod:`lightning_wass.optim._entry_gradients`. Anything ambiguous is refused.

    ``step`` returns the detached loss of the first pass (at ``theta_0``). Every loss and gradient
    of the step and the parameters after the base step are checked (one host synchronisation per
    step), and so is the size of the base step (``max_update_ratio``): a non-finite one, or a step
    beyond the bound, restores the parameters and the base optimizer's state to their values
    before the step and raises :class:`~lightning_wass.DivergenceError` naming what diverged. With a
    ``GradScaler`` an inf/NaN gradient instead skips the step and lowers the scale, as
    ``GradScaler.step`` does.

    Example::

        optimizer = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=1e-4,
                          lr=0.1, momentum=0.9, weight_decay=5e-4)

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
    """

    # GradScaler.step hands a scaler-aware optimizer its scaler instead of stepping scaled gradients.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Callable[..., Optimizer],
        *,
        rho: float | Iterable[float] = (0.05, 0.1),
        num_particles: int = 1,
        ascent_steps: int | None = None,
        noise_std: float = 1e-4,
        adaptive: bool = False,
        adaptive_eta: float = 0.0,
        chain_direction: str = "summed",
        chunked_ascent: bool | None = None,
        particle_reduction: str = "mean",
        interval: int = 1,
        sync_ascent: bool = True,
        freeze_norm_stats: bool | str = True,
        seed: int = 0,
        max_update_ratio: float | None = 1e3,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(params, (Iterable, Tensor)):
            raise TypeError(f"params must be an iterable of tensors or of param-group dicts (e.g. model.parameters()), got {type(params).__name__}")
        self.max_update_ratio = None if max_update_ratio is None else check_positive("max_update_ratio", max_update_ratio)
        self.num_particles = check_int("num_particles", num_particles, minimum=1)
        if ascent_steps is not None:
            check_int("ascent_steps", ascent_steps, minimum=1)
        rho_values = options.radii(rho, ascent_steps)
        self.ascent_steps = len(rho_values)
        self.chunked_ascent = self._check_chunking(chunked_ascent)
        noise_std = check_positive("noise_std", noise_std, allow_zero=True)
        adaptive_eta = check_positive("adaptive_eta", adaptive_eta, allow_zero=True)
        self.chain_direction = check_choice("chain_direction", chain_direction, CHAIN_DIRECTIONS)
        self.particle_reduction = check_choice("particle_reduction", particle_reduction, PARTICLE_REDUCTIONS)
        self.interval = check_int("interval", interval, minimum=1)
        self.sync_ascent = bool(sync_ascent)
        if freeze_norm_stats not in NORM_STATS_FREEZES:
            raise ValueError(f"freeze_norm_stats must be True, False or 'final_passes', got {freeze_norm_stats!r}")
        self.freeze_norm_stats = freeze_norm_stats
        self.seed = check_int("seed", seed)
        options.check_base_kwargs(base_kwargs)
        base_factory = self._check_base_optimizer(base_optimizer)

        largest, fractions = options.split_radii(rho_values)
        defaults = dict(rho=largest, rho_fractions=fractions, adaptive=bool(adaptive), adaptive_eta=adaptive_eta,
                        noise_std=noise_std, perturb=True)
        self._progress = Progress()
        super().__init__(params, defaults)
        self.base_optimizer: Optimizer = base_factory(self.param_groups, **base_kwargs)
        if not isinstance(self.base_optimizer, Optimizer):
            raise TypeError(
                f"base_optimizer must build a torch.optim.Optimizer, but it returned {type(self.base_optimizer).__name__}"
            )
        # One set of groups and one state for both: schedulers, checkpoints and load_state_dict see
        # the base optimizer's hyperparameters and its state (momentum, Adam moments).
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        self._noise_source = P.NoiseSource()

    # ------------------------------------------------------------------ construction helpers
    def _check_chunking(self, chunked_ascent: bool | None) -> bool:
        K, S = self.num_particles, self.ascent_steps
        if chunked_ascent is None:
            chunked_ascent = K > 1
        if not isinstance(chunked_ascent, bool):
            raise TypeError(f"chunked_ascent must be True, False or None, got {chunked_ascent!r}")
        if K > 1 and (not chunked_ascent or S < 2):
            why = "chunked_ascent=False" if not chunked_ascent else "ascent_steps=1 (one chunk: the whole batch)"
            raise ValueError(
                f"num_particles={K} with {why}: every particle would start from the same whole-batch gradient, so the "
                f"{K} chains would differ only by the noise, at {K} times the cost of one. Use chunked_ascent=True "
                "(the default for num_particles > 1) with ascent_steps >= 2, so that each particle ascends on its "
                "own chunks of the batch, or num_particles=1."
            )
        return chunked_ascent

    @staticmethod
    def _check_base_optimizer(base_optimizer: Any) -> Callable[..., Optimizer]:
        if isinstance(base_optimizer, Optimizer):
            raise TypeError(
                "base_optimizer must be an optimizer class (e.g. torch.optim.SGD) that OTMDR builds on the same "
                f"parameter groups, not an optimizer instance ({type(base_optimizer).__name__})"
            )
        if isinstance(base_optimizer, type):
            if not issubclass(base_optimizer, Optimizer):
                raise TypeError(f"base_optimizer must be a torch.optim.Optimizer subclass, got the class {base_optimizer.__name__}")
            if issubclass(base_optimizer, OTMDR):
                raise TypeError("base_optimizer must be a plain optimizer (SGD, Adam, ...), not another SAM-family optimizer")
            if issubclass(base_optimizer, torch.optim.LBFGS):
                raise TypeError("base_optimizer must step without a closure; torch.optim.LBFGS is not supported")
            return base_optimizer
        if callable(base_optimizer):
            return base_optimizer
        raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, got {type(base_optimizer).__name__} ({base_optimizer!r})")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating its OT-MDR keys (``rho``, ``noise_std``, ``adaptive_eta``)."""
        steps = getattr(self, "ascent_steps", None)
        if "rho" in param_group:
            param_group["rho"], param_group["rho_fractions"] = options.split_radii(
                options.radii(param_group["rho"], steps, "param group rho")
            )
        if "noise_std" in param_group:
            param_group["noise_std"] = check_positive("param group noise_std", param_group["noise_std"], allow_zero=True)
        if "adaptive_eta" in param_group:
            param_group["adaptive_eta"] = check_positive("param group adaptive_eta", param_group["adaptive_eta"], allow_zero=True)
        options.check_base_kwargs({k: v for k, v in param_group.items() if k in ("lr", "momentum", "weight_decay", "betas")})
        super().add_param_group(param_group)
        base = getattr(self, "base_optimizer", None)
        if base is not None and not any(g is param_group for g in base.param_groups):
            base.add_param_group(param_group)

    def attach_no_sync(self, context: Callable[[], AbstractContextManager[Any]]) -> None:
        """Give the context that skips DDP's gradient all-reduce, for ``sync_ascent=False``.

        The ascent passes (whose gradients only set the perturbation) run inside ``context()``; the
        final passes are synchronised as usual, so replicas take identical steps. PyTorch:
        ``optimizer.attach_no_sync(ddp_model.no_sync)``; Lightning (in ``configure_optimizers``):
        ``optimizer.attach_no_sync(self.trainer.strategy.block_backward_sync)``.
        """
        if not callable(context):
            raise TypeError(f"context must be a callable returning a context manager, got {type(context).__name__}")
        self._progress.no_sync = context

    def attach_grad_scaler(self, grad_scaler: torch.amp.GradScaler | None, update_after_two_step: bool = False) -> None:
        """Use ``grad_scaler`` for every step that is not given one (``None`` detaches).

        :class:`~lightning_wass.SAMMixedPrecision` attaches its scaler, so that the two-step API in a
        manual-optimization ``training_step`` unscales each pass too; with ``update_after_two_step``
        the last ``second_step`` of a step also calls ``grad_scaler.update()`` (nothing else would
        there: the plugin's ``optimizer_step`` never runs in that loop).
        """
        scaling.check_scaler(grad_scaler)
        self._progress.grad_scaler = grad_scaler
        self._progress.update_attached_scaler = bool(update_after_two_step) and grad_scaler is not None

    # ------------------------------------------------------------------ read-only views of the progress
    @property
    def current_pass(self) -> PassInfo | None:
        """The pass the closure is evaluating (``None`` outside ``step``); see :class:`PassInfo`."""
        return self._progress.current_pass

    @property
    def completed_steps(self) -> int:
        """Steps taken (skipped fp16 steps not counted)."""
        return self._progress.completed_steps

    @property
    def last_step_skipped(self) -> bool:
        """Whether the last step was skipped because a GradScaler found an inf/NaN gradient."""
        return self._progress.last_step_skipped

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._progress.zero_grad_calls += 1
        super().zero_grad(set_to_none)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state and hyperparameters (shared) plus OT-MDR's step counter."""
        state = super().state_dict()
        state["otmdr"] = {"completed_steps": self._progress.completed_steps, "skipped_steps": self._progress.skipped_steps}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by a SAM-family optimizer; a plain / davda54 one is refused (``ValueError``)."""
        options.check_loaded_groups(state_dict, type(self).__name__)
        state_dict = dict(state_dict)
        extra = state_dict.pop("otmdr", {})
        super().load_state_dict(state_dict)
        for i, group in enumerate(self.param_groups):
            if "rho_fractions" not in group:  # saved before rho became one number per group
                group["rho"], group["rho_fractions"] = options.split_radii(
                    options.radii(group["rho"], self.ascent_steps, f"param group {i} rho")
                )
        self.base_optimizer.param_groups = self.param_groups
        self.base_optimizer.state = self.state
        self._progress.completed_steps = int(extra.get("completed_steps", 0))
        self._progress.skipped_steps = int(extra.get("skipped_steps", 0))

    # ------------------------------------------------------------------ the closure form
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, grad_scaler: torch.amp.GradScaler | None = None) -> Tensor:  # type: ignore[override]
        """One step: ``1 + K S`` closure calls (see the module docstring), then the base step.

        Args:
            closure: clears the gradients, computes the loss, back-propagates, returns the loss.
            grad_scaler: fp16 loss scaling: the closure back-propagates ``grad_scaler.scale(loss)``;
                every pass is unscaled before it is used, and an inf/NaN gradient skips the step.
                Call ``grad_scaler.update()`` after the step. ``grad_scaler.step(optimizer, closure)``
                passes itself here.
        """
        given = closure
        closure = self._check_closure(closure, grad_scaler)
        run = self._begin(grad_scaler, two_step=False)
        run.lightning_accumulation = entry_grads.is_lightning_accumulation(given)
        try:
            if not self._perturbs(run.step_number):
                run.loss = self._pass(run, closure, self._info(run, 0, None, perturbed=False), ascent=False)
                run.add_final(run.gradients())
            else:
                run.loss = self._pass(run, closure, self._info(run, 0, 0, perturbed=False), ascent=True)
                g0 = run.gradients()
                if all(map(is_, g0, repeat(None))):
                    raise RuntimeError(f"{run.where}: the closure produced no gradients; it must call backward() on the loss it returns")
                self._check_chunks_honoured(run)
                with frozen_running_stats(param_ids=run.structure.id_set) if self.freeze_norm_stats is True else nullcontext():
                    for k in range(self.num_particles):
                        run.add_final(self._particle_chain(run, closure, k, g0 if k == 0 else None))
                        if k + 1 < self.num_particles:  # later passes must not overwrite the running sum
                            run.kept.keep("final", run.final_sum)
                g0 = None
            self._finish(run)
            return run.loss.detach()
        except BaseException:
            run.restore_theta()
            raise
        finally:
            self._end(run)
            for p in run.params:
                p.grad = None

    def _particle_chain(self, run: StepRun, closure: Callable[[], Any], k: int, g_start: Grads | None) -> Grads:
        """One particle's chain from ``theta_0``: ``S`` ascent steps, then the final pass; its gradient."""
        if k > 0:
            run.restore_theta()
            self._pass(run, closure, self._info(run, k, 0, perturbed=False), ascent=True)
            g_start = run.gradients()
        assert g_start is not None
        grads, history = g_start, []
        for s in range(self.ascent_steps):
            history = self._ascend_chain(run, grads, history, k, s)
            if s + 1 < self.ascent_steps:  # a later ascent pass must not overwrite the kept gradients
                run.kept.keep("history", [g for term in history for g in term if g is not None])
                self._pass(run, closure, self._info(run, k, s + 1, perturbed=True), ascent=True)
                grads = run.gradients()
        run.kept.keep("history", None)
        with frozen_running_stats(param_ids=run.structure.id_set) if self.freeze_norm_stats == "final_passes" else nullcontext():
            self._pass(run, closure, self._info(run, k, None, perturbed=True), ascent=False)
        return run.gradients()

    def _ascend_chain(self, run: StepRun, grads: Grads, history: list[Grads], k: int, s: int) -> list[Grads]:
        """Ascent step ``s`` of particle ``k`` from ``grads``; returns the chain's gradients so far."""
        chained = self.chain_direction != "current"
        terms = history + [grads] if chained else [grads]
        # the seed is derived only where noise is drawn (noise_std = 0 adds nothing: SAM)
        noisy = any(group["noise_std"] and group["perturb"] for group in self.param_groups)
        seed = mix_seed(self.seed, run.step_number, k, s, 0, self._seed_rank()) if noisy else 0
        scale = 1.0 / (s + 1) if self.chain_direction == "averaged" else 1.0
        norm = self.ascend(grads, terms, s, seed, direction_scale=scale)
        run.check("the gradient norm of particle {}, ascent step {}", norm, k, s)
        return terms if chained else []

    # ------------------------------------------------------------------ the ascent rule
    def ascend(
        self, gradient: Grads, direction_terms: list[Grads], ascent_step: int, noise_seed: int, direction_scale: float = 1.0
    ) -> Tensor:
        """One normalised ascent step on every perturbable group, in place::

            theta <- theta + rho_s T^2 c (sum of direction_terms) / ||T gradient|| + sigma xi

        with one norm over all perturbable groups, ``rho_s = group["rho"] * group["rho_fractions"][s]``
        ``c = direction_scale`` and ``xi ~ N(0, I)`` drawn from ``noise_seed``. Lists are aligned with the parameters of
        ``self.param_groups`` (flattened); ``None`` entries count as zero. Returns ``||T gradient||``
        (a 0-d tensor). Override to change the ascent rule.
        """
        run = self._progress.run
        structure = run.structure if run is not None else current_structure(self._progress, self.param_groups)
        params = structure.params
        device = structure.device
        squares: Tensor | None = None
        work = []
        whole = len(gradient) == len(params)
        for j, group, start, stop in structure.perturbed_groups:
            # (the structure's groups are the param groups: their perturb flags were checked at its lookup)
            one_slice = whole and start == 0 and stop == len(params)
            grads = gradient if one_slice else gradient[start:stop]
            if not has_none(grads):  # (slices: no index lists to build)
                if one_slice:
                    ps, term_lists = params, list(direction_terms)
                else:
                    ps, term_lists = params[start:stop], [term[start:stop] for term in direction_terms]
            else:
                live = [i for i in range(start, stop) if gradient[i] is not None]
                ps, grads = [params[i] for i in live], [gradient[i] for i in live]
                term_lists = [[term[i] for i in live] for term in direction_terms]
            t = P.scaling(ps, group["adaptive"], group["adaptive_eta"])
            buffer = norm_buffer(self._progress, j)  # a flat copy reused step after step (CPU)
            if t is None and structure.all_cpu and grads:  # sum_of_squares' CPU path, without its frames
                layout = run.layout_of(grads, start) if run is not None else None
                group_squares = P.flat_norm(buffer.load(grads, layout), device).square()
            else:
                layout = run.layout_of(grads, start) if run is not None and t is None else None
                group_squares = P.sum_of_squares(grads, t, device, buffer, layout)  # type: ignore[misc]
            squares = group_squares if squares is None else squares + group_squares
            radius = options.group_radius(group, j, ascent_step, self.ascent_steps) * direction_scale
            work.append((j, group, ps, term_lists, t, radius))
        norm = torch.zeros((), device=device) if squares is None else squares.sqrt()
        host_norm = float(norm) if _reads_back_for_free(device) else None
        for j, group, ps, term_lists, t, radius in work:
            if host_norm is not None:
                P.ascend_terms_(ps, term_lists, radius / (host_norm + P.EPS), t)
            else:
                P.ascend_(ps, P.sum_terms(term_lists), radius / (norm + P.EPS), t)
            if group["noise_std"]:
                self._noise_source.add_(ps, group["noise_std"], mix_seed(noise_seed, j))
        return norm

    # ------------------------------------------------------------------ one pass
    def _pass(self, run: StepRun, closure: Callable[[], Any], info: PassInfo, ascent: bool) -> Tensor:
        """Evaluate the closure once: gradients reset to the entry ones, unscaled, checked."""
        progress = self._progress
        progress.current_pass = info
        params = run.params
        has_entry = run.has_entry_gradients
        if has_entry:
            for p, g in zip(params, run.entry):
                p.grad = None if g is None else g.clone()
        elif run.pass_count:  # (before the first pass .grad is the entry: all None already)
            for p in params:
                p.grad = None
        run.pass_count += 1
        classify = has_entry and info.index == 0
        if classify:  # weak references: a strong one would make autograd accumulate out of place
            zero_grad_calls = progress.zero_grad_calls
            handed = [None if p.grad is None else weakref.ref(p.grad) for p in params]
        scaled = run.scaling
        if scaled is not None:
            scaled.begin_pass()
        if ascent and not self.sync_ascent:
            with self._ascent_context()():
                value = closure()
        else:
            value = closure()
        if classify:
            self._classify_entry(run, progress.zero_grad_calls != zero_grad_calls, handed)
        if scaled is not None:
            scaled.unscale_pass()
        loss = self._as_loss(value)
        run.check(_loss_of, loss, info)
        if run.kept.active:
            run.kept.check(run.gradients())
        return loss

    def _classify_entry(self, run: StepRun, zero_grad_called: bool, handed: list[Any]) -> None:
        """Decide what the gradients present at ``step`` entry mean (see ``_entry_gradients``)."""
        after = run.gradients()
        replaced = any(a is not h() for a, h in zip(after, handed) if h is not None)
        if zero_grad_called or replaced:
            run.entry = [None] * len(run.params)  # a clearing closure: the entry gradients play no part
        elif run.lightning_accumulation:
            return  # accumulation window: every pass adds to the earlier micro-batches
        elif entry_grads.added_exactly_the_entry(after, run.entry):
            for a, e in zip(after, run.entry):
                if a is not None and e is not None:
                    a.sub_(e)
            run.entry = [None] * len(run.params)
            if "duplicate" not in self._progress.warned:
                self._progress.warned.add("duplicate")
                warnings.warn(
                    f"{type(self).__name__}.step(closure) was called after a backward of the same batch (the davda54/sam "
                    "README form): that gradient equals the closure's first pass, so it is used once. Drop the backward "
                    "before step() to save one forward-backward per step.",
                    stacklevel=4,
                )
        else:
            raise RuntimeError(entry_grads.AMBIGUOUS.format(where=run.where))

    def _info(self, run: StepRun, particle: int, ascent_step: int | None, perturbed: bool) -> PassInfo:
        """The next pass's description (its index is the number of passes so far)."""
        use_chunks = self.chunked_ascent and ascent_step is not None and self._perturbs(run.step_number)
        return PassInfo(
            index=run.pass_count,
            particle=particle,
            ascent_step=ascent_step,
            perturbed=perturbed,
            chunk=ascent_step if use_chunks else None,
            num_chunks=self.ascent_steps if use_chunks else None,
            step=run.step_number,
            permutation_seed=(
                mix_seed(self.seed, run.step_number, particle, 104729, self._seed_rank())
                if use_chunks and self.num_particles > 1 else None
            ),
            _on_select=self._mark_selected,
        )

    def _mark_selected(self) -> None:
        self._progress.selected = True

    def _check_chunks_honoured(self, run: StepRun) -> None:
        if not self.chunked_ascent or self._progress.selected:
            return
        if self.num_particles > 1:
            raise RuntimeError(
                f"{run.where}: num_particles={self.num_particles}, but the closure evaluates the whole batch on every pass "
                "(it did not call optimizer.current_pass.select(...)), so every particle would start from the same "
                "gradient. Restrict the batch in the closure: x, y = optimizer.current_pass.select(x, y). The parameters "
                "were left unchanged."
            )
        if "unchunked" not in self._progress.warned:
            self._progress.warned.add("unchunked")
            warnings.warn(
                f"{type(self).__name__}(chunked_ascent=True): the closure did not call optimizer.current_pass.select(...), "
                "so every pass evaluates the whole batch (the whole-batch chain).",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ beginning and end of a step
    def _check_closure(self, closure: Any, grad_scaler: Any) -> Callable[[], Any]:
        name = type(self).__name__
        if self._progress.run is not None and self._progress.run.two_step:
            raise RuntimeError(
                f"{name}.step() was called while a first_step() / second_step() step is in progress: finish it with "
                "second_step() or call cancel_step()"
            )
        if closure is None:
            hint = _SCALER_HINT if grad_scaler is not None or hasattr(self, "grad_scale") else ""
            raise RuntimeError(_NO_CLOSURE.format(name=name, scaler_hint=hint).strip())
        if not callable(closure):
            raise TypeError(f"closure must be callable (it computes and back-propagates the loss), got {type(closure).__name__}")
        if grad_scaler is None and hasattr(self, "grad_scale") and self._progress.grad_scaler is None:
            raise RuntimeError(
                f"{name}.step was called by a GradScaler that did not pass itself, so the passes of the step cannot be "
                "unscaled one by one: call optimizer.step(closure, grad_scaler=scaler) and then scaler.update()."
            )
        return _with_grad(closure)

    def _begin(self, grad_scaler: Any, two_step: bool) -> StepRun:
        scaling.check_scaler(grad_scaler)
        structure = current_structure(self._progress, self.param_groups)
        step_number = self._progress.completed_steps + 1
        run = StepRun(structure, step_number, f"{type(self).__name__} step {step_number}", self._progress)
        scaler = grad_scaler if grad_scaler is not None else self._progress.grad_scaler
        if scaling.is_active(scaler):
            run.scaling = scaling.ScaledPasses(scaler, self)
            run.update_scaler = two_step and grad_scaler is None and self._progress.update_attached_scaler
        run.two_step = two_step
        self._progress.selected = False
        self._progress.last_step_skipped = False
        self._progress.run = run
        return run

    def _end(self, run: StepRun) -> None:
        run.release()
        self._progress.current_pass = None
        self._progress.run = None

    def _perturbs(self, step_number: int) -> bool:
        return step_number % self.interval == 0

    def _finish(self, run: StepRun) -> None:
        """Back to ``theta_0``, combine the particles, take the base step, then check everything once.

        On a non-finite value the parameters and the base optimizer's state return to their values
        before the step: with a GradScaler that found an inf the step is skipped (the scale is
        lowered by the user's ``scaler.update()``), otherwise :class:`DivergenceError` is raised.
        """
        run.restore_theta()
        final = run.final_sum
        assert final is not None
        present = [g for g in final if g is not None] if has_none(final) else final
        if self.num_particles > 1 and self.particle_reduction == "mean" and present:
            torch._foreach_mul_(present, 1.0 / self.num_particles)
        if self.num_particles > 1 or run.two_step:  # one particle's step(): .grad already holds its final gradient
            for p, g in zip(run.params, final):
                p.grad = g
        snapshot = self._progress.state_snapshot
        snapshot.save(self.base_optimizer, run.params, run.structure.ids)
        self.base_optimizer.step()
        bad_checks, bad_params, found_inf, bad_loss, update_ratio = self._verdict(run, present)
        if found_inf and not bad_loss:
            run.restore_all()
            snapshot.restore(self.base_optimizer)
            self._progress.skipped_steps += 1
            self._progress.last_step_skipped = True
            return
        if bad_checks or bad_params or found_inf or self._too_far(update_ratio):
            run.restore_all()
            snapshot.restore(self.base_optimizer)
            self._raise_divergence(run, bad_params and not bad_checks, update_ratio)
        self._progress.completed_steps += 1

    def _verdict(self, run: StepRun, stepped: list[Tensor]) -> tuple[bool, bool, bool, bool, float]:
        """(a check is non-finite, a parameter is non-finite, the scaler found an inf, the loss at theta is
        non-finite, the update's size ``||theta' - theta|| / max(||theta||, 1)``), read back in one host
        synchronisation.

        The parameters after the step are copied into flat buffers laid out like the copy of
        ``theta`` (one per device and dtype), so their norm, the norm of ``theta' - theta`` and that
        of ``theta`` are a few kernels over flat tensors, not one per parameter. Every value is read
        back as it is (one ``stack``, one ``tolist``) and judged on the host."""
        progress = self._progress
        if stepped:
            # scratch space: with one group the ascent's flat copy has this layout too, so share it
            # (one buffer less to keep in cache); with several, a buffer of its own (no re-allocation)
            buffer = norm_buffer(progress, 0 if len(self.param_groups) == 1 else "stepped")
            layout = run.layout_of(stepped)
            if run.structure.all_cpu:  # global_norm's CPU path, without its frames
                stepped_norm = P.flat_norm(buffer.load(stepped, layout), run.device)
            else:
                stepped_norm = P.global_norm(stepped, run.device, buffer, layout)
            run.check("the gradient that was stepped", stepped_norm)
        values = [value for _, _, value in run.checks]
        count = len(values)
        zero = run.structure.zero
        params_norm = ratio = zero
        if run.params:
            progress.after_buffers = copy_into(progress.after_buffers, run.params, run.layout)  # (under no_grad)
            after, before = progress.after_buffers.flats, run.theta.flats  # type: ignore[attr-defined]
            params_norm = P.flat_norm(after, run.device)
            if self.max_update_ratio is not None:
                for moved, theta in zip(after, before):
                    moved.sub_(theta)
                ratio = P.flat_norm(after, run.device) / P.flat_norm(before, run.device).clamp_min(1.0)
        values += (params_norm, ratio)
        if run.scaling is not None:  # (without a scaler nothing is found and the loss at theta plays no part)
            if not self.sync_ascent:
                run.scaling.agree_across_replicas()
            found_inf = run.scaling.found_inf.to(device=run.device, dtype=torch.float32)
            run.scaling.finish()
            values += (found_inf, zero if run.loss is None else run.loss.detach())
        read = _read_back(values, run.device)
        found_inf_value, loss_value = read[count + 2 :] if run.scaling is not None else (0.0, 0.0)
        return (
            not all(map(math.isfinite, read[:count])),
            not math.isfinite(read[count]),
            found_inf_value > 0,
            not math.isfinite(loss_value),
            float(read[count + 1]),
        )

    def _too_far(self, update_ratio: float) -> bool:
        """Whether the base step moved the parameters beyond ``max_update_ratio`` times their norm."""
        return self.max_update_ratio is not None and not update_ratio <= self.max_update_ratio

    def _lr_text(self) -> str:
        lrs = sorted({group.get("lr") for group in self.param_groups}, key=str)
        return f"lr={lrs[0] if len(lrs) == 1 else lrs}"

    def _raise_divergence(self, run: StepRun, params_only: bool, update_ratio: float) -> None:
        restored = "the parameters and the base optimizer's state were restored to their values before this step"
        if params_only:
            raise DivergenceError(
                f"{run.where}: the base optimizer's step turned finite gradients into non-finite parameters "
                f"({self._lr_text()}); {restored}. Lower the learning rate (check what a scheduler sets)."
            )
        hint = f"{restored}; lower the learning rate or rho, check the data, or use a more stable loss"
        for what, args, value in run.checks:
            if not bool(torch.isfinite(value)):
                raise DivergenceError(f"{describe(what, args)} in {run.where} is not finite ({float(value)}); {hint}")
        if self._too_far(update_ratio):
            raise DivergenceError(
                f"{run.where}: the base optimizer's step moved the parameters {update_ratio:.3g} times their norm "
                f"(bound: max_update_ratio={self.max_update_ratio:g}; {self._lr_text()}); {restored}. Lower the "
                "learning rate (check what a scheduler sets), or raise max_update_ratio if such steps are intended."
            )
        raise DivergenceError(f"a non-finite value appeared in {run.where}; {hint}")  # pragma: no cover

    # ------------------------------------------------------------------ small helpers
    def _ascent_context(self) -> Callable[[], AbstractContextManager[Any]]:
        if self.sync_ascent:
            return nullcontext
        if self._progress.no_sync is not None:
            return self._progress.no_sync
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise RuntimeError(
                f"{type(self).__name__}(sync_ascent=False) computes the perturbation from each replica's own gradient, "
                "so its ascent passes must skip DDP's all-reduce. Give it the context that does: "
                "optimizer.attach_no_sync(ddp_model.no_sync) in PyTorch, or "
                "optimizer.attach_no_sync(self.trainer.strategy.block_backward_sync) in a LightningModule's "
                "configure_optimizers."
            )
        return nullcontext

    def _seed_rank(self) -> int:
        """The rank mixed into the seeds when replicas perturb on their own gradients (else 0)."""
        if self.sync_ascent or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return 0
        return torch.distributed.get_rank()

    def unscale_pass_gradients(self) -> None:
        """Unscale the gradients of the pass that just back-propagated, now (fp16 with a GradScaler).

        Each pass is unscaled right after the closure returns; a closure (or a precision plugin)
        that clips or inspects its gradients first calls this (or ``scaler.unscale_(optimizer)``).
        Without a scaler, or when already done for this pass, it does nothing.
        """
        run = self._progress.run
        if run is not None and run.scaling is not None:
            run.scaling.unscale_pass()

    @staticmethod
    def _describe(info: PassInfo) -> str:
        if info.index == 0:
            return "pass 0 (at the unperturbed parameters)"
        kind = "final pass" if info.is_final else f"ascent step {info.ascent_step}"
        return f"pass {info.index} (particle {info.particle}, {kind})"

    @staticmethod
    def _as_loss(value: Any) -> Tensor:
        if value is None:
            raise TypeError(
                "closure returned None: it must return the loss (after calling backward on it). In Lightning, "
                "training_step must return the loss on every call."
            )
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise TypeError(f"closure must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return torch.tensor(float(value))
        raise TypeError(f"closure must return the loss as a scalar tensor or number, got {type(value).__name__}")


def _loss_of(info: PassInfo) -> str:
    """The name of a pass's loss in a divergence message (formatted only when one is raised)."""
    return f"the loss of {OTMDR._describe(info)}"


def _with_grad(closure: Callable[[], Any]) -> Callable[[], Any]:
    """``closure`` run with gradients enabled (``step`` itself runs under ``no_grad``). A plain
    wrapper: ``torch.enable_grad()(closure)`` builds a decorated function (``functools.wraps``,
    ``inspect``) on every step, which costs more than the rest of a small model's step bookkeeping."""

    def with_grad() -> Any:
        with torch.enable_grad():
            return closure()

    return with_grad


def _read_back(values: list[Tensor], device: torch.device) -> list[float]:
    """The values of one-element tensors as floats: one ``stack`` and one ``tolist`` (a single host
    synchronisation) on an accelerator, a ``float`` each on the CPU (no stack to build there)."""
    if _reads_back_for_free(device) and all(map(_is_cpu, values)):
        return list(map(float, values))
    return torch.stack([v.float().reshape(()).to(device) for v in values]).tolist()


_is_cpu = attrgetter("is_cpu")


def _reads_back_for_free(device: torch.device) -> bool:
    """Whether reading a 0-d tensor on ``device`` back to Python costs no synchronisation (the CPU).

    There the ascent step uses the norm as a Python float (one fused add, no temporary); on an
    accelerator it stays a 0-d tensor, so a step synchronises with the host once, at its end."""
    return device.type == "cpu"
