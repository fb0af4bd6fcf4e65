"""Per-step cost of SGD, a straightforward per-parameter reference SAM, our SAM and OT-MDR (K = 1, 2, 4).

Same model, same batch, one process; the variants run round-robin for several rounds and each
figure is the median over rounds (the machines are shared, so ratios are what to read):

- ``fwd-bwd``: one closure call (zero_grad, forward, backward), the unit of cost;
- ``sgd``: closure + ``torch.optim.SGD`` step (momentum 0.9, weight decay 5e-4);
- ``reference SAM``: the widely used per-parameter SAM, the operations of ``davda54/sam``'s
  ``sam.py`` written out (a Python loop over parameters for the norm, the perturbation, saving and
  restoring ``theta``, with its ``1.0 * p.grad`` factors), with the official code's BatchNorm
  bypass (momentum set to 0 on the second pass), written below;
- ``SAM``: :class:`lightning_wass.optim.SAM` (``torch._foreach_*`` kernels, BatchNorm statistics saved
  and restored);
- ``OT-MDR K=k``: :class:`lightning_wass.optim.OTMDR` with its defaults (two chained ascent steps,
  ``rho = (0.05, 0.1)``, noise 1e-4) and ``k`` particles: for ``k = 1`` the whole-batch chain
  (3 passes), for ``k > 1`` each particle ascends on its own halves of the batch (2 half passes +
  1 whole pass, counted as 2 whole-batch passes per particle);
- ``SAM interval=k``: the perturbed step every ``k``-th step, a plain SGD step otherwise
  (``1 + 1/k`` passes per step on average; timed over whole cycles).

Targets: SAM <= 2.1 x SGD; OT-MDR within 5% of ``passes x fwd-bwd``; the SAM wrapper's own
overhead (below) at most 0.5 x the reference SAM's (issue 9); ``interval=k`` about ``1 + 1/k`` SGD
steps. Every variant's passes are the same forward-backward computation, so the
script also measures each variant's own overhead (step time minus the time inside its closures:
perturbation, restoring, the base step, checks) and prints, beside the raw ratios, "robust" ratios
that use one common pass time (the median over all variants) plus each variant's overhead: on a
busy machine the pass times fluctuate by more than the differences being measured. (OT-MDR's
BatchNorm hook runs inside the passes, so it counts as pass time; it is one Python call per module
call.) Times are the process's CPU time (``time.process_time``) with one thread,
which other processes on a shared machine disturb much less than wall time (``--wall`` for wall
time). Peak memory (CPU): each variant builds the model in a fresh subprocess, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) and reports how far the resident set rose above its
level before the first step during 3 steps (optimizer state, gradients, activations, temporaries;
allocator caching adds noise of a few MiB).

The second table is the issue-14 measure of the SAM wrapper's own overhead (norms, perturbation,
restore, noise, checks, rollback copies, the BatchNorm freeze), for our SAM and the reference, run
alternately in one process: step time minus the time inside its closures minus the time inside the
base optimizer's step (both timed around the calls), measured two ways: with the real
forward-backward closures, and with "replay" closures that hand back precomputed gradients (no
model call, so the pass noise is gone). Our BatchNorm freeze runs inside the passes (a global
forward pre-hook that walks the first module called, freezes its layers and leaves once the modules
reached hold all the optimizer's parameters); its cost
is measured on its own, as the paired difference of a one-sample forward pass inside and outside
``frozen_running_stats()`` (the hook's cost does not depend on the batch), and added to our
overhead (one frozen pass per SAM step). The last lines time the divergence guard's per-step work
(:class:`lightning_wass.guard.UpdateGuard`: copies of the parameters, the optimizer state and the
module's buffers, then its one verify) around a SAM optimizer.

    .venv/bin/python benchmarks/otmdr_step.py                      # default model: deep narrow CNN, 16x16, batch 16
    .venv/bin/python benchmarks/otmdr_step.py --model wrn --batch 64
    .venv/bin/python benchmarks/otmdr_step.py --quick              # fewer rounds, no memory table (about a minute)

Writes ``benchmarks/results/otmdr_step_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_wass.guard import UpdateGuard
from lightning_wass.nn import WideResNet
from lightning_wass.optim import OTMDR, SAM
from lightning_wass.optim.norm_stats import frozen_running_stats


class ReferenceSAM(torch.optim.Optimizer):
    """The per-parameter SAM most projects copy: the operations of davda54/sam's ``sam.py`` (HEAD
    3c3afdb), written out here, including its ``(abs(p) if adaptive else 1.0) * p.grad`` factors
    (with ``adaptive=False`` each is one more tensor multiply per parameter, in the norm and in
    ``e_w``), its per-parameter ``.to(device)`` and its restore by ``p.data = old_p``."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False, **kwargs):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    def _grad_norm(self):
        shared_device = self.param_groups[0]["params"][0].device
        return torch.norm(torch.stack([
            ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2).to(shared_device)
            for group in self.param_groups for p in group["params"] if p.grad is not None
        ]), p=2)

    @torch.no_grad()
    def first_step(self):
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()

    def step(self, closure, model: nn.Module):
        closure = torch.enable_grad()(closure)
        closure()
        self.first_step()
        momenta = {}
        for m in model.modules():  # the official bypass_bn: no running-stat update on the perturbed pass
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                momenta[m] = m.momentum
                m.momentum = 0
        closure()
        for m, value in momenta.items():
            m.momentum = value
        self.second_step()


