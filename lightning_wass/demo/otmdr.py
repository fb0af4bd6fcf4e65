"""Demo part "otmdr": SGD vs SAM vs OT-MDR on scikit-learn's 8x8 digits.

Trains the same small CNN (:class:`~lightning_wass.nn.ConvClassifier`, BatchNorm) three times with
:class:`~lightning_wass.OTMDRClassifier`, switching only ``method``: the base optimizer alone (SGD,
momentum 0.9), SAM and OT-MDR (official chain: two ascent steps on the batch halves, Langevin noise
1e-4, one particle). Each run is evaluated on the held-out test digits: accuracy, NLL, expected
calibration error and Brier score. One figure: the reliability diagrams of the three models and a
bar chart of the four metrics. The radii (SAM 0.2, OT-MDR (0.1, 0.1)) are the ones the quality
benchmark (``benchmarks/otmdr_quality.py``) picked on a validation split for this network.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_wass.datamodules import DigitsDataModule
from lightning_wass.demo.context import DemoContext, DemoSection
from lightning_wass.modules.otmdr_classifier import OTMDRClassifier
from lightning_wass.nn import ConvClassifier

EPOCHS = 20
QUICK_EPOCHS = 2
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("SGD", dict(method="base")),
    ("SAM", dict(method="sam", rho=0.2)),
    ("OT-MDR", dict(method="otmdr", rho=[0.1, 0.1], noise_std=1e-4, chunked_ascent=True)),
]
METRICS = (("acc", "accuracy"), ("nll", "NLL"), ("ece", "ECE"), ("brier", "Brier"))


def reliability(probs: torch.Tensor, y: torch.Tensor, bins: int = 10) -> tuple[list[float], list[float], list[int]]:
    """Per confidence bin: mean confidence, accuracy, count (the points of a reliability diagram)."""
    confidence, predicted = probs.max(1)
    edges = torch.linspace(0, 1, bins + 1)
    conf, acc, count = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        n = int(inside.sum())
        if n:
            conf.append(float(confidence[inside].mean()))
            acc.append(float((predicted[inside] == y[inside]).float().mean()))
            count.append(n)
    return conf, acc, count


def run(ctx: DemoContext) -> DemoSection:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one intra-op thread is fastest
    results: dict[str, dict[str, float]] = {}
    curves = {}
    try:
        for label, kwargs in METHODS:
            pl.seed_everything(ctx.seed, verbose=False)
            data = DigitsDataModule(batch_size=64, seed=ctx.seed)
            model = OTMDRClassifier(ConvClassifier(in_channels=1, num_classes=10, width=16), lr=0.05, weight_decay=5e-4,
                                    seed=ctx.seed, **kwargs)
            trainer = pl.Trainer(
                max_epochs=epochs,
                **ctx.trainer_kwargs(f"otmdr_{label.lower().replace('-', '')}", label=label, log_every_n_steps=10, enable_progress_bar=False),
            )
            start = time.perf_counter()
            trainer.fit(model, data)
            seconds = time.perf_counter() - start
            metrics = trainer.test(model, data, verbose=False)[0]
            x_test, y_test = data.tensors("test")
            assert y_test is not None
            model.eval()
            with torch.no_grad():
                probs = model(x_test)
            results[label] = {key: float(metrics[f"test/{key}"]) for key, _ in METRICS}
            results[label]["seconds"] = seconds
            curves[label] = reliability(probs, y_test)
            n_test, n_train = len(y_test), data.train_size
    finally:
        torch.set_num_threads(threads)

    # ------------------------------------------------------------- figure
    path = ctx.figure_dir / "otmdr_calibration.png"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for (label, (conf, acc, count)), marker in zip(curves.items(), "osD"):
        line = left.plot(conf, acc, linewidth=0.8, alpha=0.6)[0]
        left.scatter(conf, acc, s=[8 + 400 * c / n_test for c in count], marker=marker, color=line.get_color(), label=label)
    left.set_xlabel("confidence (max predicted probability)")
    left.set_ylabel("accuracy in the bin")
    left.set_title(f"reliability on {n_test} test digits (10 bins; marker area ~ digits in the bin)", fontsize=9)
    left.legend(fontsize=8)
    width = 0.25
    names = ["error (1 - acc)", "NLL", "ECE", "Brier"]
    for j, label in enumerate(results):
        r = results[label]
        values = [1 - r["acc"], r["nll"], r["ece"], r["brier"]]
        bars = right.bar([i + (j - 1) * width for i in range(len(names))], values, width=width, label=label)
        right.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    right.set_xticks(range(len(names)), names)
    right.set_title("test metrics (all: lower is better)", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    rows = "\n".join(
        f"| {label} | {r['acc']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | {r['brier']:.4f} | {r['seconds']:.1f} |"
        for label, r in results.items()
    )
    report = f"""
The same CNN (`ConvClassifier`, width 16, BatchNorm) trained on the {n_train} training digits of
scikit-learn's 8x8 set for {epochs} epoch(s) with `OTMDRClassifier(method=...)`: SGD (lr 0.05,
momentum 0.9, weight decay 5e-4, cosine), SAM (rho 0.2) and OT-MDR (rho (0.1, 0.1), two chained
ascent steps on the batch halves, noise 1e-4, one particle), all on the same base optimizer. Measured
on the {n_test} held-out test digits, one seed (see `docs/otmdr.md` for the 3-seed benchmark):

| method | accuracy | NLL | ECE | Brier | train time (s) |
|---|---|---|---|---|---|
{rows}

SAM and OT-MDR cost about two forward-backward passes per step (OT-MDR: half batch, half batch,
whole batch). TensorBoard (`tensorboard/otmdr_*`) holds the training curves.
"""
    summary = [
        f"{label:7s} acc {r['acc']:.4f}  NLL {r['nll']:.4f}  ECE {r['ece']:.4f}  Brier {r['brier']:.4f}  ({r['seconds']:.1f} s)"
        for label, r in results.items()
    ]
    return DemoSection(title="OT-MDR vs SAM vs SGD on scikit-learn digits", summary=summary, report_markdown=report, figures=[path])
