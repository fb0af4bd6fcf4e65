"""W2-FE with each OT-map estimator (K = 1, 5, 10) against WGAN-GP and WGAN-SN on 8 Gaussians,
25 Gaussians and the swiss roll, at equal CPU time, judged by exact W2 / floor *and* mode coverage.

The claim under test (Huang & Malik 2024, arXiv:2406.13619): the forward-Euler W2 gradient flow
with persistent training (W2-FE) converges much faster than WGAN at equal work, for a suitable
persistency level K. The paper's W2-FE estimates the flow's direction with a potential trained
adversarially as in W2-GAN (``transport="adversarial"``); the library also has exact minibatch OT
(``"exact"``, not in the paper) and a semi-dual potential (``"potential"``, not in the paper): all
three are run.

Why coverage: on 8 Gaussians a ring through the modes passes "1.5x the sample floor" (the demo's
W2-FE and WGAN-GP samples were rings at 1.46x and 1.30x). So each measurement also takes
:func:`lightning_wass.mode_coverage` of the same samples against the known modes: ``covered`` is the
fraction of modes holding at least half their uniform share of the samples within 3 standard
deviations, ``within`` the fraction of all samples within 3 standard deviations of a mode. The
swiss roll has no point modes: only W2 / floor.

Set-up. Every variant has the same generator (3 x 128 ReLU MLP from 2-D Gaussian noise, initialised
from the run's seed, so all variants start from the same weights), the same data (``ToyDataModule``,
50,000 training points), one intra-op thread, and:

- WGAN-GP: lambda 10, 5 critic steps per generator step, Adam 1e-4 betas (0.5, 0.9), 3 x 128 critic,
  batch 256 (the published settings of Gulrajani et al.);
- WGAN-SN: spectrally normalised 3 x 128 critic, 1 critic step, Adam 2e-4 betas (0.5, 0.999), batch 256;
- W2-FE <estimator> K: dt 0.5, K Adam steps (1e-3) on the same z, batch 1024 (our choice: the
  flow's targets come from one minibatch, and with 256 points their noise keeps the samples a ring;
  at 1024 the modes separate). ``exact``: POT's network simplex. ``semi-dual`` and ``adversarial``:
  2 x 64 SiLU potentials, 25 Adam steps (3e-3) per outer step, W2-GAN penalty 100. K = 30 is run
  with exact OT besides the asked-for K = 1, 5, 10 (persistent training pays most where the OT
  solve dominates the step).

"Equal work" is an equal budget of *process CPU time* per run (``--budget`` seconds, default 30;
the monitor's own measuring time excluded). Measurements at fixed CPU times (0.25 s ... budget,
roughly geometric) of the exact W2 between ``--samples`` generated and as many held-out points, the
sample floor (W2 between as many *training* points and those held-out points; DESIGN.md section 6)
and the coverage. Bars: ``1.5x`` (W2 / floor <= 1.5) and ``1.1x+modes`` (W2 / floor <= 1.1 with
every mode covered; on the swiss roll W2 alone). A bar's time is the first measurement that meets
it; a run that never does counts as the full budget and is marked (then the mean is a lower bound,
and a speed-up against it an upper or lower bound as marked).

Printed: one table per data set; written: ``benchmarks/results/generative_2d.json`` and ``.png``.
Runs can be split over processes with ``--seed-list`` / ``--datasets`` / ``--variants`` (each writes
``generative_2d.part-<tag>.json``) and combined with ``--merge``.

Run:  .venv/bin/python benchmarks/generative_2d.py [--quick] [--budget 30] [--seeds 3]
      [--seed-list 0 1] [--datasets 8gaussians] [--variants ...] [--tag a] [--merge]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_wass import W2GradientFlow, WGAN, ToyDataModule, WassersteinMonitor
from lightning_wass.nn.gan_nets import MLPCritic, MLPGenerator
from lightning_wass.nn.mlp import MLP

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN = [128, 128, 128]
WGAN_BATCH = 256
FLOW_BATCH = 1024
BARS = ("1.5x", "1.1x+modes")
ESTIMATORS = {"exact": "exact", "semi-dual": "potential", "adversarial": "adversarial"}
VARIANTS = (
    "WGAN-GP",
    "WGAN-SN",
    *(f"W2-FE {name} K={k}" for name in ESTIMATORS for k in (1, 5, 10)),
    "W2-FE exact K=30",
)
DATASETS = ("8gaussians", "25gaussians", "swissroll")


class SmallPotential(nn.Module):
    """``phi: (n, 2) -> (n,)``: a 2 x 64 SiLU MLP (the learned estimators' networks here)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(2, 1, [64, 64], activation="silu")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def measurement_times(budget: float) -> list[float]:
    """CPU seconds at which to measure: dense early (where W2-FE's bars fall), then every ~budget/10."""
    early = [t for t in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0) if t < budget]
    late = [budget * i / 10 for i in range(1, 11) if budget * i / 10 > (early[-1] if early else 0)]
    return early + late


