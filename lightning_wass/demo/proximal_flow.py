"""Demo part "proximal_flow": a W1 (+) W2 proximal flow from N(0, I) to the circle (arXiv:2407.11901).

The circle of radius 2 (``ToyDataModule("circle")``, no noise) is a distribution on a 1-D manifold:
generated and data distributions are mutually singular, so the KL divergence alone is infinite and
the W1 proximal (an ``L = 1`` Lipschitz discriminator, one-sided gradient penalty) is what makes
the problem well posed; the W2 proximal (kinetic energy, ``alpha = 0.1``, the module's default)
makes the trajectories straight. :class:`~lightning_wass.W1W2ProximalFlow` with its defaults
(T = 1, 5 Euler steps, KL in Donsker-Varadhan form, 5 discriminator steps per potential step, Adam
betas (0.5, 0.9), lr 1e-4 / 5e-4: our settings, not the official 2-D ones, which are in
``examples/proximal_flow_*_official.yaml``) and 3 x 64 MLPs, on one CPU thread.

Measured: the optimality indicators at every validation (kinetic energy, HJ residual, relative HJ
residual, relative terminal error, divergence estimate with dt and dt/2), the exact W2 (POT)
between generated and held-out points beside its sample floor, the exact W2 between samples with
dt and with dt/2 (discretisation invariance), and the excess length of the trajectories over
straight lines. Figures: the trajectories over the data, and the indicator curves.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

from lightning_wass.datamodules import ToyDataModule
from lightning_wass.demo.context import DemoContext, DemoSection
from lightning_wass.modules.proximal_flow import W1W2ProximalFlow
from lightning_wass.nn.potentials import MLPDiscriminator, PotentialMLP
from lightning_wass.ot import wasserstein_distance
from lightning_wass.callbacks.figures import plot_indicator_curves, plot_trajectories_2d
from lightning_wass.functional.proximal_flow.indicators import median_path_straightness
from lightning_wass.functional.proximal_flow.rollout import excess_path_length

HIDDEN = (64, 64, 64)
FULL = {"potential_steps": 400, "validations": 16, "samples": 1000}
QUICK = {"potential_steps": 8, "validations": 2, "samples": 200}
CURVES = {
    "kinetic energy": "val/kinetic_energy",
    "HJ residual": "val/hj_residual",
    "HJ residual / (alpha KE)": "val/hj_residual_relative",
    "terminal error / |grad phi|": "val/terminal_error_relative",
    "divergence estimate (dt)": "val/divergence",
    "divergence estimate (dt/2)": "val/divergence_half_dt",
}


class _History(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: W1W2ProximalFlow) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row["potential_step"] = float(pl_module.potential_steps)
        self.rows.append(row)


def run(ctx: DemoContext) -> DemoSection:
    settings = QUICK if ctx.quick else FULL
    n = settings["samples"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: one intra-op thread is faster than two
    try:
        pl.seed_everything(ctx.seed, verbose=False)
        data = ToyDataModule("circle", train_size=20000, val_size=500, test_size=n, batch_size=256, seed=ctx.seed)
        model = W1W2ProximalFlow(
            (2,),
            potential=PotentialMLP(2, HIDDEN, zero_init_last=True),
            discriminator=MLPDiscriminator(2, HIDDEN),
            T=1.0,
            num_steps=5,
            alpha=0.1,
            L=1.0,
            seed=ctx.seed,
        )
        history = _History()
        critic_steps = settings["potential_steps"] * model.n_critic
        trainer = pl.Trainer(
            max_steps=critic_steps + settings["potential_steps"],  # Lightning counts both optimizers' steps
            val_check_interval=max(1, critic_steps // settings["validations"]),
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            **ctx.trainer_kwargs("proximal_flow", callbacks=[history], enable_progress_bar=False, log_every_n_steps=25),
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        seconds = time.perf_counter() - start

        test = data.tensors("test")[0].double()
        floor_points = data.tensors("train")[0][:n].double()
        paths = model.trajectories(n, generator=torch.Generator().manual_seed(1))
        half_dt = model.sample(n, num_steps=2 * model.num_steps, generator=torch.Generator().manual_seed(2))
        w2 = float(wasserstein_distance(paths[-1].double(), test))
        floor = float(wasserstein_distance(floor_points, test))
        w2_dt = float(wasserstein_distance(paths[-1].double(), half_dt.double()))
        straightness = float(excess_path_length(paths))
        median_ratio = float(median_path_straightness(paths))
    finally:
        torch.set_num_threads(threads)

    figures = [
        plot_trajectories_2d(
            paths,
            ctx.figure_dir / "proximal_flow_trajectories.png",
            data=test,
            title=f"W1+W2 proximal flow, N(0, I) -> circle: {model.potential_steps} potential steps, W2/floor {w2 / floor:.2f}",
        ),
        plot_indicator_curves(
            {label: [(int(r["potential_step"]), r[key]) for r in history.rows if key in r] for label, key in CURVES.items()},
            ctx.figure_dir / "proximal_flow_indicators.png",
            title="optimality indicators at validation (W1+W2, circle)",
        ),
    ]
    last = history.rows[-1]
    summary = [
        f"circle: W2 {w2:.3f} = {w2 / floor:.2f} x sample floor ({floor:.3f}) after {model.potential_steps} potential steps ({seconds:.1f} s)",
        f"kinetic energy {last['val/kinetic_energy']:.3f}; HJ residual {last['val/hj_residual']:.4f} "
        f"({last['val/hj_residual_relative']:.2f} of alpha*KE); terminal error {last['val/terminal_error_relative']:.2f} of |grad phi|",
        f"dt vs dt/2: W2 between samples {w2_dt:.3f} (floor {floor:.3f}); paths {100 * straightness:.2f} % longer than straight lines in total, median path / chord {median_ratio:.3f}",
    ]
    rows = "\n".join(
        f"| {int(r['potential_step'])} | {r['val/kinetic_energy']:.3f} | {r['val/hj_residual']:.4f} | "
        f"{r['val/hj_residual_relative']:.2f} | {r['val/terminal_error_relative']:.2f} | {r['val/divergence']:.3f} | "
        f"{r['val/divergence_half_dt']:.3f} |"
        for r in history.rows
    )
    report = f"""