class DeepNarrowCNN(nn.Module):
    """``depth`` 3x3 conv-BN-ReLU layers of ``width`` channels, average pool, linear: many small tensors."""

    def __init__(self, depth: int = 16, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


def make(model_name: str, batch: int, size: int, seed: int = 0):
    torch.manual_seed(seed)
    if model_name == "wrn":
        model = WideResNet(depth=16, widen_factor=1, in_channels=1)
    else:
        model = DeepNarrowCNN()
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


SGD_KW = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


CLOCK = time.process_time
CLOSURE_SECONDS = [0.0]  # time spent inside closures (forward-backward passes), accumulated


INTERVALS = (2, 5, 10)


def variants(model: nn.Module, x, y):
    """name -> (one step, its forward-backward passes in whole-batch equivalents)."""

    def closure_for(opt):
        def closure():
            start = CLOCK()
            opt.zero_grad()
            info = getattr(opt, "current_pass", None)
            xb, yb = info.select(x, y) if info is not None and info.chunk is not None else (x, y)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            CLOSURE_SECONDS[0] += CLOCK() - start
            return loss

        return closure

    sgd = torch.optim.SGD(model.parameters(), **SGD_KW)
    ref = ReferenceSAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD_KW)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD_KW)
    # K = 1: the whole-batch chain (1 + 2 passes); K > 1: each particle its own halves (2 half passes + 1 whole)
    otmdr = {k: OTMDR(model.parameters(), torch.optim.SGD, num_particles=k, **SGD_KW) for k in (1, 2, 4)}
    every = {k: SAM(model.parameters(), torch.optim.SGD, rho=0.05, interval=k, **SGD_KW) for k in INTERVALS}

    def fwd_bwd():
        closure_for(sgd)()

    def sgd_step():
        closure_for(sgd)()
        sgd.step()

    out = {
        "fwd-bwd": (fwd_bwd, 1),
        "sgd": (sgd_step, 1),
        "reference SAM": (lambda: ref.step(closure_for(ref), model), 2),
        "SAM": (lambda: sam.step(closure_for(sam)), 2),
    }
    for k, opt in otmdr.items():
        out[f"OT-MDR K={k}"] = ((lambda o=opt: o.step(closure_for(o))), 3 if k == 1 else 2 * k)
    for k, opt in every.items():
        out[f"SAM interval={k}"] = ((lambda o=opt: o.step(closure_for(o))), 1 + 1 / k)
    return out


