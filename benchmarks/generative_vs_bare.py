"""The generative modules (Lightning) against bare PyTorch loops doing the same updates.

For each module, one "step" is the unit its paper counts, and both sides do exactly the same work
per step on the same networks (the module's defaults for 2-D data, built once and copied), the same
batch size, the same optimizers and the same number of inner steps:

- ``WGAN`` (WGAN-GP, arXiv:1704.00028) **generator step**: ``n_critic = 5`` critic steps, each on a
  fresh data batch, ``loss_c = mean f(G(z)) - mean f(x) + 10 mean (||grad f(x_hat)|| - 1)^2`` with
  ``x_hat = eps x + (1 - eps) G(z)``, Adam(1e-4, (0.5, 0.9)); then one generator step on
  ``-mean f(G(z))``. Networks: 3 x 512 ReLU MLPs (generator and critic).
- ``W2GradientFlow`` (W2-FE, arXiv:2406.13619) **outer step**: one batch, ``y = G(z)``, the exact
  minibatch OT plan ``P = ot.emd(1/n, 1/n, ||y_i - x_j||^2)``, ``T(y) = n P x``, targets
  ``y + dt (T(y) - y)`` (``dt = 0.5``), then ``K = 5`` Adam(1e-3) steps on
  ``(1/2) mean ||G(z) - target||^2`` with the same ``z``. Generator: 3 x 512 ReLU MLP.
  ``--adversarial`` adds the paper's estimator (25 Adam(3e-3) steps of the W2-GAN potential pair
  ``max E_P phi + E_mu psi - lambda E_{P x mu} (phi(x) + psi(y) - ||x - y||^2 / 2)_+^2``,
  ``psi = -phi + eps``, ``lambda = 100``, then ``T(y) = y - grad psi(y)``).
- ``W1W2ProximalFlow`` (arXiv:2407.11901) **potential step**: ``n_critic = 5`` discriminator steps,
  each on a fresh data batch: Euler rollout ``x_{k+1} = x_k - dt grad_x U(x_k, t_k) / alpha``
  (``K = 5``, ``T = 1``, ``alpha = 0.1``) from ``N(0, I)``, loss
  ``-(mean phi(x_T) - log mean exp phi(x)) + 0.1 mean max(0, ||grad phi(x_hat)||^2 - 1)``,
  Adam(1e-4, (0.5, 0.9)); then one potential step on ``mean phi(x_T) + alpha KE`` back-propagated
  through the unrolled rollout (``create_graph``), ``KE = sum_k dt mean ||grad U||^2 / (2 alpha^2)``,
  Adam(5e-4, (0.5, 0.9)). Networks: ``U`` 3 x 128 tanh MLP on ``[x, t]``, ``phi`` 3 x 128 ReLU MLP.

Optimizer kernels. Ours build their optimizers with
:func:`lightning_wass.modules.optimizers.build_optimizer`: torch's **fused** Adam kernel
(``fused=True``) wherever every parameter supports it (float32 on the CPU or CUDA: every case
here; the run checks it, and prints a line if one of ours is not fused). The
"bare" loops build ``torch.optim.Adam(...)`` as a user writes it, torch's **default**
implementation (on a CPU its per-parameter for-loop; ``foreach`` only on CUDA). The same update
rule (fused Adam agrees to float rounding), not the same kernels: so the table has a second bare
column, "bare fused", the same bare loop with ``torch.optim.Adam(..., fused=True)``, and its ratio
``bare fused / ours`` compares equal kernels. ``--no-fused-bare`` leaves that column out. The bare
loops run as in a process that never imported Lightning (``bare_process.py``: ``import lightning``
makes every ``Adam.step`` probe NVML, 0.1-0.5 ms a step on a machine without the NVIDIA driver;
ours skip that probe for CPU parameters).

"ours" is ``Trainer.fit(module, TensorDataModule(x, batch_size=256))`` (logger, checkpointing,
progress bar, model summary and validation off; everything else as a user gets it: the
DataLoader and its sampler, Lightning's loop and manual optimization, our divergence guard and
its checks, the ``train/*`` figures through ``self.log`` on Lightning's log steps, every
``log_every_n_steps = 50`` batches by default: ``--log-every-n-steps 1`` logs every batch, as the
modules did before; ``lightning_wass.modules.generative``, "What is logged when"). The clock runs from the end of the batch that completes step ``warmup``
to the end of the batch that completes step ``warmup + steps`` (a callback reading the module's
counter). "bare" is the loop a user would write by hand: a ``randperm`` per epoch, slice the batch,
the same updates with ``torch.Generator``-seeded noise. Both run in this process, alternating
(ours, bare, bare fused, ours, bare, bare fused, ...) over ``--rounds`` rounds so that load from other processes hits
both alike; the table gives milliseconds per step from the CPU time of this (single) working
thread, which approximates an idle machine's wall time and resists other processes' load, the
wall time beside it, and the median over rounds of the paired ratio ``bare / ours`` (1 = as fast
as the bare loop; the target is >= 0.9), for the default-Adam bare loop and the fused-Adam one.

``--decompose`` also times ours with ``LightningModule.log`` and then also the divergence guard
replaced by no-ops (a diagnosis of where the time goes, not a setting), and the fused bare loop
run from a LightningModule's ``training_step`` (:class:`BareInLightning`: the same loop a user
would write as a Lightning module, paying Lightning's loop and environment; its ratio ``that /
ours`` >= 1 means the gap to the bare loop is Lightning's, not ours). A last line times the floor
every Lightning module pays (a one-parameter module, one SGD step a batch).

Run:  .venv/bin/python benchmarks/generative_vs_bare.py [--quick] [--threads 1] [--adversarial] [--device cpu]
      [--only W1W2] [--decompose] [--log-every-n-steps 50] [--no-fused-bare]
Writes benchmarks/results/generative_vs_bare.json (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ot
import torch
from bare_process import plain_pytorch_process
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_wass import TensorDataModule, W1W2ProximalFlow, W2GradientFlow, WGAN
from lightning_wass.guard import UpdateGuard

RESULTS = Path(__file__).resolve().parent / "results" / "generative_vs_bare.json"
BATCH = 256


def eight_gaussians(n: int, seed: int = 0) -> Tensor:
    """``n`` points of 8 Gaussians (radius 2, std 0.05) on a circle."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.randint(0, 8, (n,), generator=g).float() * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + 0.05 * torch.randn(n, 2, generator=g)