`lightning_wass.W1W2ProximalFlow` from N(0, I) to the circle of radius 2 (a 1-D manifold: the KL
divergence alone is infinite, the W1 proximal with L = 1 makes it finite), with the W2 proximal
alpha = 0.1, T = 1 and 5 Euler steps, 5 discriminator steps per potential step, 3 x 64 MLPs, one
CPU thread, seed {ctx.seed}: {model.potential_steps} potential steps in {seconds:.1f} s.

- exact W2 (POT) between {n} samples and {n} held-out points: **{w2:.3f}**, {w2 / floor:.2f} x the
  sample floor {floor:.3f} (W2 between {n} training and the same held-out points);
- discretisation invariance: W2 between {n} samples with dt = 0.2 and {n} with dt/2 = 0.1 is
  {w2_dt:.3f} (independent reference draws; compare with the floor);
- straightness (the W2 proximal's promise): the Euler paths are {100 * straightness:.2f} % longer in total
  than the straight segments from x_0 to x_T; the median over trajectories of path length / chord
  is {median_ratio:.3f} (1 for straight lines).

Indicators at each validation (HJ residual relative = HJ residual / (alpha KE); terminal error
relative = terminal error / mean |grad phi(x_T)|):

| potential step | kinetic energy | HJ residual | HJ relative | terminal relative | divergence (dt) | divergence (dt/2) |
|---|---|---|---|---|---|---|
{rows}

`benchmarks/proximal_flow_ablation.py` runs the paper's ablation (W1+W2, W1 only, W2 only, neither)
on this set, pinwheel, Moons / Pinwheel in 7-D and 12-D and MNIST; `benchmarks/proximal_flow_straightness.py`
trains the defaults on 8 Gaussians for 180 CPU seconds and reports W2 / floor and the median path / chord.
"""
    return DemoSection(title="W1 (+) W2 proximal flow on the circle", summary=summary, report_markdown=report, figures=figures)