def time_variants(model_name: str, batch: int, size: int, rounds: int, steps: int, wall: bool = False) -> dict[str, dict[str, float]]:
    """Median step time per variant, and the median of its own overhead (step time minus the time
    spent inside its closures). ``robust_s = passes x (median pass time over all variants) + overhead``
    removes most of the noise of the forward-backward passes, which are the same computation in
    every variant."""
    global CLOCK
    CLOCK = time.perf_counter if wall else time.process_time
    model, x, y = make(model_name, batch, size)
    model.train()
    table = variants(model, x, y)
    totals: dict[str, list[float]] = {name: [] for name in table}
    overheads: dict[str, list[float]] = {name: [] for name in table}
    pass_times: list[float] = []
    for fn, _ in table.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, (fn, passes) in table.items():
            CLOSURE_SECONDS[0] = 0.0
            start = CLOCK()
            for _ in range(steps * (10 if "interval" in name else 1)):  # whole interval cycles
                fn()
            n = steps * (10 if "interval" in name else 1)
            total = (CLOCK() - start) / n
            inside = CLOSURE_SECONDS[0] / n
            totals[name].append(total)
            overheads[name].append(total - inside)
            pass_times.append(inside / passes)
    pass_s = statistics.median(pass_times)
    out = {}
    for name, (_, passes) in table.items():
        overhead = statistics.median(overheads[name])
        out[name] = {"median_s": statistics.median(totals[name]), "overhead_s": overhead, "passes": passes,
                     "robust_s": passes * pass_s + overhead, "pass_s": pass_s}
    return out


