"""The W1 (+) W2 proximal flow ablation (arXiv:2407.11901, section 6): W1+W2, W1 only, W2 only and
neither, on the 2-D sets (circle, pinwheel, moons), their 7-D / 12-D embeddings (moons_7d, moons_12d,
pinwheel_7d, pinwheel_12d) and MNIST, with the official settings of each and the same seeds.

Settings (``W1W2ProximalFlow`` flags, ``a`` the data set's ``alpha``): W1+W2 ``alpha=a, L=1``; W1 only
``alpha=0, L=1``; W2 only ``alpha=a, L=None``; neither ``alpha=0, L=None``. Every run uses
``flow_alpha=a``, the same flow parametrisation ``v = -grad U / a``, as the official code does
(``alpha1`` is the velocity scale of every run, ``--loss_case No_OT`` only drops the kinetic term).

Official settings (verified in the official repository HyeminGu/Wasserstein-1_Wasserstein-2_generative_flow,
``POT_Flow_GAN.py`` = PFG, ``POT_Flow_GAN_CNN.py`` = CNN, ``README.md``):

=============  ==========================================================================================
all            Adam betas (0.5, 0.9) (PFG 304-305, CNN 342-343); 5 discriminator steps per potential step,
               each on fresh batches (PFG 338-344, CNN 373-379); batch 200 (PFG 145, CNN 143); one-sided
               penalty ``mean relu(|grad phi|^2 - L^2)`` on uniform interpolates (PFG 176-186, CNN 200-210),
               L = 1 (README ``-L 1.0``); divergence: KL in Donsker-Varadhan form -- the README passes
               ``--f reverse_KL`` but the code tests ``p.f == 'reverseKL'`` (PFG 257, CNN 289), so it
               falls through to ``log mean exp(phi(real))`` (PFG 259-260, CNN 291-292); the potential is
               an MLP on ``[x, t]`` (PFG 189-192); the discriminator a ReLU MLP (PFG 172-174); weights
               glorot-normal, biases zero (PFG 163-170, CNN 172-188).
2-D            circle, pinwheel, moons: alpha 0.5, lambda 0.1 (README); T 1.0, dt 0.2 (5 Euler steps),
               lr 1e-4 (U) / 2e-5 (phi) (PFG argparse defaults, 74-102: the README passes none of these); N(0, I)
               reference (PFG 131); 100,000 data points (PFG 24); 25,000 iterations (README).
embedded       moons_7d/12d, pinwheel_7d/12d (``--total_dim 7|12 -submnfld_dim 2``): alpha 0.1,
               lambda 0.01 (README); the rest as 2-D; the reference is N(0, I) in all 7 / 12 dimensions
               (PFG 133: ``submnfld_dim = total_dim`` for P).
networks       pinwheel: U 5 x 64 tanh (``--gen_dims 64 64 64 64 64``), phi 3 x 64 ReLU
               (``--disc_dims 64 64 64``) (README); moons: the README passes no widths, so the argparse
               defaults U 5 x 48, phi 3 x 48 (PFG 86-89); circle (not in the README): those defaults too.
               (The stored pinwheel OT assets, assets/Pinwheel/{D1P2,P2}/*/result.pickle, have 48-wide
               layers: they were run with the defaults; only the PG assets have 64. The stored
               moons W2-only 7-D / 12-D assets hold 501 evaluations: 50,000 iterations.) Data: our
               pinwheel is the official one; our moons is the official Moons / 4.2 (shifted), so the
               official moons figures (kinetic energy, W2) are on a 4.2x larger scale than ours
               (lightning_wass/datamodules/toy.py); the embeddings are the official ``[I_2; 0]``.
MNIST          CNN + README: alpha 0.05, T 5.0, dt 1.0 (5 Euler steps); lambda 0.1, lr 5e-4 (U) /
               1e-4 (phi) (CNN defaults 93-100); U[0, 0.5]^784 reference ('Image_uniform', CNN 125,
               data_generator.py image_uniform, scale 0.5); 6,000 images (CNN 23); 5,000 iterations for
               W1 only and W1+W2 (CNN default 90; README passes none), 200 for W2 only and neither
               (README ``--iterations 200``); conv networks: :class:`OfficialConvPotential` /
               :class:`OfficialConvDiscriminator` (``--arch official``, CNN 152-223).
=============  ==========================================================================================

CPU scaling (this machine: 2 shared cores, one thread per process): the 2-D / embedded runs take
``--steps-toy`` potential steps (default 100: 1/250 of the official 25,000; about 15 s a run);
MNIST takes ``--steps-mnist`` (default 110: 1/45 of the official 5,000 for W1+W2 and W1 only, 0.55
of the official 200 for W2 only and neither) at ``--batch-mnist`` images per batch (default 100;
official 200). One official MNIST iteration (5 discriminator steps + 1 potential step through the
official conv nets) costs about 4.4 s here at batch 200 and 3.0 s at batch 100: batch 100 buys 1.5x
the iterations, enough to pass iteration 100, where the official record has its first evaluation
of the W1 runs. Other deviations: our MNIST is 6,000 of the 10,000 t10k images (no training files
here), the official uses 6,000 training images; the indicators are measured on ``--val-batch-toy``
(2,000) / ``--val-batch-mnist`` (200) reference samples (official: 5,000), ten times per run
(``--validations``; the official code every 100 iterations), so the official terminal figure,
``||.||_F / N``, is also given rescaled by ``sqrt(N / 5000)`` (``terminal_error_official_at_5000``).

Measured per run: the means over training and final values of every ``val/*`` indicator the module
logs -- ours (``kinetic_energy``, ``hj_residual`` (sign derived for ``v = -grad U / alpha``,
centred), ``terminal_error`` (mean norm)) and the official-convention ones when the module logs
them (``val/*_official``); the exact W2 (POT) between ``--samples`` generated points and as many
held-out test points, and its sample floor (as many training points against those test points);
whether the run stayed finite (a ``DivergenceError`` ends the run and is recorded). "Mean over
training" excludes the state at step 0, as the paper's figures do: the official MNIST figures are
the means over the evaluations at iterations 100, 200, ..., 5,000 (result.pickle: W1+W2 kinetic
energy 12.20, HJ residual 0.428; W1 only 23.87 and 0.976; including iteration 0: 12.14 / 23.62).

The official figures are read from the official ``result.pickle`` files (plain NumPy pickles) when
the official repository is at ``--official-repo`` (a bare git snapshot is enough); otherwise only the
paper's MNIST figures are printed (W1+W2 kinetic energy 12.2, HJ residual 0.43; W1 only 23.9 and
0.98; W2 only and neither NaN). With the repository, the official trained MNIST weights are also
loaded into our networks and our module's indicators computed on them (``official_weights_check``):
they must reproduce the official final figures.

Recorded here (defaults, seed 0, 2,073 s wall, MNIST 1,544 s of it; batch 100, 110 iterations; official
convention, means over training): MNIST W1+W2 kinetic energy 15.3, HJ residual 0.79; W1 only 35.7 and
1.79 (official over 5,000 iterations 12.2 / 0.43 and 23.9 / 0.98; at iteration 100, the official
evaluation within our window, 11.2 / 0.53 and 27.0 / 1.39): the ordering (W1+W2 about half of W1
only) is reproduced, the values are early-training ones. W2 only and neither stayed finite for the
110 iterations (the official runs went to NaN at iterations 136 and 148, past our length); their
terminal error (rescaled to N = 5,000) is 0.51 / 0.52 against 0.07 / 0.08 with the W1 proximal
(official, iterations 4-108: 0.44 / 0.47 against 0.11 / 0.10 at iteration 100). The official trained
weights loaded into our networks give the official final figures (W1+W2 kinetic energy 9.54 vs 9.49,
HJ 0.317 vs 0.319, terminal 0.0927 vs 0.0926). On the 2-D / embedded sets, 100 iterations are too few
for the W1 penalty to act (|grad phi| < 1 throughout): W1+W2 = W2 only and W1 only = neither exactly;
the W2 proximal lowers the kinetic energy 5-80x there (4-70x in the official convention); nothing diverged (the official W2-only
embedded runs went to NaN after 8,900-24,400 iterations).

Run:  .venv/bin/python benchmarks/proximal_flow_ablation.py [--quick] [--datasets circle pinwheel ...]
      [--steps-toy 100] [--steps-mnist 110] [--batch-mnist 100] [--arch official|conv|mlp]
Writes benchmarks/results/proximal_flow_ablation.json (``--quick``: proximal_flow_ablation_quick.json;
``--out NAME`` for another name in that folder).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_wass import DivergenceError, MNISTDataModule, ToyDataModule, W1W2ProximalFlow, wasserstein_distance
from lightning_wass.datamodules.base import collate_batched
from lightning_wass.modules.proximal_flow import autograd_enabled
from lightning_wass.nn.potentials import (
    ConvDiscriminator,
    ConvPotential,
    MLPDiscriminator,
    OfficialConvDiscriminator,
    OfficialConvPotential,
    PotentialMLP,
    official_init_,
)

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
OFFICIAL_REPO = Path("/work/.mirror/HyeminGu+Wasserstein-1_Wasserstein-2_generative_flow/repo")

SETTINGS: dict[str, dict[str, bool]] = {
    "W1+W2": {"w2": True, "w1": True},
    "W1 only": {"w2": False, "w1": True},
    "W2 only": {"w2": True, "w1": False},
    "neither": {"w2": False, "w1": False},
}
_LOW_DIM = dict(T=1.0, num_steps=5, lr_potential=1e-4, lr_discriminator=2e-5, batch=200, reference="normal")
DATASETS: dict[str, dict[str, Any]] = {
    "circle": dict(_LOW_DIM, alpha=0.5, gp_weight=0.1, u_hidden=(48,) * 5, phi_hidden=(48,) * 3, official=None),
    "moons": dict(_LOW_DIM, alpha=0.5, gp_weight=0.1, u_hidden=(48,) * 5, phi_hidden=(48,) * 3, official=("Moons", "Flow-GAN-Rep3")),
    "pinwheel": dict(_LOW_DIM, alpha=0.5, gp_weight=0.1, u_hidden=(64,) * 5, phi_hidden=(64,) * 3, official=("Pinwheel", "Flow-GAN-Rep3")),
    "moons_7d": dict(_LOW_DIM, alpha=0.1, gp_weight=0.01, u_hidden=(48,) * 5, phi_hidden=(48,) * 3, official=("Moons", "Flow-GAN-dim7-Rep3")),
    "moons_12d": dict(_LOW_DIM, alpha=0.1, gp_weight=0.01, u_hidden=(48,) * 5, phi_hidden=(48,) * 3, official=("Moons", "Flow-GAN-dim12-Rep3")),
    "pinwheel_7d": dict(_LOW_DIM, alpha=0.1, gp_weight=0.01, u_hidden=(64,) * 5, phi_hidden=(64,) * 3, official=("Pinwheel", "Flow-GAN-dim7-Rep3")),
    "pinwheel_12d": dict(_LOW_DIM, alpha=0.1, gp_weight=0.01, u_hidden=(64,) * 5, phi_hidden=(64,) * 3, official=("Pinwheel", "Flow-GAN-dim12-Rep3")),
    "mnist": dict(
        T=5.0, num_steps=5, lr_potential=5e-4, lr_discriminator=1e-4, batch=200, reference="uniform",
        alpha=0.05, gp_weight=0.1, official=("MNIST", "Flow-GAN-Rep3"),
    ),
}
DEFAULT_DATASETS = ["circle", "pinwheel", "moons_7d", "moons_12d", "pinwheel_7d", "pinwheel_12d", "mnist"]
# Official asset folder of each setting (README + the savedir rule, CNN 354-359 / PFG 316-325), and the
# official iteration count of that run (the evaluation interval is min(100, iterations / 50)).
OFFICIAL_FOLDERS = {"W1+W2": "D1P2", "W1 only": "D1", "W2 only": "P2", "neither": "No_regul"}
OFFICIAL_MNIST_ITERATIONS = {"W1+W2": 5000, "W1 only": 5000, "W2 only": 200, "neither": 200}
PAPER_MNIST = {"W1+W2": (12.2, 0.43), "W1 only": (23.9, 0.98), "W2 only": (math.nan, math.nan), "neither": (math.nan, math.nan)}
INDICATORS = ("kinetic_energy", "hj_residual", "terminal_error")


# ----------------------------------------------------------------------------- the official figures
def _git_show(repo: Path, path: str) -> bytes | None:
    try:
        return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def _official_pickle(repo: Path | None, path: str) -> list[Any] | None:
    if repo is None:
        return None
    data = (repo / path).read_bytes() if (repo / path).is_file() else _git_show(repo, path)
    if data is None:
        return None
    return pickle.load(io.BytesIO(data))  # NumPy arrays and floats only (no TensorFlow needed)


def official_reference(repo: Path | None, dataset: str, setting: str) -> dict[str, Any] | None:
    """The official run's per-evaluation indicators (kinetic energy, HJ residual, terminal error,
    divergence), their means over training (evaluations after iteration 0) and where it went to NaN."""
    spec = DATASETS[dataset]["official"]
    if spec is None:
        return None
    example, run = spec
    path = f"assets/{example}/{OFFICIAL_FOLDERS[setting]}/{run}/result.pickle"
    content = _official_pickle(repo, path)
    if content is None:
        return None
    # both scripts end the pickle with [..., D_loss, KE, HJB, terminal, D_loss_test, alpha1, alpha2, alpha3]
    divergence, ke, hj, terminal = (np.asarray(content[i], dtype=float) for i in (-8, -7, -6, -5))
    # POT_Flow_GAN.py stops at the first NaN (410-411) and pads only the divergence and kinetic
    # energy lists with NaN (415-426): pad the HJ and terminal lists too
    hj, terminal = (np.concatenate([v, np.full(len(ke) - len(v), np.nan)]) for v in (hj, terminal))
    if dataset == "mnist":
        every = min(100, OFFICIAL_MNIST_ITERATIONS[setting] // 50)
    else:
        every = 100  # 25,000 (or 50,000) iterations: min(100, iterations / 50) = 100
    iterations = np.arange(len(ke)) * every
    bad = np.flatnonzero(~np.isfinite(ke) | ~np.isfinite(divergence))
    out: dict[str, Any] = {
        "path": path,
        "alpha1": float(content[-3]),
        "T": float(content[-10]),
        "dt": float(content[-9]),
        "evaluation_every": every,
        "iterations": int(iterations[-1]),
        "nan_from_iteration": int(iterations[bad[0]]) if len(bad) else None,
        "history": {
            "iteration": iterations.tolist(),
            "kinetic_energy": ke.tolist(),
            "hj_residual": hj.tolist(),
            "terminal_error": terminal.tolist(),
            "divergence": divergence.tolist(),
        },
    }
    for key, values in (("kinetic_energy", ke), ("hj_residual", hj), ("terminal_error", terminal), ("divergence", divergence)):
        after = values[1:]
        out[f"{key}_mean"] = float(after.mean()) if np.isfinite(after).all() else math.nan  # the paper's figure
        finite = after[np.isfinite(after)]
        out[f"{key}_mean_finite"] = float(finite.mean()) if len(finite) else math.nan
        out[f"{key}_final"] = float(values[-1])
    return out


def official_window(ref: dict[str, Any], steps: int) -> dict[str, float]:
    """The official run's means over its evaluations at iterations ``1 .. steps`` (the window our
    run covers) and its value at the last of them."""
    h = ref["history"]
    it = np.asarray(h["iteration"])
    mask = (it > 0) & (it <= steps)
    out: dict[str, float] = {"last_iteration": float(it[mask][-1]) if mask.any() else math.nan}
    for key in INDICATORS:
        values = np.asarray(h[key])[mask]
        out[f"{key}_mean"] = float(values.mean()) if len(values) else math.nan
        out[f"{key}_last"] = float(values[-1]) if len(values) else math.nan
    return out


# ----------------------------------------------------------------------------- runs
class Indicators(pl.Callback):
    """Collects every ``val/*`` indicator the module logs, with the potential step it was measured at."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.max_gradient_penalty = 0.0  # the largest one-sided penalty of any discriminator step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: W1W2ProximalFlow, *args: Any) -> None:
        value = trainer.callback_metrics.get("train/gradient_penalty")
        if value is not None and math.isfinite(float(value)):
            self.max_gradient_penalty = max(self.max_gradient_penalty, float(value))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: W1W2ProximalFlow) -> None:
        if trainer.sanity_checking:
            return
        row = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row["potential_step"] = pl_module.potential_steps
        self.history.append(row)


def _with_val_batch(data: pl.LightningDataModule, val_batch: int) -> pl.LightningDataModule:
    """Validate on one batch of ``val_batch`` points (the indicators use as many reference samples)."""
    data.val_dataloader = lambda: DataLoader(data.dataset("val"), batch_size=val_batch, shuffle=False, collate_fn=collate_batched)  # type: ignore[method-assign]
    return data


def build(dataset: str, setting: str, args: argparse.Namespace) -> tuple[W1W2ProximalFlow, pl.LightningDataModule]:
    spec, flags = DATASETS[dataset], SETTINGS[setting]
    a = spec["alpha"]
    common = dict(
        T=spec["T"], num_steps=spec["num_steps"], alpha=a if flags["w2"] else 0.0, L=1.0 if flags["w1"] else None,
        flow_alpha=a, gp_weight=spec["gp_weight"], divergence="kl", n_critic=5, betas=(0.5, 0.9),
        lr_potential=spec["lr_potential"], lr_discriminator=spec["lr_discriminator"], seed=args.seed,
    )
    if dataset != "mnist":
        data = ToyDataModule(dataset, train_size=100_000, val_size=args.val_batch_toy, test_size=2000, batch_size=spec["batch"], seed=args.seed)
        shape = data.data_shape
        dim = int(np.prod(shape))
        potential = official_init_(PotentialMLP(dim, spec["u_hidden"], activation="tanh"))
        discriminator = official_init_(MLPDiscriminator(dim, spec["phi_hidden"], activation="relu"))
        model = W1W2ProximalFlow(shape, potential=potential, discriminator=discriminator, reference="normal", **common)
        return model, _with_val_batch(data, args.val_batch_toy)
    data = MNISTDataModule(
        str(MNIST_DIR), test_set_only=True, val_fraction=0.1, test_fraction=0.1, num_samples=6000,
        batch_size=args.batch_mnist, seed=args.seed,
    )
    shape = (1, 28, 28)
    if args.arch == "official":
        potential, discriminator = OfficialConvPotential(shape), OfficialConvDiscriminator(shape)
    elif args.arch == "conv":
        potential, discriminator = ConvPotential(shape, activation="relu", zero_init_last=True), ConvDiscriminator(shape)
    else:
        potential = PotentialMLP(784, (512, 512, 512), zero_init_last=True)
        discriminator = MLPDiscriminator(784, (256, 256, 256))
    model = W1W2ProximalFlow(shape, potential=potential, discriminator=discriminator, reference="uniform", reference_range=(0.0, 0.5), **common)
    return model, _with_val_batch(data, args.val_batch_mnist)


def summarise(history: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for h in history for k in h if k != "potential_step"})
    out = {}
    for key in keys:
        values = [h[key] for h in history if key in h and math.isfinite(h[key])]
        out[f"{key}_mean"] = sum(values) / len(values) if values else math.nan
        out[f"{key}_final"] = values[-1] if values else math.nan
    return out


def run_one(dataset: str, setting: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    pl.seed_everything(args.seed, verbose=False)
    try:
        model, data = build(dataset, setting, args)
    except ValueError as exc:  # e.g. a toy set this checkout's ToyDataModule does not have yet
        return {"dataset": dataset, "setting": setting, "skipped": str(exc)}
    indicators = Indicators()
    n_critic = model.n_critic
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps * (n_critic + 1),  # global_step counts discriminator and potential steps
        val_check_interval=max(1, steps * n_critic // args.validations),  # in training batches (= discriminator steps)
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # train/* figures reach callback_metrics every batch (Indicators reads the largest penalty)
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[indicators],
    )
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    error = None
    try:
        trainer.fit(model, data)
    except DivergenceError as exc:
        error = str(exc)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    val_n = args.val_batch_mnist if dataset == "mnist" else args.val_batch_toy
    result: dict[str, Any] = {
        "dataset": dataset,
        "setting": setting,
        "data_shape": list(model.data_shape),
        "alpha": model.alpha,
        "flow_alpha": model.flow_alpha,
        "L": model.L,
        "gp_weight": model.gp_weight,
        "batch": data.batch_size,
        "validation_samples": val_n,
        "finite": error is None,
        "error": error,
        "potential_steps": model.potential_steps,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "seconds_per_potential_step": wall / max(1, model.potential_steps),
        "max_gradient_penalty": indicators.max_gradient_penalty if model.L is not None else None,
        "history": indicators.history,
    }
    result.update(summarise(indicators.history))
    for suffix in ("mean", "final"):  # the official terminal figure is ||.||_F / N: rescale to the official N = 5,000
        if f"terminal_error_official_{suffix}" in result:
            result[f"terminal_error_official_at_5000_{suffix}"] = result[f"terminal_error_official_{suffix}"] * math.sqrt(val_n / 5000)
    test = data.tensors("test")[0]
    train = data.tensors("train")[0]
    n = min(args.samples, len(test))
    g = torch.Generator().manual_seed(args.seed + 1)
    reference = test[torch.randperm(len(test), generator=g)[:n]].reshape(n, -1).double()
    floor_points = train[torch.randperm(len(train), generator=g)[:n]].reshape(n, -1).double()
    result["w2_floor"] = float(wasserstein_distance(floor_points, reference))
    result["w2"] = math.nan
    if error is None:
        generated = model.sample(n, generator=torch.Generator().manual_seed(args.seed + 2)).reshape(n, -1).double()
        result["finite"] = bool(torch.isfinite(generated).all())
        if result["finite"]:
            result["w2"] = float(wasserstein_distance(generated, reference))
        if dataset == "mnist":
            figures = RESULTS / "proximal_flow_ablation"
            figures.mkdir(parents=True, exist_ok=True)
            from lightning_wass.callbacks.figures import plot_image_strip

            paths = model.trajectories(4, generator=torch.Generator().manual_seed(args.seed + 3))
            tag = f"{args.out_tag}_" if args.out_tag else ""
            plot_image_strip(paths, figures / f"mnist_{tag}{setting.replace(' ', '_').replace('+', 'p')}.png", title=f"MNIST, {setting}")
    result["w2_ratio"] = result["w2"] / result["w2_floor"]
    return result


def official_weights_check(repo: Path | None, n: int, seed: int) -> list[dict[str, Any]]:
    """Load the official trained MNIST weights (W1+W2, W1 only) into OfficialConvPotential /
    OfficialConvDiscriminator and compute this module's indicators on ``n`` reference samples."""
    rows = []
    data = MNISTDataModule(str(MNIST_DIR), test_set_only=True, val_fraction=0.1, test_fraction=0.1, num_samples=6000, seed=seed)
    real = data.tensors("val")[0][:n]
    for setting in ("W1+W2", "W1 only"):
        ref = official_reference(repo, "mnist", setting)
        content = _official_pickle(repo, f"assets/MNIST/{OFFICIAL_FOLDERS[setting]}/Flow-GAN-Rep3/result.pickle")
        if ref is None or content is None:
            continue
        g_w, g_b, g_conv, d_w, d_b, d_conv = content[:6]
        model = W1W2ProximalFlow(
            (1, 28, 28), potential=OfficialConvPotential().load_official_weights(g_conv, g_w, g_b),
            discriminator=OfficialConvDiscriminator().load_official_weights(d_conv, d_w, d_b),
            T=ref["T"], num_steps=round(ref["T"] / ref["dt"]), alpha=ref["alpha1"] if setting == "W1+W2" else 0.0,
            flow_alpha=ref["alpha1"], reference="uniform", reference_range=(0.0, 0.5), seed=seed,
        )
        with autograd_enabled():
            ours = model.optimality_indicators(real.clone(), torch.Generator().manual_seed(seed))
        row = {"setting": setting, "samples": len(real), "official_final": {k: ref[f"{k}_final"] for k in INDICATORS}}
        row.update({k: float(v) for k, v in ours.items()})
        row["terminal_error_official_at_5000"] = row["terminal_error_official"] * math.sqrt(len(real) / 5000) if "terminal_error_official" in row else math.nan
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- printing
def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return f"{value:.{digits}g}"


def pair(r: dict[str, Any], key: str) -> str:
    if f"{key}_mean" not in r:
        return "n/a"
    return f"{fmt(r[f'{key}_mean'])} ({fmt(r[f'{key}_final'])})"


def print_table(rows: list[dict[str, Any]], dataset: str) -> None:
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        return
    if all("skipped" in r for r in rows):
        print(f"\n{dataset}: skipped ({rows[0]['skipped'][:120]})")
        return
    first = next(r for r in rows if "skipped" not in r)
    print(
        f"\n{dataset} (shape {tuple(first['data_shape'])}, batch {first['batch']}, indicators on {first['validation_samples']} "
        f"samples): means over training (final value in brackets)"
    )
    official = any(k.endswith("_official_mean") for r in rows for k in r)
    cols = [("KE", "kinetic_energy"), ("HJ", "hj_residual"), ("terminal", "terminal_error")]
    if official:
        cols += [("KE off.", "kinetic_energy_official"), ("HJ off.", "hj_residual_official"), ("term. off.", "terminal_error_official")]
    print(f"{'setting':<9} {'finite':<6} {'steps':>5} " + " ".join(f"{c:>17}" for c, _ in cols) + f" {'W2':>7} {'floor':>6} {'W2/fl':>6} {'s':>5}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['setting']:<9} skipped: {r['skipped'][:120]}")
            continue
        print(
            f"{r['setting']:<9} {str(r['finite']):<6} {r['potential_steps']:>5} "
            + " ".join(f"{pair(r, key):>17}" for _, key in cols)
            + f" {fmt(r['w2']):>7} {fmt(r['w2_floor']):>6} {fmt(r['w2_ratio']):>6} {r['wall_seconds']:>5.0f}"
        )
        if not r["finite"] and r["error"]:
            print(f"          stopped: {r['error'][:200]}")
    if not official:
        print("  (this module logs no val/*_official indicators yet: only our conventions)")
    inactive = [r["setting"] for r in rows if r.get("max_gradient_penalty") == 0.0]
    if inactive:
        print(
            f"  the W1 penalty was never active in {', '.join(inactive)} (|grad phi| <= L at every step): "
            "those runs equal the runs without L"
        )


def print_official(rows: list[dict[str, Any]], refs: dict[str, dict[str, Any]], dataset: str) -> None:
    mine = {r["setting"]: r for r in rows if r["dataset"] == dataset and "skipped" not in r}
    have = {s: refs.get(f"{dataset}/{s}") for s in SETTINGS}
    if not mine or (dataset != "mnist" and not any(have.values())):
        return
    print(f"\n{dataset}: official convention, ours against the official run (mean over training / same iteration window)")
    print(
        f"{'setting':<9} {'ours steps':>10} {'ours KE off.':>13} {'ours HJ off.':>13} {'term.@5000':>11} {'ours NaN':>8} | "
        f"{'official its':>12} {'KE':>7} {'HJ':>7} {'term.':>7} {'NaN at':>7} | {'window KE':>9} {'HJ':>7} {'term.':>7}"
    )
    for s in SETTINGS:
        r, ref = mine.get(s), have[s]
        ours = (
            f"{r['potential_steps']:>10} {fmt(r.get('kinetic_energy_official_mean', math.nan)):>13} "
            f"{fmt(r.get('hj_residual_official_mean', math.nan)):>13} {fmt(r.get('terminal_error_official_at_5000_mean', math.nan)):>11} "
            f"{('no' if r['finite'] else 'yes'):>8}"
            if r else f"{'-':>10} {'':>13} {'':>13} {'':>11} {'':>8}"
        )
        if ref is not None:
            nan = "-" if ref["nan_from_iteration"] is None else str(ref["nan_from_iteration"])
            steps = r["potential_steps"] if r else 0
            w = official_window(ref, max(steps, 1))
            theirs = (
                f"{ref['iterations']:>12} {fmt(ref['kinetic_energy_mean']):>7} {fmt(ref['hj_residual_mean']):>7} "
                f"{fmt(ref['terminal_error_mean']):>7} {nan:>7} | {fmt(w['kinetic_energy_mean']):>9} {fmt(w['hj_residual_mean']):>7} "
                f"{fmt(w['terminal_error_mean']):>7}"
            )
        elif dataset == "mnist":
            ke, hj = PAPER_MNIST[s]
            theirs = f"{'(paper)':>12} {fmt(ke):>7} {fmt(hj):>7} {'':>7} {'':>7} |"
        else:
            theirs = f"{'(no official run)':>36}"
        print(f"{s:<9} {ours} | {theirs}")
    if dataset == "mnist":
        print(
            "  official KE / HJ / terminal: means over the evaluations at iterations 1..end (paper: W1+W2 12.2 / 0.43, "
            "W1 only 23.9 / 0.98, W2 only and neither NaN); window = official evaluations within our run's length; "
            "the official terminal figure is |grad phi - grad U|_F / N on N = 5,000 samples (it scales as 1/sqrt(N)): "
            "ours is rescaled by sqrt(N / 5000) to compare (term.@5000)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 2 min): 5 steps per toy run, 2 MNIST steps at batch 20")
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=list(DATASETS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps-toy", type=int, default=100, help="potential steps per 2-D / embedded run (official 25,000)")
    parser.add_argument("--steps-mnist", type=int, default=110, help="potential steps per MNIST run (official 5,000 / 200)")
    parser.add_argument("--batch-mnist", type=int, default=100, help="MNIST batch size (official 200)")
    parser.add_argument("--arch", default="official", choices=["official", "conv", "mlp"], help="MNIST networks")
    parser.add_argument("--val-batch-toy", type=int, default=2000, help="validation samples, 2-D / embedded (official 5,000)")
    parser.add_argument("--val-batch-mnist", type=int, default=200, help="validation samples, MNIST (official 5,000)")
    parser.add_argument("--validations", type=int, default=10, help="validations per run (evenly spaced, the first after 1/validations of the run)")
    parser.add_argument("--samples", type=int, default=1000, help="points for the exact W2 and its floor")
    parser.add_argument("--official-repo", type=Path, default=OFFICIAL_REPO, help="the official repository (for its result.pickle files)")
    parser.add_argument("--check-samples", type=int, default=1000, help="samples of the official-weights check (0: skip it)")
    parser.add_argument("--out", default=None, help="JSON file name in benchmarks/results/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if args.quick:
        args.steps_toy, args.steps_mnist, args.batch_mnist, args.samples = 5, 2, 20, 200
        args.val_batch_toy, args.val_batch_mnist, args.check_samples, args.validations = 500, 20, 0, 2
    args.out_tag = "" if args.out is None else Path(args.out).stem.replace("proximal_flow_ablation", "").strip("_")
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    repo = args.official_repo if args.official_repo and args.official_repo.exists() else None
    start = time.perf_counter()
    refs = {f"{d}/{s}": ref for d in args.datasets for s in SETTINGS if (ref := official_reference(repo, d, s)) is not None}
    name = args.out or ("proximal_flow_ablation_quick.json" if args.quick else "proximal_flow_ablation.json")
    out = RESULTS / name
    rows: list[dict[str, Any]] = []
    check: list[dict[str, Any]] = []

    def save() -> float:
        meta = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "torch": torch.__version__,
            "machine": platform.platform(),
            "official_repo_found": repo is not None,
            "total_wall_seconds": time.perf_counter() - start,
        }
        out.write_text(json.dumps({"meta": meta, "runs": rows, "official": refs, "official_weights_check": check}, indent=1))
        return meta["total_wall_seconds"]

    for dataset in args.datasets:
        steps = args.steps_mnist if dataset == "mnist" else args.steps_toy
        for setting in args.settings:
            print(f"[{time.perf_counter() - start:6.0f} s] {dataset}: {setting}, {steps} potential steps", flush=True)
            rows.append(run_one(dataset, setting, steps, args))
            save()  # after every run, so that an interrupted benchmark keeps what it measured
    if "mnist" in args.datasets and args.check_samples > 0 and repo is not None:
        check = official_weights_check(repo, args.check_samples, args.seed)
    for dataset in args.datasets:
        print_table(rows, dataset)
        print_official(rows, refs, dataset)
    if check:
        print(f"\nofficial trained MNIST weights in OfficialConvPotential / OfficialConvDiscriminator, our module's indicators on {check[0]['samples']} samples:")
        for c in check:
            theirs = c["official_final"]
            ours = ", ".join(f"{k} {fmt(c[k])}" for k in sorted(c) if k.endswith(("_official", "_at_5000")) or k in INDICATORS)
            print(f"  {c['setting']:<8} ours: {ours}")
            print(f"  {'':<8} official final (5,000 samples): " + ", ".join(f"{k} {fmt(v)}" for k, v in theirs.items()))
    print(f"\nwrote {out} ({save():.0f} s)")


if __name__ == "__main__":
    main()
