"""W2-FE and the OT utilities at the batch sizes GPU users pick (256 to 4,096), exact OT against Sinkhorn.

Two tables, one process:

1. ``W2GradientFlow`` (forward-Euler W2 gradient flow, arXiv seed 004) time per outer step against
   the batch size ``B``, with the exact minibatch OT map (``transport="exact"``: network simplex,
   ``ot.emd``, and its barycentric projection) and with the barycentric projection of the entropic
   (Sinkhorn) plan ``P_eps = argmin <P, C> - eps H(P)``, ``eps = 0.05 mean(C)`` (Cuturi 2013,
   arXiv:1306.0895; a subclass overriding :meth:`W2GradientFlow.transport_targets`, the documented
   hook). Each outer step is ``K = persistent_steps`` generator regressions after one OT solve; the
   table splits the step into the OT part and the rest, and gives Sinkhorn / exact.
2. The utilities on ``B x B`` problems: :func:`lightning_wass.ot.ot_plan` against calling POT
   directly (``ot.emd(a, b, ot.dist(x, y))``), :func:`barycentric_map` given the plan, and
   :func:`wasserstein_distance` exact and Sinkhorn. The devices column checks that plan and map come
   back on the input's device and dtype: the only host copy on that path is POT's own (its exact
   solver is C++ on the host: ``ot.emd`` converts its torch inputs and returns the plan on their
   device; Sinkhorn runs in torch on the device).

Times are wall-clock medians (``torch.cuda.synchronize`` around each call on a GPU), one torch
thread on the CPU. On a shared machine read the ratios.

Run:  .venv/bin/python benchmarks/ot_batch_sizes.py [--quick] [--device cuda]
Writes benchmarks/results/ot_batch_sizes.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ot
import torch
from torch import Tensor

from report import write_report

from lightning_wass import TensorDataModule, W2GradientFlow
from lightning_wass.functional.w2_gradient_flow import forward_euler_targets
from lightning_wass.ot import barycentric_map, cost_matrix, ot_plan, wasserstein_distance

RESULTS = Path(__file__).resolve().parent / "results" / "ot_batch_sizes.json"


# ----------------------------------------------------------------------------- the two flows
class TimedW2GradientFlow(W2GradientFlow):
    """``W2GradientFlow`` that records the time of each OT solve (``transport_targets``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ot_seconds: list[float] = []

    def transport_targets(self, generated: Tensor, data: Tensor) -> tuple[Tensor, Tensor]:
        _sync(generated.device)
        start = time.perf_counter()
        result = self.solve(generated, data)
        _sync(generated.device)
        self.ot_seconds.append(time.perf_counter() - start)
        return result

    def solve(self, generated: Tensor, data: Tensor) -> tuple[Tensor, Tensor]:
        return super().transport_targets(generated, data)


class SinkhornW2GradientFlow(TimedW2GradientFlow):
    """The same flow with ``T`` the barycentric projection of the entropic plan (``eps = 0.05 mean C``)."""

    def solve(self, generated: Tensor, data: Tensor) -> tuple[Tensor, Tensor]:
        y = generated.detach().flatten(1)
        x = data.detach().flatten(1).to(y.dtype)
        plan = sinkhorn_plan(y, x)
        mapped = barycentric_map(y, x, plan=plan)
        w2 = (mapped - y).square().sum(1).mean().sqrt()
        return forward_euler_targets(y, mapped, self.dt).reshape(generated.shape), w2


def sinkhorn_plan(y: Tensor, x: Tensor, num_iter_max: int = 1000) -> Tensor:
    """POT's entropic plan between uniform ``y`` and ``x`` on their device, ``eps = 0.05 mean(C)``."""
    cost = cost_matrix(y, x)
    a = torch.full((len(y),), 1.0 / len(y), dtype=y.dtype, device=y.device)
    b = torch.full((len(x),), 1.0 / len(x), dtype=y.dtype, device=y.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.sinkhorn(a, b, cost, 0.05 * cost.mean(), method="sinkhorn_log", numItermax=num_iter_max, stopThr=1e-6)


class StepTimer(pl.Callback):
    """Wall time of each training batch (one outer W2-FE step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        _sync(module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(module.device)
        self.seconds.append(time.perf_counter() - self._start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eight_gaussians(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    angles = torch.randint(0, 8, (n,), generator=g).float() * (torch.pi / 4)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    return centres + 0.05 * torch.randn(n, 2, generator=g)


def flow_step_times(kind: str, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per outer step (after one warm-up step) and its OT part."""
    cls = TimedW2GradientFlow if kind == "exact" else SinkhornW2GradientFlow
    module = cls(data_shape=(2,), persistent_steps=5)
    data = TensorDataModule(eight_gaussians(batch * (steps + 1), seed=batch), batch_size=batch, seed=0)
    timer = StepTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, limit_train_batches=steps + 1, limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        )
        trainer.fit(module, datamodule=data)
    step = statistics.median(timer.seconds[1:])
    ot_part = statistics.median(module.ot_seconds[1:])
    return {"step_s": step, "ot_s": ot_part, "rest_s": step - ot_part, "steps": len(timer.seconds) - 1}


# ----------------------------------------------------------------------------- the utilities
def timed(fn: Any, repeats: int, device: torch.device) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def pot_plan(x: Tensor, y: Tensor) -> Tensor:
    n, m = len(x), len(y)
    a = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    b = torch.full((m,), 1.0 / m, dtype=x.dtype, device=x.device)
    return ot.emd(a, b, ot.dist(x, y), numItermax=max(1_000_000, 50 * n * m))


def utility_times(batch: int, dim: int, repeats: int, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(batch + dim)
    x = torch.randn(batch, dim, generator=g).to(device)
    y = (torch.randn(batch, dim, generator=g) * 0.8 + 0.5).to(device)
    # ours and POT alternate within each repeat
    ours_t, pot_t = [], []
    plan = reference = None
    for i in range(repeats):
        pair = [("ours", lambda: ot_plan(x, y)), ("pot", lambda: pot_plan(x, y))]
        for name, fn in pair if i % 2 == 0 else reversed(pair):
            seconds, value = timed(fn, 1, device)
            (ours_t if name == "ours" else pot_t).append(seconds)
            if name == "ours":
                plan = value
            else:
                reference = value
    assert plan is not None and reference is not None
    map_s, mapped = timed(lambda: barycentric_map(x, y, plan=plan), max(repeats, 3), device)
    exact_s, _ = timed(lambda: wasserstein_distance(x, y), repeats, device)
    sinkhorn_s, _ = timed(lambda: wasserstein_distance(x, y, method="sinkhorn"), repeats, device)
    same_place = plan.device == x.device and plan.dtype == x.dtype and mapped.device == x.device and mapped.dtype == x.dtype
    return {
        "plan_s": statistics.median(ours_t), "pot_plan_s": statistics.median(pot_t),
        "plan_over_pot": statistics.median(o / p for o, p in zip(ours_t, pot_t)),
        "plan_max_abs_diff": float((plan.double() - reference.double()).abs().max()),
        "map_s": map_s, "exact_w2_s": exact_s, "sinkhorn_w2_s": sinkhorn_s,
        "outputs_on_input_device_and_dtype": bool(same_place),
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 256, 1024; fewer steps (about a minute or two on a CPU)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="batch sizes (default 256 512 1024 2048 4096)")
    parser.add_argument("--steps", type=int, default=None, help="timed outer steps per flow (default 5; quick 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = args.sizes or ([256, 1024] if args.quick else [256, 512, 1024, 2048, 4096])
    steps = args.steps or (3 if args.quick else 5)
    load_start = os.getloadavg()

    print(f"W2GradientFlow outer step (K = 5 regressions after one OT solve), 8 Gaussians, {device}")
    header = f"{'B':>5s} {'exact s':>9s} {'(OT s)':>9s} {'sinkhorn s':>10s} {'(OT s)':>9s} {'sinkhorn/exact':>14s} {'OT share exact':>14s}"
    print(header)
    print("-" * len(header))
    flows = []
    for batch in sizes:
        exact = flow_step_times("exact", batch, steps, device)
        sinkhorn = flow_step_times("sinkhorn", batch, steps, device)
        ratio = sinkhorn["step_s"] / exact["step_s"]
        flows.append({"batch": batch, "exact": exact, "sinkhorn": sinkhorn, "sinkhorn_over_exact": ratio})
        print(f"{batch:5d} {exact['step_s']:9.4f} {exact['ot_s']:9.4f} {sinkhorn['step_s']:10.4f} {sinkhorn['ot_s']:9.4f} "
              f"{ratio:14.3f} {exact['ot_s'] / exact['step_s']:14.3f}", flush=True)

    print(f"\nOT utilities on B x B problems (d = 2 and 64), {device}; plan: ours vs POT directly, alternating")
    header = (f"{'d':>3s} {'B':>5s} {'ot_plan s':>10s} {'POT s':>9s} {'ours/POT':>8s} {'map s':>8s} {'exact W2 s':>10s} "
              f"{'sinkhorn W2 s':>13s} {'same device/dtype':>17s}")
    print(header)
    print("-" * len(header))
    utilities = []
    for dim in (2, 64):
        for batch in sizes:
            repeats = 1 if batch >= 2048 else (2 if args.quick else 3)
            u = utility_times(batch, dim, repeats, device)
            u.update(dim=dim, batch=batch, repeats=repeats)
            utilities.append(u)
            print(f"{dim:3d} {batch:5d} {u['plan_s']:10.4f} {u['pot_plan_s']:9.4f} {u['plan_over_pot']:8.3f} {u['map_s']:8.4f} "
                  f"{u['exact_w2_s']:10.4f} {u['sinkhorn_w2_s']:13.4f} {str(u['outputs_on_input_device_and_dtype']):>17s}", flush=True)
    return write_report(args.out, load_start, flows=flows, utilities=utilities, device=str(device), sizes=sizes, steps=steps)


if __name__ == "__main__":
    main()