class TimedCalls:
    """Wraps a callable and accumulates the time spent inside it (``seconds``)."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = CLOCK()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += CLOCK() - start


def wrapper_overheads(model_name: str, batch: int, size: int, rounds: int, steps: int, wall: bool = False) -> dict:
    """The SAM wrappers' own per-step work, ours against the per-parameter reference (see the module docstring).

    For each variant: ``step - closures - base step`` (ms), with real and with replayed gradients,
    median over ``rounds`` rounds of ``steps`` steps, the variants alternating within a round."""
    global CLOCK
    CLOCK = time.perf_counter if wall else time.process_time
    model, x, y = make(model_name, batch, size)
    model.train()
    params = list(model.parameters())
    F.cross_entropy(model(x), y).backward()
    replayed = [p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)
    loss_value = torch.tensor(1.0)

    def make_closures(opt, inside: TimedCalls | None):
        def real():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        def replay():
            opt.zero_grad()
            for p, g in zip(params, replayed):
                p.grad = g.clone()
            return loss_value

        return TimedCalls(real), TimedCalls(replay)

    opts = {
        "reference SAM": ReferenceSAM(params, torch.optim.SGD, rho=0.05, **SGD_KW),
        "SAM": SAM(params, torch.optim.SGD, rho=0.05, **SGD_KW),
    }
    base_timers = {}
    for name, opt in opts.items():
        base_timers[name] = opt.base_optimizer.step = TimedCalls(opt.base_optimizer.step)  # type: ignore[method-assign]
    guard = UpdateGuard()

    def guarded_nothing():
        with guard.step("benchmark step", owner=model) as check:
            check.update("optimizer", opts["SAM"], "lower the learning rate")

    samples: dict[str, list[float]] = {f"{n} {kind}": [] for n in opts for kind in ("real", "replay")}
    totals: dict[str, list[float]] = {k: [] for k in samples}
    guard_times: list[float] = []

    def run(name: str, kind: str) -> None:
        opt = opts[name]
        real, replay = make_closures(opt, None)
        closure = real if kind == "real" else replay
        base = base_timers[name]
        base.seconds = 0.0
        start = CLOCK()
        for _ in range(steps):
            if name == "reference SAM":
                opt.step(closure, model)
            else:
                opt.step(closure)
        total = CLOCK() - start
        samples[f"{name} {kind}"].append((total - closure.seconds - base.seconds) / steps)
        totals[f"{name} {kind}"].append(total / steps)

    for name in opts:  # warm-up
        for kind in ("real", "replay"):
            run(name, kind)
    for key in samples:
        samples[key].clear()
        totals[key].clear()
    for r in range(rounds):
        order = list(opts) if r % 2 == 0 else list(reversed(opts))
        for kind in ("real", "replay"):
            for name in order:
                run(name, kind)
        start = CLOCK()
        for _ in range(steps):
            guarded_nothing()
        guard_times.append((CLOCK() - start) / steps)
    freeze = freeze_cost(model, x[:1], repeats=40 * rounds)
    out = {key: {"overhead_s": statistics.median(v), "step_s": statistics.median(totals[key])} for key, v in samples.items()}
    out["bn_freeze_s"] = freeze
    out["guard_s"] = statistics.median(guard_times)
    return out


def freeze_cost(model: nn.Module, x1: torch.Tensor, repeats: int) -> float:
    """Seconds one frozen pass adds: median paired difference of a forward inside / outside the freeze."""
    differences = []
    params = list(model.parameters())
    with torch.no_grad():
        for i in range(repeats + 5):
            start = CLOCK()
            model(x1)
            plain = CLOCK() - start
            start = CLOCK()
            with frozen_running_stats(params):  # as the optimizer calls it: its parameters watched
                model(x1)
            frozen = CLOCK() - start
            if i >= 5:
                differences.append(frozen - plain)
    return statistics.median(differences)


def print_wrapper_overheads(result: dict) -> dict:
    ref_real, ref_replay = result["reference SAM real"]["overhead_s"], result["reference SAM replay"]["overhead_s"]
    ours_real = result["SAM real"]["overhead_s"]
    ours_replay = result["SAM replay"]["overhead_s"] + max(result["bn_freeze_s"], 0.0)
    summary = {
        "reference_overhead_ms_real": ref_real * 1e3,
        "reference_overhead_ms_replay": ref_replay * 1e3,
        "sam_overhead_ms_real": ours_real * 1e3,  # the freeze is inside the passes here: see bn_freeze_ms
        "sam_overhead_ms_replay_plus_freeze": ours_replay * 1e3,
        "bn_freeze_ms": result["bn_freeze_s"] * 1e3,
        "ratio_real_plus_freeze": (ours_real + max(result["bn_freeze_s"], 0.0)) / ref_real,
        "ratio_replay_plus_freeze": ours_replay / ref_replay,
        "guard_ms_per_step": result["guard_s"] * 1e3,
        "guard_over_sam_step": result["guard_s"] / result["SAM real"]["step_s"],
    }
    print("\nwrapper overhead per step = step - closures - base optimizer step (ms; median; alternating in one process)")
    print(f"{'variant':26s} {'real passes':>11s} {'replayed grads':>14s}")
    for name in ("reference SAM", "SAM"):
        print(f"{name:26s} {result[name + ' real']['overhead_s'] * 1e3:11.3f} {result[name + ' replay']['overhead_s'] * 1e3:14.3f}")
    print(f"our BatchNorm freeze (hook + walk, measured alone; added to SAM's overhead below): {summary['bn_freeze_ms']:.3f} ms per step")
    print(f"SAM overhead (+ freeze) / reference overhead: real {summary['ratio_real_plus_freeze']:.3f}, "
          f"replayed {summary['ratio_replay_plus_freeze']:.3f} (target <= 0.5)")
    print(f"divergence guard (UpdateGuard copies + verify) around a SAM step: {summary['guard_ms_per_step']:.3f} ms per step "
          f"= {summary['guard_over_sam_step']:.3f} x a SAM step")
    return summary


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_peak_rise(model_name: str, batch: int, size: int, variant: str, steps: int = 3) -> float:
    """In this process: MiB the resident set rises above its level before the first step (see module docstring)."""
    torch.set_num_threads(1)
    model, x, y = make(model_name, batch, size)
    fn, _ = variants(model, x, y)[variant]
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    for _ in range(steps):
        fn()
    return (_rss_kib("VmHWM") - before) / 1024


def peak_memory(model_name: str, batch: int, size: int, variant: str) -> float:
    """:func:`measure_peak_rise` in a fresh subprocess (so variants do not share allocator caches)."""
    code = "import sys; sys.path.insert(0, %r); import otmdr_step as b; print(b.measure_peak_rise(%r, %d, %d, %r))" % (
        str(Path(__file__).parent), model_name, batch, size, variant)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("narrow", "wrn"), default="narrow")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16, help="image side (1 channel)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--wall", action="store_true", help="time with wall clock instead of process CPU time")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 3 steps, no memory table")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.no_memory = 3, 3, True
    torch.set_num_threads(args.threads)
    model, _, _ = make(args.model, args.batch, args.size)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    print(f"model {args.model}: {n_params} parameters in {n_tensors} tensors; batch {args.batch} x 1 x {args.size} x {args.size}; "
          f"{args.threads} thread(s); median of {args.rounds} rounds x {args.steps} steps; {'wall' if args.wall else 'CPU'} time")
    timings = time_variants(args.model, args.batch, args.size, args.rounds, args.steps, args.wall)
    fb = timings["fwd-bwd"]["median_s"]
    ref = timings["reference SAM"]["median_s"]
    sgd = timings["sgd"]["median_s"]
    memory = {}
    if not args.no_memory:
        memory = {name: peak_memory(args.model, args.batch, args.size, name) for name in timings}
    print(f"\n{'variant':16s} {'ms/step':>8s} {'overhead ms':>11s} {'passes':>6s} {'/ passes x fwd-bwd':>18s} {'/ SGD':>6s} {'/ ref SAM':>9s} {'peak rise MiB':>13s}")
    print(f"{'':16s} {'':8s} {'':11s} {'':6s} {'raw  robust':>18s} {'robust':>6s} {'robust':>9s}")
    fb_r, sgd_r, ref_r = (timings[k]["robust_s"] for k in ("fwd-bwd", "sgd", "reference SAM"))
    for name, t in timings.items():
        t.update(
            ms=t["median_s"] * 1e3,
            raw_ratio_to_passes_x_fwd_bwd=t["median_s"] / (t["passes"] * fb),
            raw_ratio_to_sgd=t["median_s"] / sgd,
            raw_ratio_to_reference_sam=t["median_s"] / ref,
            ratio_to_passes_x_fwd_bwd=t["robust_s"] / (t["passes"] * fb_r),
            ratio_to_sgd=t["robust_s"] / sgd_r,
            ratio_to_reference_sam=t["robust_s"] / ref_r,
        )
        if name in memory:
            t["peak_rss_rise_mib"] = memory[name]
        mem = f"{memory[name]:13.1f}" if name in memory else f"{'-':>13s}"
        print(f"{name:16s} {t['ms']:8.2f} {t['overhead_s'] * 1e3:11.2f} {t['passes']:6.2f} {t['raw_ratio_to_passes_x_fwd_bwd']:8.3f} "
              f"{t['ratio_to_passes_x_fwd_bwd']:8.3f} {t['ratio_to_sgd']:6.3f} {t['ratio_to_reference_sam']:9.3f} {mem}")
    sam = timings["SAM"]
    print(f"\nrobust (common pass time {timings['SAM']['pass_s'] * 1e3:.2f} ms + each variant's measured overhead); raw in brackets")
    print(f"SAM / reference SAM = {sam['ratio_to_reference_sam']:.3f} [{sam['raw_ratio_to_reference_sam']:.3f}] (target <= 0.95)")
    print(f"SAM / SGD           = {sam['ratio_to_sgd']:.3f} [{sam['raw_ratio_to_sgd']:.3f}] (target <= 2.1)")
    overhead_ratio = sam["overhead_s"] / timings["reference SAM"]["overhead_s"]
    print(f"SAM overhead / reference SAM overhead = {sam['overhead_s'] * 1e3:.2f} / "
          f"{timings['reference SAM']['overhead_s'] * 1e3:.2f} ms = {overhead_ratio:.3f} (target <= 0.5; step time minus "
          "the time inside its forward-backward passes: norms, perturbation, restore, checks, rollback copy, base step)")
    for k in (1, 2, 4):
        t = timings[f"OT-MDR K={k}"]
        print(f"OT-MDR K={k} / ({t['passes']:g} x fwd-bwd) = {t['ratio_to_passes_x_fwd_bwd']:.3f} [{t['raw_ratio_to_passes_x_fwd_bwd']:.3f}] (target <= 1.05)")
    for k in INTERVALS:
        t = timings[f"SAM interval={k}"]
        print(f"SAM interval={k} / SGD = {t['ratio_to_sgd']:.3f} [{t['raw_ratio_to_sgd']:.3f}] (expected about 1 + 1/{k} = {1 + 1 / k:.2f})")
    overheads = wrapper_overheads(args.model, args.batch, args.size, max(args.rounds, 5), max(args.steps, 5), args.wall)
    summary = {"sam_overhead_over_reference_overhead": overhead_ratio, **print_wrapper_overheads(overheads)}
    out = Path(__file__).parent / "results" / f"otmdr_step_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "n_params": n_params, "n_tensors": n_tensors, "summary": summary,
                               "timings": timings, "wrapper_overheads": overheads}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
