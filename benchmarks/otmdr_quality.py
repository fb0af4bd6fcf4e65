"""Quality benchmark: SGD vs SAM vs OT-MDR, single model and ensemble of 3, on real digits.

Data: scikit-learn's 1,797 real 8x8 handwritten digits (``DigitsDataModule``; 25% held out for
test, 15% for validation, stratified), or with ``--dataset mnist`` the 10,000 real MNIST test
images in ``../shared/data/mnist`` split the same way. Network: ``ConvClassifier`` (3 conv layers
with BatchNorm). Every method uses the same base optimizer (SGD, momentum 0.9, weight decay 5e-4,
cosine schedule), batch size and number of epochs; SAM and OT-MDR evaluate two forward-backward
batch-equivalents per step (SAM: 2 passes; OT-MDR with the official chain: half, half, full).

The radius is picked per method on the validation split from the SAM paper's grid
{0.01, 0.02, 0.05, 0.1, 0.2, 0.5} (OT-MDR: ``rho = (r, r)``, two chained ascent steps on the batch
halves, summed direction, noise 1e-4, one particle), by validation accuracy (ties: lower NLL), with
seed 0, separately for the single model and the ensemble. Then each configuration is trained with 3
seeds and evaluated on the test split: accuracy, NLL, ECE (15 bins) and Brier score, mean and
standard deviation. The models are :class:`~lightning_wass.OTMDRClassifier` (its likelihood, loss
and optimizer), trained by a plain loop here (no Trainer) to keep the run within minutes.

    .venv/bin/python benchmarks/otmdr_quality.py                 # digits: 42 training runs of 30 epochs
    .venv/bin/python benchmarks/otmdr_quality.py --epochs 10     # about a third of the time
    .venv/bin/python benchmarks/otmdr_quality.py --quick         # a smoke run (about a minute)
    .venv/bin/python benchmarks/otmdr_quality.py --suite mixed-ensemble --epochs 15 --grid 0.02 0.05 0.1
        # an ensemble of three different networks, our settings and the official code's side by side
    .venv/bin/python benchmarks/otmdr_quality.py --dataset mnist --suite official-vs-ours --epochs 3 --grid 0.02 0.05
        # the real MNIST test images (../shared/data/mnist), one model, official settings beside ours

The default run took 55 minutes on the project's shared 2-core machine under a load average of
about 10 (single-model runs 16-80 s, ensemble runs 40-160 s each); the ensemble runs dominate.

Prints a table and writes ``benchmarks/results/otmdr_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from lightning_wass.datamodules import DigitsDataModule
from lightning_wass.modules.otmdr_classifier import OTMDRClassifier
from lightning_wass.nn import ConvClassifier, MLPClassifier
from lightning_wass.optim import OTMDR

GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DEFAULT_OUT = Path(__file__).parent / "results" / "otmdr_quality.json"
METHODS = ("sgd", "sam", "otmdr")


def load_data(dataset: str, seed: int):
    kwargs = dict(batch_size=64, val_fraction=0.15, test_fraction=0.25, seed=seed)
    if dataset == "digits":
        dm = DigitsDataModule(**kwargs)
    else:
        from lightning_wass.datamodules import MNISTDataModule

        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
        dm = MNISTDataModule(data_dir=str(shared), test_set_only=True, **kwargs)
    dm.setup()
    return {split: dm.tensors(split) for split in ("train", "val", "test")}


def networks(kind: str, members: int, in_shape: tuple[int, ...]):
    """``"conv"``: the ConvClassifier (``members`` re-initialised copies); ``"mixed"``: three different
    networks (a wide and a narrow ConvClassifier and an MLP), the heterogeneous ensemble."""
    in_channels = in_shape[0]
    if kind == "conv":
        return ConvClassifier(in_channels=in_channels, num_classes=10, width=16)
    return [ConvClassifier(in_channels=in_channels, num_classes=10, width=16), MLPClassifier(in_shape, hidden=(128, 128)),
            ConvClassifier(in_channels=in_channels, num_classes=10, width=8)]


def build(method: str, rho: float, members: int, epochs: int, seed: int, in_shape: tuple[int, ...],
          kind: str = "conv", variant: str = "ours") -> OTMDRClassifier:
    """``variant="ours"``: the library's defaults (OT-MDR ``rho = (r, r)``, noise 1e-4, BatchNorm from
    the first pass only, no label smoothing); ``"official"``: the official code's settings (OT-MDR
    ``rho = (r, 2r)`` as its (0.05, 0.1) / (0.1, 0.2), no noise, BatchNorm updated on the ascent
    passes, label smoothing 0.1 on the wrong classes, ensembles with the averaged direction)."""
    torch.manual_seed(seed)
    network = networks(kind, members, in_shape)
    kwargs = dict(method="base" if method == "sgd" else method, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=seed)
    official = variant == "official"
    if official:
        kwargs.update(label_smoothing=0.1, label_smoothing_mode="others", freeze_norm_stats="final_passes")
    if method == "sam":
        kwargs["rho"] = rho
        if official:
            kwargs["freeze_norm_stats"] = True  # the official SAM: statistics from the first pass only
    elif method == "otmdr":
        kwargs.update(rho=[rho, 2 * rho] if official else [rho, rho], noise_std=0.0 if official else 1e-4,
                      num_particles=1, chunked_ascent=True)
        if official and members > 1:
            kwargs["chain_direction"] = "averaged"
    size = 1 if isinstance(network, list) else members
    return OTMDRClassifier(network, ensemble_size=size, **kwargs)


def train(module: OTMDRClassifier, data, epochs: int, seed: int) -> float:
    x, y = data["train"]
    optimizer = module.build_optimizer()
    steps_per_epoch = math.ceil(len(x) / 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            xb, yb = x[idx], y[idx]

            def closure():
                optimizer.zero_grad()
                xs, ys = optimizer.current_pass.select(xb, yb) if isinstance(optimizer, OTMDR) else (xb, yb)
                loss = module.data_loss(module.log_probs(xs), ys)
                loss.backward()
                return loss

            if isinstance(optimizer, OTMDR):
                optimizer.step(closure)
            else:
                closure()
                optimizer.step()
            schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(module: OTMDRClassifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    module.eval()
    probs = torch.cat([module(x[i : i + 512]) for i in range(0, len(x), 512)])
    onehot = F.one_hot(y, 10).float()
    return {
        "acc": float((probs.argmax(1) == y).float().mean()),
        "nll": float(-torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).mean()),
        "ece": float(multiclass_calibration_error(probs, y, num_classes=10, n_bins=15, norm="l1")),
        "brier": float((probs - onehot).square().sum(1).mean()),
    }


def run(dataset: str, epochs: int, seeds: int, grid: tuple[float, ...], out: Path, settings=((1, "conv"), (3, "conv")),
        variants=("ours",)) -> dict:
    torch.set_num_threads(1)
    results: dict = {"dataset": dataset, "epochs": epochs, "grid": list(grid), "selection": {}, "test": {}}
    data0 = load_data(dataset, 0)
    in_shape = tuple(int(v) for v in data0["train"][0].shape[1:])
    print(f"{dataset}: train {len(data0['train'][0])}, val {len(data0['val'][0])}, test {len(data0['test'][0])}; {epochs} epochs")
    for (members, kind), variant in ((s, v) for s in settings for v in variants):
        setting = "single" if members == 1 else ("ensemble of 3 different networks" if kind == "mixed" else "ensemble of 3")
        if len(variants) > 1:
            setting += f", {variant} settings"
        for method in METHODS:
            key = f"{method} ({setting})"
            if method == "sgd":
                best = 0.0
            else:
                scores = {}
                for rho in grid:
                    module = build(method, rho, members, epochs, 0, in_shape, kind, variant)
                    train(module, data0, epochs, 0)
                    scores[rho] = evaluate(module, *data0["val"])
                    print(f"  select {key:26s} rho={rho:<5} val acc {scores[rho]['acc']:.4f} nll {scores[rho]['nll']:.4f}", flush=True)
                best = max(grid, key=lambda r: (scores[r]["acc"], -scores[r]["nll"]))
                results["selection"][key] = {"rho": best, "val": {str(r): s for r, s in scores.items()}}
            runs = []
            seconds = []
            for seed in range(seeds):
                data = data0 if seed == 0 else load_data(dataset, seed)
                module = build(method, best, members, epochs, seed, in_shape, kind, variant)
                seconds.append(train(module, data, epochs, seed))
                runs.append(evaluate(module, *data["test"]))
            summary = {
                metric: {"mean": statistics.mean(r[metric] for r in runs), "std": statistics.stdev(r[metric] for r in runs) if seeds > 1 else 0.0}
                for metric in runs[0]
            }
            results["test"][key] = {"rho": best, "runs": runs, "summary": summary, "train_seconds": statistics.mean(seconds)}
            print(
                f"{key:26s} rho={best:<5} "
                + "  ".join(f"{m} {summary[m]['mean']:.4f}±{summary[m]['std']:.4f}" for m in ("acc", "nll", "ece", "brier"))
                + f"  ({statistics.mean(seconds):.1f} s/run)",
                flush=True,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"wrote {out}")
    return results


def print_table(results: dict) -> None:
    print(f"\n| method | rho | accuracy | NLL | ECE | Brier |   ({results['dataset']}, test split, mean ± std over seeds)")
    print("|---|---|---|---|---|---|")
    for key, entry in results["test"].items():
        s = entry["summary"]
        cells = " | ".join(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in ("acc", "nll", "ece", "brier"))
        print(f"| {key} | {entry['rho'] if entry['rho'] else '-'} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 2 seeds, 2 radii: a smoke run")
    parser.add_argument("--suite", choices=("default", "mixed-ensemble", "official-vs-ours"), default="default",
                        help="mixed-ensemble: the ensemble of three different networks; official-vs-ours: a single "
                             "model with the official code's settings beside ours")
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    grid = (0.02, 0.05) if args.quick else tuple(args.grid)
    epochs, seeds = (2, 2) if args.quick else (args.epochs, args.seeds)
    name = f"otmdr_quality_{args.dataset}_{args.suite}{'_quick' if args.quick else ''}.json"
    if args.suite == "default" and args.dataset == "digits":
        name = "otmdr_quality_quick.json" if args.quick else "otmdr_quality.json"
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name(name)
    if args.suite == "mixed-ensemble":
        run(args.dataset, epochs, seeds, grid, out, settings=((3, "mixed"),), variants=("ours", "official"))
    elif args.suite == "official-vs-ours":
        run(args.dataset, epochs, seeds, grid, out, settings=((1, "conv"),), variants=("ours", "official"))
    else:
        run(args.dataset, epochs, seeds, grid, out)


if __name__ == "__main__":
    main()
