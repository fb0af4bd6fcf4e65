"""How low the SAM wrapper's overhead can go with our guarantees: a minimal SAM beside ours and the reference.

Issue 14 asks for the SAM wrapper's own overhead (step minus its forward-backward passes minus the
base optimizer's step) at most 0.5 x the per-parameter reference's (``ReferenceSAM`` of
``otmdr_step.py``: davda54/sam's operations). Our step also makes itself undoable and checked: it
copies ``theta``, norms the gradient through a flat copy, restores ``theta``, snapshots the base
optimizer's state, norms the stepped gradient, copies the parameters after the step for the update
bound ``||theta' - theta|| <= r max(||theta||, 1)``, and reads every check back once. ``minimal``
below does exactly those operations and nothing else (no validation, no fp16, no particles, no
BatchNorm freeze, no bookkeeping), written as plainly as possible: its overhead is the floor of
any implementation that keeps the guarantees. Variants run round-robin in one process on replayed
gradients (closures that hand back precomputed gradients, so no forward-backward noise); each
figure is the minimum over rounds of ``step - closures - (SGD step)`` (process CPU time; on a
shared machine other processes only ever add time, so the minimum is the least disturbed round).

    .venv/bin/python benchmarks/sam_overhead_floor.py                 # deep narrow CNN
    .venv/bin/python benchmarks/sam_overhead_floor.py --model wrn

Writes ``benchmarks/results/sam_overhead_floor_<model>.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from otmdr_step import SGD_KW, ReferenceSAM, make
from report import write_report

from lightning_wass.functional.otmdr import flat_views
from lightning_wass.optim import SAM


class MinimalCheckedSAM:
    """SAM with our step's copies and checks and nothing else (see the module docstring)."""

    def __init__(self, params: list[torch.Tensor], rho: float = 0.05) -> None:
        self.params, self.rho = params, rho
        self.base = torch.optim.SGD(params, **SGD_KW)
        (self.theta_flat,), self.theta = flat_views(params)
        (self.grad_flat,), self.grad_copy = flat_views(params)
        (self.after_flat,), self.after = flat_views(params)
        self.state_copy: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, closure) -> bool:
        ps = self.params
        torch._foreach_copy_(self.theta, ps)
        with torch.enable_grad():
            first_loss = closure()
        grads = [p.grad for p in ps]
        torch._foreach_copy_(self.grad_copy, grads)
        norm = float(self.grad_flat.norm())
        torch._foreach_add_(ps, grads, alpha=self.rho / (norm + 1e-12))
        with torch.enable_grad():
            final_loss = closure()
        torch._foreach_copy_(ps, self.theta)
        state = [v for s in self.base.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        if state:
            if self.state_copy is None:
                self.state_copy = flat_views(state)[1]
            torch._foreach_copy_(self.state_copy, state)
        self.base.step()
        torch._foreach_copy_(self.grad_copy, [p.grad for p in ps])
        stepped_norm = float(self.grad_flat.norm())
        torch._foreach_copy_(self.after, ps)
        params_norm = float(self.after_flat.norm())
        self.after_flat.sub_(self.theta_flat)
        ratio = float(self.after_flat.norm()) / max(float(self.theta_flat.norm()), 1.0)
        return all(math.isfinite(v) for v in (float(first_loss), float(final_loss), norm, stepped_norm, params_norm, ratio))


def measure(model_name: str, rounds: int, steps: int) -> dict[str, float]:
    """Minimum over rounds of each variant's overhead per step (seconds)."""
    model, x, y = make(model_name, 16, 16)
    params = list(model.parameters())
    F.cross_entropy(model(x), y).backward()
    replayed = [p.grad.detach().clone() for p in params]
    loss_value = torch.tensor(1.0)
    closure_seconds = [0.0]

    def closure_for(optimizer):
        def closure():
            start = time.process_time()
            optimizer.zero_grad()
            for p, g in zip(params, replayed):
                p.grad = g.clone()
            closure_seconds[0] += time.process_time() - start
            return loss_value

        return closure

    reference = ReferenceSAM(params, torch.optim.SGD, rho=0.05, **SGD_KW)
    ours = SAM(params, torch.optim.SGD, rho=0.05, **SGD_KW)
    minimal = MinimalCheckedSAM(params)
    sgd = torch.optim.SGD(params, **SGD_KW)
    closures = {name: closure_for(opt) for name, opt in
                (("reference SAM", reference), ("SAM", ours), ("minimal", minimal.base), ("sgd", sgd))}
    variants = {
        "reference SAM": lambda: reference.step(closures["reference SAM"], model),
        "SAM": lambda: ours.step(closures["SAM"]),
        "minimal": lambda: minimal.step(closures["minimal"]),
        "sgd": lambda: (closures["sgd"](), sgd.step()),
    }
    best = {name: math.inf for name in variants}
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in variants.items():
            closure_seconds[0] = 0.0
            start = time.process_time()
            for _ in range(steps):
                fn()
            seconds = (time.process_time() - start - closure_seconds[0]) / steps
            if r:
                best[name] = min(best[name], seconds)
    return {name: best[name] - best["sgd"] for name in ("reference SAM", "SAM", "minimal")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("narrow", "wrn"), default="narrow")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    overhead = measure(args.model, args.rounds, args.steps)
    ref = overhead["reference SAM"]
    print(f"model {args.model}; overhead per step = step - closures - SGD step (minimum of {args.rounds} rounds x {args.steps} steps, CPU time)")
    for name, seconds in overhead.items():
        print(f"{name:14s} {seconds * 1e3:7.3f} ms   / reference {seconds / ref:6.3f}")
    print("target: SAM / reference <= 0.5; 'minimal' is the floor with our copies and checks")
    write_report(Path(__file__).parent / "results" / f"sam_overhead_floor_{args.model}.json", load_start, args=vars(args),
                 overhead_ms={k: v * 1e3 for k, v in overhead.items()},
                 ratio_to_reference={k: v / ref for k, v in overhead.items()})


if __name__ == "__main__":
    main()