class BudgetMonitor(WassersteinMonitor):
    """Measures at fixed CPU times and stops training at the end of the budget."""

    def __init__(self, budget: float, num_samples: int) -> None:
        super().__init__(every_n_steps=10**9, num_samples=num_samples, p=2)
        self.budget = budget
        self.times = measurement_times(budget)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        used = self.elapsed(cpu=True)
        if self.times and used >= self.times[0]:
            while self.times and used >= self.times[0]:
                self.times.pop(0)
            if used >= self.budget:
                trainer.should_stop = True  # on_train_end measures the final state
            else:
                self.measure(trainer, pl_module, int(pl_module.generator_step))


def build(variant: str) -> tuple[pl.LightningModule, int]:
    """The module of ``variant`` and its batch size."""
    generator = MLPGenerator(2, [2], hidden=HIDDEN)
    if variant.startswith("WGAN"):
        lipschitz = "sn" if variant == "WGAN-SN" else "gp"
        return WGAN(generator=generator, critic=MLPCritic([2], hidden=HIDDEN), lipschitz=lipschitz, eval_samples=0), WGAN_BATCH
    name, k = variant.split()[1], int(variant.split("K=")[1])
    transport = ESTIMATORS[name]
    learned: dict[str, Any] = {}
    if transport != "exact":
        learned = dict(potential=SmallPotential(), potential_steps=25, potential_lr=3e-3)
    if transport == "adversarial":
        learned.update(potential_correction=SmallPotential(), dual_penalty=100.0)
    model = W2GradientFlow(
        generator=generator, data_shape=[2], persistent_steps=k, dt=0.5, lr=1e-3, transport=transport, eval_samples=0, **learned
    )
    return model, FLOW_BATCH


def run_one(dataset: str, variant: str, seed: int, budget: float, samples: int) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    model, batch = build(variant)
    data = ToyDataModule(dataset, train_size=50000, val_size=samples, test_size=samples, batch_size=batch, seed=seed)
    monitor = BudgetMonitor(budget, num_samples=samples)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=-1,
        max_epochs=10**6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
    )
    trainer.fit(model, datamodule=data)
    return {"dataset": dataset, "variant": variant, "seed": seed, "floor": monitor.floor[2], "history": monitor.history}


def meets(h: dict[str, float], bar: str) -> bool:
    if bar == "1.5x":
        return h["W2_ratio"] <= 1.5
    covered = h.get("modes_covered", 1.0)  # sets without point modes: W2 alone
    return h["W2_ratio"] <= 1.1 and covered >= 1.0