def clocks() -> tuple[float, float]:
    """(wall time, CPU time of this thread)."""
    return time.perf_counter(), time.thread_time()


def elapsed(start: tuple[float, float], end: tuple[float, float], steps: int) -> tuple[float, float]:
    """Milliseconds per step (wall, CPU)."""
    return 1000 * (end[0] - start[0]) / steps, 1000 * (end[1] - start[1]) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- ours
class StepClock(Callback):
    """Clock from the end of the batch completing step ``warmup`` to the end of the one completing
    ``warmup + steps`` (steps read by ``counter(module)``); then stop training."""

    def __init__(self, counter: Callable[[Any], int], warmup: int, steps: int, device: torch.device) -> None:
        self.counter, self.warmup, self.steps, self.device = counter, warmup, steps, device
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None
        self.last = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = self.counter(pl_module)
        if step == self.last:
            return
        self.last = step
        if step == self.warmup:
            synchronize(self.device)
            self.start = clocks()
        elif step == self.warmup + self.steps:
            synchronize(self.device)
            self.end = clocks()
            trainer.should_stop = True


LOG_EVERY_N_STEPS = 50  # Lightning's default; --log-every-n-steps


def time_ours(module: pl.LightningModule, counter: Callable[[Any], int], x: Tensor, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    data = TensorDataModule(x, val_fraction=0.0, batch_size=BATCH, drop_last=True)
    clock = StepClock(counter, warmup, steps, device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=10_000, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[clock], log_every_n_steps=LOG_EVERY_N_STEPS,
    )
    trainer.fit(module, data)
    assert clock.start is not None and clock.end is not None, "the run ended before the clock stopped"
    global OURS_UNFUSED
    OURS_UNFUSED |= {
        f"{type(module).__name__} optimizer {i} ({type(opt).__name__})"
        for i, opt in enumerate(trainer.optimizers) if not all(g.get("fused") for g in opt.param_groups)
    }
    return elapsed(clock.start, clock.end, steps)


OURS_UNFUSED: set[str] = set()  # ours' optimizers that ran without torch's fused kernel (printed)


class Floor(pl.LightningModule):
    """The least a manual-optimization Lightning module does: per batch one backward and one SGD step
    on one parameter; ``generator_step`` counts groups of ``batches_per_step`` batches. Its step time
    is Lightning's loop plus our DataLoader, the fixed cost separating any Lightning module from a
    hand-written loop (WGAN and the proximal flow take 5 batches a step, W2-FE 1)."""

    def __init__(self, batches_per_step: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.batches_per_step, self.batches, self.generator_step = batches_per_step, 0, 0
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.weight * batch["x"][0, 0])
        optimizer.step()
        self.batches += 1
        self.generator_step = self.batches // self.batches_per_step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class BareInLightning(pl.LightningModule):
    """A bare loop's ``step()`` run from Lightning's fit loop (``--decompose`` only): one call at the
    batch that completes each group of ``batches_per_step`` batches, the loop's own batch unused
    (``step()`` draws its own). Its time is the bare loop plus what any hand-written Lightning module
    pays for the same work: Lightning's loop and our DataLoader, and ``import lightning``'s
    environment (its NVML-probing capture check on every ``Adam.step``). So ``that / ours`` asks
    whether ours, guard and logging included, is as fast as the same loop written as a
    LightningModule."""

    def __init__(self, step: Callable[[], None], batches_per_step: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.step, self.batches_per_step, self.batches, self.generator_step = step, batches_per_step, 0, 0
        self.unused = nn.Parameter(torch.zeros(1))  # Lightning wants a parameter; never updated

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if self.batches % self.batches_per_step == 0:
            self.step()
            self.generator_step += 1

    def configure_optimizers(self) -> None:
        return None


class _NoCheck:
    """A StepCheck that records nothing (``--decompose`` only)."""

    def finite(self, *args: Any, **kwargs: Any) -> None: ...
    def bounded(self, *args: Any, **kwargs: Any) -> None: ...
    def update(self, *args: Any, **kwargs: Any) -> None: ...
    def verify(self) -> None: ...


@contextlib.contextmanager
def switched_off(log: bool, guard: bool) -> Any:
    """``--decompose``: run ours with ``LightningModule.log`` and/or the divergence guard replaced by
    no-ops, to see what each costs (a diagnosis, not a configuration anyone should train with)."""
    saved_log, saved_step = pl.LightningModule.log, UpdateGuard.step
    if log:
        pl.LightningModule.log = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    if guard:
        @contextlib.contextmanager
        def step(self: Any, *args: Any, **kwargs: Any) -> Any:
            yield _NoCheck()
        UpdateGuard.step = step  # type: ignore[method-assign]
    try:
        yield
    finally:
        pl.LightningModule.log, UpdateGuard.step = saved_log, saved_step  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------- bare: data
class Batches:
    """A randperm per epoch over ``x`` (on ``device``), sliced into full batches."""

    def __init__(self, x: Tensor, device: torch.device, seed: int = 0) -> None:
        self.x, self.g, self.order, self.at = x.to(device), torch.Generator().manual_seed(seed), torch.empty(0, dtype=torch.long), 0

    def next(self) -> Tensor:
        if self.at + BATCH > len(self.order):
            self.order, self.at = torch.randperm(len(self.x), generator=self.g).to(self.x.device), 0
        index = self.order[self.at : self.at + BATCH]
        self.at += BATCH
        return self.x[index]


def adam_kernel(fused: bool) -> dict[str, bool]:
    """``torch.optim.Adam``'s options for the bare loops: ``{}`` (torch's default implementation, as
    a user writes it) or ``{"fused": True}`` (the kernel ours use: the "bare fused" column)."""
    return {"fused": True} if fused else {}


def grad_norms(f: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """``||grad_x f(x_i)||`` with the graph kept (a penalty)."""
    points = points.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(points).sum(), points, create_graph=True)
    return g.flatten(1).norm(dim=1)


def time_loop(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) ms per step of a bare loop, as in a process without Lightning (``bare_process.py``)."""
    with plain_pytorch_process():
        for _ in range(warmup):
            step()
        synchronize(device)
        start = clocks()
        for _ in range(steps):
            step()
        synchronize(device)
        return elapsed(start, clocks(), steps)


# ---------------------------------------------------------------------------------- bare: WGAN-GP
def bare_wgan(template: WGAN, x: Tensor, device: torch.device, fused: bool = False) -> Callable[[], None]:
    G, f = copy.deepcopy(template.generator).to(device), copy.deepcopy(template.critic).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.9), **adam_kernel(fused))
    opt_c = torch.optim.Adam(f.parameters(), lr=1e-4, betas=(0.5, 0.9), **adam_kernel(fused))
    batches, g, latent = Batches(x, device), torch.Generator(device).manual_seed(1), template.latent_dim

    def score(v: Tensor) -> Tensor:
        return f(v).reshape(len(v))

    def step() -> None:
        for _ in range(5):
            real = batches.next()
            with torch.no_grad():
                fake = G(torch.randn(BATCH, latent, generator=g, device=device))
            eps = torch.rand(BATCH, 1, generator=g, device=device)
            penalty = (grad_norms(score, eps * real + (1 - eps) * fake) - 1).square().mean()
            loss = score(fake).mean() - score(real).mean() + 10.0 * penalty
            opt_c.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
        loss_g = -score(G(torch.randn(BATCH, latent, generator=g, device=device))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    return step


# ---------------------------------------------------------------------------------- bare: W2-FE
def bare_w2fe(template: W2GradientFlow, x: Tensor, device: torch.device, fused: bool = False) -> Callable[[], None]:
    G = copy.deepcopy(template.generator).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.9, 0.999), **adam_kernel(fused))
    adversarial = template.transport == "adversarial"
    if adversarial:
        phi, eps_net = copy.deepcopy(template.potential).to(device), copy.deepcopy(template.potential_correction).to(device)
        opt_p = torch.optim.Adam([*phi.parameters(), *eps_net.parameters()], lr=3e-3, **adam_kernel(fused))
    batches, g, latent = Batches(x, device), torch.Generator(device).manual_seed(1), template.latent_dim
    uniform = torch.full((BATCH,), 1.0 / BATCH, dtype=torch.float64)

    def psi(v: Tensor) -> Tensor:
        return -phi(v).reshape(-1) + eps_net(v).reshape(-1)

    def step() -> None:
        real = batches.next()
        z = torch.randn(BATCH, latent, generator=g, device=device)
        with torch.no_grad():
            y = G(z)
        if adversarial:
            for _ in range(25):
                cost = 0.5 * torch.cdist(real, y).square()
                slack = torch.relu(phi(real).reshape(-1, 1) + psi(y).reshape(1, -1) - cost)
                loss_p = -(phi(real).mean() + psi(y).mean() - 100.0 * slack.square().mean())
                opt_p.zero_grad(set_to_none=True)
                loss_p.backward()
                opt_p.step()
            yy = y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(psi(yy).sum(), yy)
            mapped = y - grad
        else:
            with torch.no_grad():
                cost = torch.cdist(y.double(), real.double()).square()
                plan = torch.as_tensor(ot.emd(uniform, uniform, cost.cpu()), device=device)
                mapped = ((plan @ real.double()) / plan.sum(1, keepdim=True)).to(y.dtype)
        targets = (y + 0.5 * (mapped - y)).detach()
        for _ in range(5):
            loss = 0.5 * (G(z) - targets).square().sum(1).mean()
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()

    return step


# ---------------------------------------------------------------------------------- bare: W1 (+) W2 proximal flow
def bare_proximal(template: W1W2ProximalFlow, x: Tensor, device: torch.device, fused: bool = False) -> Callable[[], None]:
    U, phi = copy.deepcopy(template.potential).to(device), copy.deepcopy(template.discriminator).to(device)
    opt_phi = torch.optim.Adam(phi.parameters(), lr=1e-4, betas=(0.5, 0.9), **adam_kernel(fused))
    opt_u = torch.optim.Adam(U.parameters(), lr=5e-4, betas=(0.5, 0.9), **adam_kernel(fused))
    batches, g = Batches(x, device), torch.Generator(device).manual_seed(1)
    K, T, alpha = 5, 1.0, 0.1
    dt = T / K

    def rollout(x0: Tensor, create_graph: bool) -> tuple[Tensor, list[Tensor]]:
        state, grads = x0, []
        for k in range(K):
            t = torch.full((BATCH,), k * dt, device=device)
            if not create_graph:
                state = state.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(U(state, t).sum(), state, create_graph=create_graph)
            state = state - (dt / alpha) * grad
            grads.append(grad)
        return (state if create_graph else state.detach()), grads

    def score(v: Tensor) -> Tensor:
        return phi(v).reshape(len(v))

    def step() -> None:
        for _ in range(5):
            real = batches.next()
            fake, _ = rollout(torch.randn(BATCH, 2, generator=g, device=device), create_graph=False)
            phi_real = score(real)
            estimate = score(fake).mean() - (torch.logsumexp(phi_real, 0) - math.log(BATCH))
            u = torch.rand(BATCH, 1, generator=g, device=device)
            penalty = torch.relu(grad_norms(score, u * real + (1 - u) * fake).square() - 1.0).mean()
            loss = -estimate + 0.1 * penalty
            opt_phi.zero_grad(set_to_none=True)
            loss.backward()
            opt_phi.step()
        x0 = torch.randn(BATCH, 2, generator=g, device=device).requires_grad_(True)
        x_T, grads = rollout(x0, create_graph=True)
        energy = sum(dt * gr.square().sum(1).mean() / (2 * alpha**2) for gr in grads)
        loss_u = score(x_T).mean() + alpha * energy
        opt_u.zero_grad(set_to_none=True)
        loss_u.backward()
        opt_u.step()
        opt_phi.zero_grad(set_to_none=True)

    return step


# ---------------------------------------------------------------------------------- cases
def cases(adversarial: bool) -> list[dict[str, Any]]:
    rows = [
        {
            "name": "WGAN-GP generator step (5 critic steps + 1 generator step)",
            "build": lambda: WGAN(data_shape=(2,), lipschitz="gp", n_critic=5, eval_samples=0),
            "bare": bare_wgan,
            "counter": lambda m: m.generator_step,
            "batches": 5,
        },
        {
            "name": "W2GradientFlow outer step (exact minibatch OT, K = 5)",
            "build": lambda: W2GradientFlow(data_shape=(2,), transport="exact", persistent_steps=5, eval_samples=0),
            "bare": bare_w2fe,
            "counter": lambda m: m.outer_step,
            "batches": 1,
        },
        {
            "name": "W1W2ProximalFlow potential step (5 discriminator steps + 1 potential step, 5 Euler steps)",
            "build": lambda: W1W2ProximalFlow(data_shape=(2,), T=1.0, num_steps=5, alpha=0.1, n_critic=5),
            "bare": bare_proximal,
            "counter": lambda m: m.generator_step,
            "batches": 5,
        },
    ]
    if adversarial:
        rows.insert(2, {
            "name": "W2GradientFlow outer step (adversarial W2-GAN pair, 25 potential steps, K = 5)",
            "build": lambda: W2GradientFlow(data_shape=(2,), transport="adversarial", persistent_steps=5, eval_samples=0),
            "bare": bare_w2fe,
            "counter": lambda m: m.outer_step,
            "batches": 1,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke run, noisier)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5, quick 2)")
    parser.add_argument("--adversarial", action="store_true", help="also time W2-FE with the adversarial estimator")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--only", default="", help="run only the cases whose name starts with this (e.g. W1W2)")
    parser.add_argument("--decompose", action="store_true", help="also time ours without self.log, and without self.log and the guard")
    parser.add_argument("--log-every-n-steps", type=int, default=50,
                        help="the Trainer's log_every_n_steps for ours (default 50, Lightning's; 1 = log every batch)")
    parser.add_argument("--no-fused-bare", action="store_true",
                        help="leave out the bare loop with fused Adam (the 'bare fused' column)")
    args = parser.parse_args()
    global LOG_EVERY_N_STEPS
    LOG_EVERY_N_STEPS = args.log_every_n_steps
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warmup, steps = (3, 10) if args.quick else (5, 40)
    rounds = args.rounds or (2 if args.quick else 5)
    fused_bare = not args.no_fused_bare
    x = eight_gaussians(64 * 1024)
    meta = {
        "torch": torch.__version__, "lightning": pl.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "threads": args.threads, "device": str(device), "batch": BATCH,
        "warmup_steps": warmup, "timed_steps": steps, "rounds": rounds, "quick": args.quick,
        "log_every_n_steps": args.log_every_n_steps,
        "optimizers": {
            "ours": "lightning_wass.modules.optimizers.build_optimizer: torch.optim.Adam(fused=True) where supported",
            "bare": "torch.optim.Adam with torch's default implementation (no fused / foreach argument)",
            "bare_fused": "torch.optim.Adam(fused=True)" if fused_bare else None,
        },
    }
    print(f"ms per step from this thread's CPU time (wall beside it); batch {BATCH}, {args.threads} thread(s), "
          f"{device}, {steps} timed steps after {warmup}, {rounds} rounds, log_every_n_steps {args.log_every_n_steps}; "
          "ratio = bare / ours (target >= 0.9)")
    print("optimizers: ours = torch.optim.Adam(fused=True) where supported (build_optimizer; checked below); "
          "bare = torch.optim.Adam, torch's default implementation"
          + ("; bare fused = torch.optim.Adam(fused=True), the same kernel as ours" if fused_bare else ""))
    fused_head = f" {'bare fused':>10} {'ratio':>6}" if fused_bare else ""
    print(f"{'case':<92} {'ours ms':>8} {'bare ms':>8} {'ratio':>6}{fused_head} | {'wall ours':>9} {'wall bare':>9} {'ratio':>6}")
    rows = []
    for case in [c for c in cases(args.adversarial) if c["name"].startswith(args.only)]:
        ours, bare, bare_fused, parts = [], [], [], {"no_log": [], "no_log_no_guard": [], "bare_in_lightning": []}
        for r in range(rounds):
            pl.seed_everything(r, verbose=False)
            template = case["build"]()
            bare_step = case["bare"](template, x, device)
            fused_step = case["bare"](template, x, device, fused=True) if fused_bare else None
            ours.append(time_ours(copy.deepcopy(template), case["counter"], x, warmup, steps, device))
            bare.append(time_loop(bare_step, warmup, steps, device))
            if fused_step is not None:
                bare_fused.append(time_loop(fused_step, warmup, steps, device))
            if args.decompose:
                for name, guard in (("no_log", False), ("no_log_no_guard", True)):
                    with switched_off(log=True, guard=guard):
                        parts[name].append(time_ours(copy.deepcopy(template), case["counter"], x, warmup, steps, device))
                in_lightning = BareInLightning(case["bare"](template, x, device, fused=True), case["batches"])
                parts["bare_in_lightning"].append(time_ours(in_lightning, lambda m: m.generator_step, x, warmup, steps, device))
        row = {
            "case": case["name"],
            "ours_ms_cpu": statistics.median(o[1] for o in ours), "bare_ms_cpu": statistics.median(b[1] for b in bare),
            "ratio_cpu": statistics.median(b[1] / o[1] for o, b in zip(ours, bare)),
            "ours_ms_wall": statistics.median(o[0] for o in ours), "bare_ms_wall": statistics.median(b[0] for b in bare),
            "ratio_wall": statistics.median(b[0] / o[0] for o, b in zip(ours, bare)),
            "ours_all": ours, "bare_all": bare,
        }
        if bare_fused:
            row.update({
                "bare_fused_ms_cpu": statistics.median(b[1] for b in bare_fused),
                "ratio_fused_cpu": statistics.median(b[1] / o[1] for o, b in zip(ours, bare_fused)),
                "bare_fused_ms_wall": statistics.median(b[0] for b in bare_fused),
                "ratio_fused_wall": statistics.median(b[0] / o[0] for o, b in zip(ours, bare_fused)),
                "bare_fused_all": bare_fused,
            })
        if args.decompose:
            row.update({f"ours_{k}_ms_cpu": statistics.median(v[1] for v in vs) for k, vs in parts.items()})
            row["ratio_bare_in_lightning_cpu"] = statistics.median(b[1] / o[1] for o, b in zip(ours, parts["bare_in_lightning"]))
            row["decompose_all"] = parts
        rows.append(row)
        fused_cells = f" {row['bare_fused_ms_cpu']:>10.2f} {row['ratio_fused_cpu']:>6.3f}" if bare_fused else ""
        print(
            f"{case['name']:<92} {row['ours_ms_cpu']:>8.2f} {row['bare_ms_cpu']:>8.2f} {row['ratio_cpu']:>6.3f}{fused_cells} | "
            f"{row['ours_ms_wall']:>9.2f} {row['bare_ms_wall']:>9.2f} {row['ratio_wall']:>6.3f}",
            flush=True,
        )
        if args.decompose:
            print(f"    ours without self.log: {row['ours_no_log_ms_cpu']:.2f} ms; without self.log and the guard: "
                  f"{row['ours_no_log_no_guard_ms_cpu']:.2f} ms (CPU); the fused bare loop inside Lightning's fit loop: "
                  f"{row['ours_bare_in_lightning_ms_cpu']:.2f} ms, ratio that / ours {row['ratio_bare_in_lightning_cpu']:.3f}", flush=True)
    if OURS_UNFUSED:
        print("NOTE: these of ours ran torch's default (not fused) kernel: " + ", ".join(sorted(OURS_UNFUSED)))
    else:
        print("checked: every optimizer of ours above ran torch's fused Adam kernel")
    meta["ours_unfused_optimizers"] = sorted(OURS_UNFUSED)
    floors = {}
    for k in (5, 1):
        runs = [time_ours(Floor(k), lambda m: m.generator_step, x, warmup, steps, device) for _ in range(rounds)]
        floors[k] = {"ms_cpu": statistics.median(r[1] for r in runs), "ms_wall": statistics.median(r[0] for r in runs)}
        print(f"Lightning floor per step of {k} batch(es) (a one-parameter module): {floors[k]['ms_cpu']:.2f} ms CPU, {floors[k]['ms_wall']:.2f} ms wall")
    meta["lightning_floor"] = floors
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    suffix = ("_quick" if args.quick else "") + (f"_{args.only}" if args.only else "") + ("_decompose" if args.decompose else "")
    suffix += f"_log{args.log_every_n_steps}" if args.log_every_n_steps != 50 else ""
    out = RESULTS.with_name(f"generative_vs_bare{suffix}.json")
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
