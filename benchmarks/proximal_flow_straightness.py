"""Straight trajectories, the W2 proximal's promise: W1W2ProximalFlow on 8 Gaussians under a CPU budget.

Trains ``W1W2ProximalFlow(data_shape=(2,))`` (the defaults, unless flags override them) on
``ToyDataModule("8gaussians", train_size=20000, test_size=2000)`` from ``N(0, I)`` for
``--cpu-seconds`` (default 180) seconds of *process CPU time* (``time.process_time()``, counted from
the start of training, one thread), then measures

- ``W2 / floor``: the exact W2 (``lightning_wass.wasserstein_distance``, POT's network simplex)
  between 2000 generated samples and the 2000 held-out test points, over the sample floor, the
  exact W2 between 2000 training points and the same test points;
- ``path / chord``: the median over 2000 Euler trajectories (``model.trajectories(2000)``) of the
  path length over the chord, ``lightning_wass.functional.proximal_flow.median_path_straightness`` (1 = straight);

and, for the record, the module's validation indicators on the test points (ours and the official
conventions). The acceptance of issue 11: W2 / floor < 2 and path / chord <= 1.1.

Run:  .venv/bin/python benchmarks/proximal_flow_straightness.py [--cpu-seconds 180] [--seed 0]
      [--alpha A] [--T T] [--num-steps K] [--lr-potential LR] [--lr-discriminator LR] [--tag NAME]
Flags left out keep the module's defaults. Writes
benchmarks/results/proximal_flow_straightness.json (``--tag NAME``: proximal_flow_straightness_NAME.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_wass import ToyDataModule, W1W2ProximalFlow, wasserstein_distance
from lightning_wass.modules.proximal_flow import autograd_enabled
from lightning_wass.functional.proximal_flow import median_path_straightness

RESULTS = Path(__file__).resolve().parent / "results"
N_EVAL = 2000


class CPUBudget(pl.Callback):
    """Stop training once ``seconds`` of process CPU time have passed since training started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = 0.0
        self.used = 0.0
        self.wall = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.process_time()
        self._wall0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.used = time.process_time() - self.start
        self.wall = time.perf_counter() - self._wall0
        if self.used >= self.seconds:
            trainer.should_stop = True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--T", type=float)
    parser.add_argument("--num-steps", type=int)
    parser.add_argument("--lr-potential", type=float)
    parser.add_argument("--lr-discriminator", type=float)
    parser.add_argument("--tag", type=str, default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    overrides = {
        key: value
        for key, value in (
            ("alpha", args.alpha),
            ("T", args.T),
            ("num_steps", args.num_steps),
            ("lr_potential", args.lr_potential),
            ("lr_discriminator", args.lr_discriminator),
        )
        if value is not None
    }
    pl.seed_everything(args.seed, verbose=False)
    model = W1W2ProximalFlow(data_shape=(2,), seed=args.seed, **overrides)
    data = ToyDataModule("8gaussians", train_size=20_000, test_size=N_EVAL, seed=args.seed)
    budget = CPUBudget(args.cpu_seconds)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=100_000,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[budget],
    )
    trainer.fit(model, datamodule=data)

    model.eval()
    data.setup("test")
    test = data.tensors("test")[0][:N_EVAL]
    train = data.tensors("train")[0][:N_EVAL]
    gen = torch.Generator().manual_seed(10_000 + args.seed)
    samples = model.sample(N_EVAL, generator=gen)
    paths = model.trajectories(N_EVAL, generator=torch.Generator().manual_seed(20_000 + args.seed))
    w2 = float(wasserstein_distance(samples, test))
    floor = float(wasserstein_distance(train, test))
    straightness = float(median_path_straightness(paths))
    with autograd_enabled():
        indicators = model.optimality_indicators(test.clone(), torch.Generator().manual_seed(30_000 + args.seed))
    hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.hparams).items()}
    result = {
        "benchmark": "proximal_flow_straightness",
        "data": "ToyDataModule('8gaussians', train_size=20000, test_size=2000), reference N(0, I)",
        "hparams": hp,
        "overrides": overrides,
        "cpu_seconds_budget": args.cpu_seconds,
        "cpu_seconds_used": budget.used,
        "wall_seconds": budget.wall,
        "potential_steps": model.potential_steps,
        "critic_steps": model.critic_steps,
        "w2": w2,
        "w2_floor": floor,
        "w2_over_floor": w2 / floor,
        "median_path_over_chord": straightness,
        "meets_w2": w2 / floor < 2.0,
        "meets_straightness": straightness <= 1.1,
        "indicators": {k: float(v) for k, v in indicators.items()},
        "torch": torch.__version__,
        "machine": platform.platform(),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (f"proximal_flow_straightness_{args.tag}.json" if args.tag else "proximal_flow_straightness.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{model.potential_steps} potential steps in {budget.used:.1f} CPU s ({budget.wall:.1f} s wall); "
        f"overrides {overrides or 'none (defaults)'}"
    )
    print(f"W2 {w2:.4f}, floor {floor:.4f}: W2 / floor = {w2 / floor:.3f} (target < 2)")
    print(f"median path / chord = {straightness:.4f} (target <= 1.1)")
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")
    return result


if __name__ == "__main__":
    main()