def time_to(history: list[dict[str, float]], bar: str) -> float | None:
    """CPU seconds of the first measurement that meets ``bar``, or ``None``."""
    return next((h["cpu_seconds"] for h in history if meets(h, bar)), None)


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def summarise(results: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    rows = []
    for dataset in DATASETS:
        for variant in VARIANTS:
            runs = [r for r in results if r["dataset"] == dataset and r["variant"] == variant]
            if not runs:
                continue
            last = [r["history"][-1] for r in runs]
            row: dict[str, Any] = {
                "dataset": dataset,
                "variant": variant,
                "seeds": len(runs),
                "floor": _mean([r["floor"] for r in runs]),
                "final_ratio": _mean([h["W2_ratio"] for h in last]),
                "final_ratio_sd": statistics.stdev([h["W2_ratio"] for h in last]) if len(runs) > 1 else 0.0,
                "final_covered": _mean([h["modes_covered"] for h in last if "modes_covered" in h]),
                "final_within": _mean([h["mode_quality"] for h in last if "mode_quality" in h]),
                "generator_steps": _mean([h["step"] for h in last]),
            }
            for bar in BARS:
                times = [time_to(r["history"], bar) for r in runs]
                row[f"reached {bar}"] = sum(t is not None for t in times)
                row[f"t {bar}"] = _mean([t if t is not None else budget for t in times])
            rows.append(row)
    for row in rows:
        gp = next((r for r in rows if r["dataset"] == row["dataset"] and r["variant"] == "WGAN-GP"), None)
        if gp is None:
            continue
        for bar in BARS:
            row[f"speedup {bar}"] = gp[f"t {bar}"] / row[f"t {bar}"]
    return rows


def _speedup_text(row: dict[str, Any], gp: dict[str, Any], bar: str) -> str:
    if row["variant"] == "WGAN-GP":
        return "1x"
    gp_bound = gp[f"reached {bar}"] < gp["seeds"]  # WGAN-GP's time is a lower bound: so is the speed-up
    own_bound = row[f"reached {bar}"] < row["seeds"]  # this variant's time is a lower bound: the speed-up an upper one
    mark = "?" if gp_bound and own_bound else ">" if gp_bound else "<" if own_bound else " "
    return f"{mark}{row[f'speedup {bar}']:.1f}x"


def print_table(rows: list[dict[str, Any]], budget: float) -> None:
    print(
        f"\nEqual CPU budget of {budget:g} s per run; mean over seeds. W2/floor = exact W2 to held-out data over the "
        "sample floor; covered / within = mode coverage of the final samples (fraction of modes with at least half "
        "their share within 3 std; fraction of samples within 3 std of a mode). t(bar) = CPU s to the first "
        "measurement meeting the bar (a run that never does counts as the budget: > marks a lower bound). "
        "speed-up = WGAN-GP's t / the variant's t (> lower bound, < upper bound, ? both bounds).\n"
    )
    header = (
        f"{'data':<11} {'variant':<22} {'W2/floor':>13} {'covered':>7} {'within':>6} {'gen steps':>9} "
        f"{'t(1.5x)':>8} {'reached':>7} {'speed-up':>8} {'t(1.1x+m)':>9} {'reached':>7} {'speed-up':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        gp = next(x for x in rows if x["dataset"] == r["dataset"] and x["variant"] == "WGAN-GP")
        cells = []
        for bar in BARS:
            bound = ">" if r[f"reached {bar}"] < r["seeds"] else " "
            cells.append(f"{bound}{r[f't {bar}']:7.2f} {r[f'reached {bar}']:>3}/{r['seeds']:<3} {_speedup_text(r, gp, bar):>8}")
        covered = "   -" if r["final_covered"] != r["final_covered"] else f"{r['final_covered']:.2f}"
        within = "   -" if r["final_within"] != r["final_within"] else f"{r['final_within']:.2f}"
        print(
            f"{r['dataset']:<11} {r['variant']:<22} {r['final_ratio']:6.2f} ± {r['final_ratio_sd']:4.2f} {covered:>7} "
            f"{within:>6} {r['generator_steps']:9.0f} {cells[0]} {' ' + cells[1]}"
        )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab20")
    colours = {v: palette(i) for i, v in enumerate(VARIANTS)}
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in results)]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, key in enumerate(("W2_ratio", "modes_covered")):
            ax = axes[row, col]
            for variant in VARIANTS:
                runs = [r for r in results if r["dataset"] == dataset and r["variant"] == variant]
                if not runs or key not in runs[0]["history"][-1]:
                    continue
                n = min(len(r["history"]) for r in runs)
                xs = [statistics.mean(r["history"][i]["cpu_seconds"] for r in runs) for i in range(n)]
                ys = [statistics.mean(r["history"][i][key] for r in runs) for i in range(n)]
                ax.plot(xs, ys, color=colours[variant], label=variant, lw=1.2)
            if key == "W2_ratio":
                ax.axhline(1.0, color="0.4", ls="--", lw=1, label="sample floor")
                ax.axhline(1.1, color="0.7", ls=":", lw=1)
                ax.set_yscale("log")
                ax.set_ylabel("exact W2 to held-out / floor")
            else:
                ax.set_ylabel("fraction of modes covered")
                ax.set_ylim(-0.02, 1.02)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel("CPU seconds (measurement excluded)")
            ax.set_title(f"{dataset}: {'W2/floor' if key == 'W2_ratio' else 'modes covered'} (mean of seeds)", fontsize=9)
            if col == 0 and row == 0:
                ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(results: list[dict[str, Any]], meta: dict[str, Any], stem: str) -> None:
    results.sort(key=lambda r: (r["seed"], DATASETS.index(r["dataset"]), VARIANTS.index(r["variant"])))
    rows = summarise(results, meta["budget_cpu_seconds"])
    print_table(rows, meta["budget_cpu_seconds"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, RESULTS / f"{stem}.png")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": results}, indent=1))
    print(f"\nwrote {RESULTS / (stem + '.json')} and {RESULTS / (stem + '.png')}")


def merge(stem: str) -> None:
    parts = sorted(RESULTS.glob(f"{stem}.part-*.json"))
    if not parts:
        raise SystemExit(f"no {stem}.part-*.json under {RESULTS}")
    loaded = [json.loads(p.read_text()) for p in parts]
    budgets = {d["meta"]["budget_cpu_seconds"] for d in loaded}
    if len(budgets) != 1:
        raise SystemExit(f"parts ran with different budgets: {sorted(budgets)}")
    meta = dict(loaded[0]["meta"], parts=[p.name for p in parts], total_wall_seconds=sum(d["meta"]["total_wall_seconds"] for d in loaded))
    write_outputs([r for d in loaded for r in d["runs"]], meta, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1.5 s budget, 300 samples, 8gaussians (a smoke run)")
    parser.add_argument("--budget", type=float, default=30.0, help="CPU seconds of training per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="run these seeds (default: range(--seeds))")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None)
    parser.add_argument("--samples", type=int, default=1000, help="generated and held-out points per measurement")
    parser.add_argument("--tag", default=None, help="write generative_2d.part-<tag>.json (combine later with --merge)")
    parser.add_argument("--merge", action="store_true", help="combine the part files into generative_2d.json")
    parser.add_argument("--replot", action="store_true", help="re-print the table and re-draw the PNG from the saved JSON")
    args = parser.parse_args()
    stem = "generative_2d_quick" if args.quick else "generative_2d"
    if args.merge:
        merge(stem)
        return
    if args.replot:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        write_outputs(saved["runs"], saved["meta"], stem)
        return
    if args.quick:
        args.budget, args.seeds, args.samples = 1.5, 1, 300
        args.datasets = args.datasets or ["8gaussians"]
    torch.set_num_threads(1)
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    datasets = tuple(args.datasets or DATASETS)
    variants = tuple(args.variants or VARIANTS)
    started = time.perf_counter()
    results = []
    total, done = len(seeds) * len(datasets) * len(variants), 0
    for seed in seeds:
        for dataset in datasets:
            for variant in variants:
                result = run_one(dataset, variant, seed, args.budget, args.samples)
                results.append(result)
                done += 1
                last = result["history"][-1]
                coverage = f", covered {last['modes_covered']:.2f}" if "modes_covered" in last else ""
                print(
                    f"[{done}/{total}] {dataset} {variant} seed {seed}: W2/floor {last['W2_ratio']:.2f}{coverage} after "
                    f"{int(last['step'])} generator steps ({last['cpu_seconds']:.1f} CPU s, {last['seconds']:.1f} wall s)",
                    flush=True,
                )
    meta = {
        "budget_cpu_seconds": args.budget,
        "seeds": seeds,
        "samples": args.samples,
        "generator": f"MLP {HIDDEN}",
        "batch_size": {"WGAN": WGAN_BATCH, "W2-FE": FLOW_BATCH},
        "torch": torch.__version__,
        "platform": platform.platform(),
        "total_wall_seconds": time.perf_counter() - started,
    }
    write_outputs(results, meta, f"{stem}.part-{args.tag}" if args.tag else stem)


if __name__ == "__main__":
    main()
