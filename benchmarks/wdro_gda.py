"""WorstCaseGenerator (Lightning) against a bare PyTorch loop doing the same particle GDA.

For each feature dimension d (2: the 2-D toy; 20: an MNIST-like latent; 256: a CIFAR-like latent)
and number of particles n (1e3, 1e4, 1e5), with batch m = 500:

- ours: ``Trainer.fit(WorstCaseGenerator(...), TensorDataModule(..., return_index=True))`` with
  logging, checkpointing and the progress bar off and no GN evaluation (``gradient_norm_every=0``);
  the time runs from the end of a warm-up iteration to the end of the last one (so it includes
  Lightning's loop, the DataLoader and its sampler, the divergence check);
- bare: the loop a user would write by hand, with torch's default optimizers (foreach Adam and
  SGD), timed as in a process that never imported Lightning (``bare_process.py``): one randperm per epoch, index the particle table,
  one forward/backward of ``mean loss + matching loss``, the heavy-ball particle update, the SGD
  (model) and Adam (transport map) steps, write the rows back. Both match the transport map on
  m' = 50 particles drawn uniformly from the whole table.

Ours builds torch's fused Adam and SGD kernels (``lightning_wass.modules.optimizers``: the same
update rules; SGD bit for bit, Adam to float rounding); ``--bare-fused`` gives the bare loop those
kernels too, for the ratio with equal kernels. Both use the same networks (classifier MLP d-256-256-10 with cross-entropy; transport map
x + MLP d-256-256-d; m' = 50) and the paper's step sizes. The variants alternate (ABAB...) over
several rounds so that load from other processes hits both alike; the table gives iterations per
second from the CPU time of the (single) working thread, which approximates an idle machine's
wall time and resists other processes' load (medians over rounds), the median of the paired
ratios ours/bare (target >= 0.9; the wall-time ratio beside it), what ours costs more per
iteration in milliseconds (Lightning's loop, the DataLoader, the wrappers of backward and step:
a fixed cost, so the ratio rises with the work per iteration) and the
time of one GN evaluation over all n particles (the only O(n) work, done every
``gradient_norm_every`` iterations). Step time should not depend on n: the last column is ours at
this n over ours at n = 1e3. A last line times the floor every Lightning module pays: a module that
does one SGD step on one parameter per iteration, on the same DataModule.

Run:  .venv/bin/python benchmarks/wdro_gda.py [--quick] [--threads 1]
Writes benchmarks/results/wdro_gda.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from bare_process import plain_pytorch_process
from torch import Tensor, nn

from lightning_wass import TensorDataModule, WorstCaseGenerator
from lightning_wass.nn import MLP, ResidualTransportMap

RESULTS = Path(__file__).resolve().parent / "results" / "wdro_gda.json"
BATCH, MATCH, GAMMA, LR, MOMENTUM, MAP_LR, CLASSES = 500, 50, 8.0, 0.01, 0.7, 1e-4, 10


def networks(d: int, seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return MLP(d, CLASSES, hidden=(256, 256)), ResidualTransportMap(d, hidden=(256, 256))


def make_data(n: int, d: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(n + d)
    return torch.randn(n, d, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


# ---------------------------------------------------------------------------------- ours
def clocks() -> tuple[float, float]:
    """(wall time, CPU time of this thread): with one intra-op thread all the work runs on this
    thread, so its CPU time is what an idle machine's wall time would be, and it is far less
    disturbed by other processes than the wall time on a shared machine."""
    return time.perf_counter(), time.thread_time()


class _Clock(Callback):
    """Wall and CPU time, and GDA iterations (``global_step``), from the end of Lightning step
    ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, (0.0, 0.0, 0), (0.0, 0.0, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = (*clocks(), trainer.global_step)
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed == self.warmup - 1:  # counted after this hook
            self.start = now
        self.end = now

    def rates(self) -> tuple[float, float]:
        iterations = self.end[2] - self.start[2]
        return iterations / (self.end[0] - self.start[0]), iterations / (self.end[1] - self.start[1])


def time_ours(x: Tensor, y: Tensor, warmup: int, steps: int, k: int = 1) -> tuple[tuple[float, float], WorstCaseGenerator]:
    """Iterations per second (wall, CPU) of Trainer.fit(WorstCaseGenerator(iterations_per_step=k));
    ``warmup`` Lightning steps, then ``steps`` iterations (rounded up to a multiple of k)."""
    model, transport = networks(x.shape[1], 0)
    module = WorstCaseGenerator(
        model, loss="cross_entropy", gamma=GAMMA, model_lr=LR, model_momentum=MOMENTUM, particle_lr=LR,
        particle_momentum=MOMENTUM, transport_map=transport, transport_lr=MAP_LR, transport_batch_size=MATCH,
        gradient_norm_every=0, iterations_per_step=k,
    )
    data = TensorDataModule(x, y, x_test=x[:10], y_test=y[:10], val_fraction=0.0, batch_size=k * BATCH, return_index=True)
    clock = _Clock(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=k * (warmup + -(-steps // k)), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )
    trainer.fit(module, data)
    return clock.rates(), module


class _Floor(pl.LightningModule):
    """The least a manual-optimization Lightning module does per step: one backward, one SGD step
    on one parameter. Its step time is Lightning's loop plus our DataLoader, the fixed cost that
    separates any Lightning module from a hand-written loop."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.weight * batch["x"][0, 0])
        optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def time_floor(x: Tensor, y: Tensor, warmup: int, steps: int) -> tuple[float, float]:
    """Iterations per second (wall, CPU) of :class:`_Floor` on the same DataModule."""
    data = TensorDataModule(x, y, x_test=x[:10], y_test=y[:10], val_fraction=0.0, batch_size=BATCH, return_index=True)
    clock = _Clock(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )
    trainer.fit(_Floor(), data)
    return clock.rates()


# ---------------------------------------------------------------------------------- bare PyTorch
def time_bare(x: Tensor, y: Tensor, warmup: int, steps: int, fused: bool = False) -> tuple[float, float]:
    """Iterations per second (wall, CPU) of the hand-written loop, as in a process without Lightning
    (:func:`bare_process.plain_pytorch_process`)."""
    with plain_pytorch_process():
        return _time_bare(x, y, warmup, steps, {"fused": True} if fused else {})


def _time_bare(x: Tensor, y: Tensor, warmup: int, steps: int, kernels: dict[str, bool]) -> tuple[float, float]:
    n = x.shape[0]
    model, transport = networks(x.shape[1], 0)
    opt_model = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, **kernels)
    opt_map = torch.optim.Adam(transport.parameters(), lr=MAP_LR, **kernels)
    origins, particles, momentum = x.clone(), x.clone(), torch.zeros_like(x)
    generator = torch.Generator().manual_seed(0)
    perm, position, start = torch.randperm(n, generator=generator), 0, (0.0, 0.0)
    for it in range(warmup + steps):
        if it == warmup:
            start = clocks()
        if position >= n:
            perm, position = torch.randperm(n, generator=generator), 0
        index = perm[position : position + BATCH]
        position += BATCH
        xb, yb = origins[index], y[index]
        v_old, g_old = particles[index], momentum[index]
        v = v_old.clone().requires_grad_(True)
        losses = F.cross_entropy(model(v), yb, reduction="none")
        rows = torch.randint(0, n, (MATCH,), generator=generator)  # m' random particles
        matching = (transport(origins[rows]) - particles[rows]).pow(2).sum(1).mean()
        opt_model.zero_grad(set_to_none=True)
        opt_map.zero_grad(set_to_none=True)
        (losses.mean() + matching).backward()
        ascent = v.grad * len(index) - (v_old - xb) / GAMMA
        g_new = MOMENTUM * g_old + ascent
        v_new = v_old + LR * g_new
        opt_model.step()
        opt_map.step()
        particles[index] = v_new
        momentum[index] = g_new
    end = clocks()
    return steps / (end[0] - start[0]), steps / (end[1] - start[1])


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: d=2 and 20, n=1e3, k=1 and 10, few iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="feature dimensions d (default 2 20 256)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of particles n (default 1e3 1e4 1e5)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10], help="iterations_per_step values (default 1 10)")
    parser.add_argument("--bare-fused", action="store_true", help="give the bare loop torch's fused Adam / SGD kernels, as ours has")
    parser.add_argument("--rounds", type=int, default=None, help="ABAB rounds (default 5, quick 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dims = args.dims or ([2, 20] if args.quick else [2, 20, 256])
    sizes = args.sizes or ([1_000] if args.quick else [1_000, 10_000, 100_000])
    warmup, steps, rounds = (2, 40, 2) if args.quick else (3, 200, 5)
    rounds = args.rounds or rounds

    rows = []
    header = (
        f"{'d':>4} {'n':>7} {'k':>3} | {'ours it/s':>9} {'bare it/s':>9} {'ours/bare':>9} {'extra ms/it':>11} | {'wall ours/bare':>14} | "
        f"{'GN eval s':>9} {'ours vs n=1e3':>13}"
    )
    print("GDA iterations per second from CPU time (wall-time ratio beside it); medians over rounds; ours and bare")
    print("alternate in this one process; k = iterations_per_step (GDA iterations per Lightning step)")
    print(f"ours: fused Adam / SGD; bare: {'fused' if args.bare_fused else 'torch default (foreach)'} Adam / SGD, as in a process without Lightning")
    print(header)
    print("-" * len(header))
    base: dict[tuple[int, int], float] = {}
    for d in dims:
        for n in sizes:
            x, y = make_data(n, d)
            ours: dict[int, list[tuple[float, float]]] = {k: [] for k in args.k}
            bare: list[tuple[float, float]] = []
            module = None
            for _ in range(rounds):
                for k in args.k:
                    a, module = time_ours(x, y, warmup, steps, k)
                    ours[k].append(a)
                bare.append(time_bare(x, y, warmup * max(args.k), steps, fused=args.bare_fused))
            assert module is not None
            start = time.perf_counter()
            module.compute_gradient_norms()
            gn_seconds = time.perf_counter() - start
            for k in args.k:
                row = {
                    "d": d, "n": n, "k": k,
                    "ours_its_cpu": statistics.median(o[1] for o in ours[k]), "bare_its_cpu": statistics.median(b[1] for b in bare),
                    "ratio_cpu": statistics.median(o[1] / b[1] for o, b in zip(ours[k], bare)),
                    "ours_its_wall": statistics.median(o[0] for o in ours[k]), "bare_its_wall": statistics.median(b[0] for b in bare),
                    "ratio_wall": statistics.median(o[0] / b[0] for o, b in zip(ours[k], bare)),
                    "gn_eval_seconds": gn_seconds, "ours_all": ours[k], "bare_all": bare,
                }
                base.setdefault((d, k), row["ours_its_cpu"])
                row["ours_vs_smallest_n"] = row["ours_its_cpu"] / base[(d, k)]
                row["extra_ms_per_it"] = 1000 * (1 / row["ours_its_cpu"] - 1 / row["bare_its_cpu"])
                rows.append(row)
                print(
                    f"{d:>4} {n:>7} {k:>3} | {row['ours_its_cpu']:>9.1f} {row['bare_its_cpu']:>9.1f} {row['ratio_cpu']:>9.3f} "
                    f"{row['extra_ms_per_it']:>11.2f} | {row['ratio_wall']:>14.3f} | {gn_seconds:>9.3f} {row['ours_vs_smallest_n']:>13.3f}",
                    flush=True,
                )
    floor = [time_floor(*make_data(sizes[0], dims[0]), warmup, 4 * steps)[1] for _ in range(rounds)]
    floor_ms = 1000 / statistics.median(floor)
    print(f"\nLightning floor (a module doing one SGD step on one parameter per step, same DataModule): {floor_ms:.2f} ms/step CPU")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__, "lightning": pl.__version__, "threads": args.threads, "python": platform.python_version(),
        "warmup_steps": warmup, "iterations": steps, "rounds": rounds, "k": args.k, "quick": args.quick,
        "ours_optimizers": "fused Adam / SGD (lightning_wass.modules.optimizers)",
        "bare_optimizers": "fused Adam / SGD" if args.bare_fused else "torch default (foreach) Adam / SGD",
    }
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows, "lightning_floor_ms_cpu": floor_ms}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
