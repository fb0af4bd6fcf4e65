"""Demo part "worst_case": Wasserstein-DRO worst-case generation (arXiv 2512.08176).

Two runs of :class:`~lightning_wass.WorstCaseGenerator`:

1. the paper's 2-D regression (``n = 200`` points ``(x, y)``, a linear model, squared loss) with the
   paper's step sizes, stopped by :class:`~lightning_wass.callbacks.GradientNormStopping` at
   ``tol = 1e-5``; the GDA fixed point is compared with the closed form
   (:func:`lightning_wass.functional.worst_case.robust_linear_regression`), and the target-conditioned transport map
   with the exact worst case of held-out points;
2. scikit-learn's 8x8 digits in an 8-d VAE latent space: a classifier on the latents trained on clean
   codes (warm-up), then the min-max; decoded interpolations ``z -> T(z)`` of test digits with the
   classifier's labels at both ends, and its accuracy on clean vs transported test points.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_wass.callbacks.gradient_norm_stopping import GradientNormStopping
from lightning_wass.checkpoints import CheckpointError
from lightning_wass.datamodules import DigitsDataModule, LatentDataModule, ToyDataModule
from lightning_wass.demo.context import DemoContext, DemoSection
from lightning_wass.modules.vae import VAE
from lightning_wass.modules.worst_case import WorstCaseGenerator
from lightning_wass.nn.mlp import MLP
from lightning_wass.functional.worst_case import linear_regression_worst_case, robust_linear_regression

REGRESSION_GAMMA = 0.3
DIGITS_GAMMA = 8.0
LATENT_DIM = 8


def run(ctx: DemoContext) -> DemoSection:
    import matplotlib

    matplotlib.use("Agg")
    # tiny networks: one intra-op thread is several times faster than two
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        regression = _regression(ctx)
        digits = _digits(ctx)
    finally:
        torch.set_num_threads(threads)
    summary = [
        f"2-D regression: GN_theta={regression['gn_theta']:.1e}, GN_T={regression['gn_T']:.1e} < 1e-5 after "
        f"{regression['iterations']} iterations ({regression['seconds']:.1f} s)" if regression["stopped"] else
        f"2-D regression: {regression['iterations']} iterations, GN_theta={regression['gn_theta']:.1e}, GN_T={regression['gn_T']:.1e}",
        f"  vs closed form: max |theta - theta*| = {regression['theta_error']:.1e}, max |v - v*| = {regression['particle_error']:.1e}; "
        f"T on held-out points: error {regression['map_error']:.3f} vs displacement {regression['displacement']:.3f}",
        f"digits latents: classifier accuracy clean {digits['acc_clean']:.1%} -> on transported test points "
        f"{digits['acc_transported']:.1%} (clean-trained classifier: {digits['acc_warmup']:.1%} clean)",
        f"  {digits['iterations']} GDA iterations in {digits['seconds']:.1f} s; mean latent transport {digits['distance']:.2f}",
    ]
    # the same condition as the summary: say that GradientNormStopping stopped the GDA only when it did
    stop_sentence = (
        "`GradientNormStopping(tol=1e-5)` stopped the GDA"
        if regression["stopped"]
        else "`GradientNormStopping(tol=1e-5)` did not stop the GDA (max_steps reached first): it ended"
    )
    report = f"""
**2-D regression** (`ToyDataModule("regression")`: n = {regression['n']} points, `y = x + 0.5 + noise`),
linear model, squared loss, gamma = {REGRESSION_GAMMA}, the paper's step sizes (eta = tau = 0.01,
momentum 0.7), full batch. {stop_sentence} after
{regression['iterations']} iterations ({regression['seconds']:.1f} s) with GN_theta = {regression['gn_theta']:.2e} and
GN_T = {regression['gn_T']:.2e}. Against the closed-form saddle point (DESIGN.md 3.1): max |theta - theta*| =
{regression['theta_error']:.1e}, max |v_i - v_i*| = {regression['particle_error']:.1e}. The transport map
`T(x, y) = x + R(x, y)`, trained alongside by the matching loss, maps the {regression['n_test']} held-out points to
within {regression['map_error']:.3f} (mean) of their exact worst case, whose mean displacement is
{regression['displacement']:.3f}.

**Digits in a VAE latent space**: {digits['n']} training digits embedded by an {LATENT_DIM}-d VAE; an MLP
classifier on the latents first trains on clean codes for {digits['warmup']} iterations
(test accuracy {digits['acc_warmup']:.1%}), then the min-max GDA runs with gamma = {DIGITS_GAMMA:g} for
{digits['iterations'] - digits['warmup']} iterations and a label-conditioned transport map
({digits['seconds']:.1f} s in all). On the {digits['n_test']} test digits:

| classifier | clean test latents | transported test latents T(z, y) |
|---|---|---|
| after the min-max | {digits['acc_clean']:.1%} | {digits['acc_transported']:.1%} |

Training particles (the worst case itself): accuracy {digits['acc_particles']:.1%}; mean latent
transport distance {digits['distance']:.2f} (the latents have per-coordinate std {digits['latent_std']:.2f}).
The grid shows decoded interpolations `z -> T(z)` of test digits with the predicted label at both ends.
"""
    return DemoSection(
        title="Worst-case generation for Wasserstein DRO",
        summary=summary,
        report_markdown=report,
        figures=regression["figures"] + digits["figures"],
    )


# ----------------------------------------------------------------------------- 2-D regression
def _regression(ctx: DemoContext) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    pl.seed_everything(ctx.seed, verbose=False)
    data = ToyDataModule("regression", batch_size=500, seed=ctx.seed, return_index=True)
    module = WorstCaseGenerator(
        nn.Linear(1, 1),
        gamma=REGRESSION_GAMMA,
        transport_conditional=True,
        transport_hidden=(64, 64),
        transport_lr=3e-3,
        transport_batch_size=200,
        gradient_norm_every=10,
    )
    stopping = GradientNormStopping(tol=1e-5)
    max_steps = 40 if ctx.quick else 4000
    trainer = pl.Trainer(max_steps=max_steps, limit_val_batches=0, **ctx.trainer_kwargs("worst_case_regression", label="regression", callbacks=[stopping], log_every_n_steps=10, enable_progress_bar=False))
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start

    x, y = (t.double() for t in data.tensors("train"))
    w_star, b_star = robust_linear_regression(x, y, REGRESSION_GAMMA)
    v_star = linear_regression_worst_case(x, y, w_star, b_star, REGRESSION_GAMMA)
    particles = module.particles
    theta = torch.cat([module.model.weight.detach().flatten(), module.model.bias.detach()]).double()
    theta_error = float((theta - torch.cat([w_star, b_star.reshape(1)])).abs().max())
    particle_error = float((particles.samples.double() - v_star).abs().max())
    x_test, y_test = data.tensors("test")
    w, b = module.model.weight.detach().flatten(), module.model.bias.detach()[0]
    test_star = linear_regression_worst_case(x_test.double(), y_test.double(), w.double(), b.double(), REGRESSION_GAMMA)
    mapped = module.transport(x_test, y_test).double()
    map_error = float((mapped - test_star).norm(dim=1).mean())
    displacement = float((test_star - x_test.double()).norm(dim=1).mean())

    figures = [ctx.figure_dir / "worst_case_regression.png", ctx.figure_dir / "worst_case_gradient_norms.png"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs, vs, ys = particles.origins[:, 0], particles.samples[:, 0], particles.targets
    ax.scatter(xs, ys, s=10, c="tab:blue", label="data (x_i, y_i)")
    ax.scatter(vs, ys, s=10, c="tab:red", label="worst-case particles (v_i, y_i)")
    ax.quiver(xs, ys, vs - xs, torch.zeros_like(ys), angles="xy", scale_units="xy", scale=1, width=0.002, color="0.4")
    ax.scatter(mapped[:, 0], y_test, s=18, marker="x", c="tab:green", label="T(x, y) on held-out points")
    grid = torch.linspace(float(xs.min()) - 0.3, float(xs.max()) + 0.3, 50)
    ax.plot(grid, w[0] * grid + b, c="k", lw=1, label=f"robust fit y = {float(w[0]):.3f} x + {float(b):.3f}")
    ax.set_xlabel("x (the feature the worst case moves)")
    ax.set_ylabel("y")
    ax.set_title(f"2-D regression, gamma = {REGRESSION_GAMMA}: data, worst case and transport arrows", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(figures[0], dpi=110)
    plt.close(fig)

    history = module.gradient_norm_history
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    its = [h["iteration"] for h in history]
    ax.semilogy(its, [h["gn_theta"] for h in history], label="GN_theta")
    ax.semilogy(its, [h["gn_T"] for h in history], label="GN_T")
    ax.axhline(1e-5, color="k", ls="--", lw=0.8, label="tol 1e-5")
    ax.set_xlabel("GDA iteration")
    ax.set_ylabel("gradient norm over all particles")
    ax.set_title("2-D regression: optimality of the GDA iterate", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figures[1], dpi=110)
    plt.close(fig)
    return {
        "n": len(x), "n_test": len(x_test), "iterations": module.iteration, "seconds": seconds,
        "stopped": stopping.stopped_iteration is not None, **module.gradient_norms,
        "theta_error": theta_error, "particle_error": particle_error, "map_error": map_error,
        "displacement": displacement, "figures": figures,
    }


# ----------------------------------------------------------------------------- digits latents
class _AccuracyAt(Callback):
    """Test accuracy of the module's model on clean latents when the iteration reaches ``at``."""

    def __init__(self, at: int, z: Tensor, y: Tensor) -> None:
        self.at, self.z, self.y = at, z, y
        self.accuracy: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.iteration == self.at:
            with torch.no_grad():
                self.accuracy = float((pl_module.model(self.z.to(pl_module.device)).argmax(1).cpu() == self.y).float().mean())


def _vae(ctx: DemoContext, images: DigitsDataModule) -> VAE:
    """The digits VAE of the "vae" demo part when it ran before, else (or if its file is damaged) a fresh one."""
    from lightning_wass.demo.vae import checkpoint_path

    path = checkpoint_path(ctx)
    if path.is_file():
        try:  # checked first (VAE.load_from_checkpoint): a damaged file is a CheckpointError naming it
            return VAE.load_from_checkpoint(str(path), map_location="cpu")
        except CheckpointError as error:
            warnings.warn(f"{error}; training a fresh VAE for the worst-case demo instead", UserWarning, stacklevel=2)
    vae = VAE(data_shape=(1, 8, 8), latent_dim=LATENT_DIM, likelihood="gaussian")
    epochs = 1 if ctx.quick else 25
    pl.Trainer(max_epochs=epochs, limit_val_batches=0, **ctx.trainer_kwargs("worst_case_vae", label="digits VAE", enable_progress_bar=False)).fit(vae, images)
    return vae


def _digits(ctx: DemoContext) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    pl.seed_everything(ctx.seed, verbose=False)
    start = time.perf_counter()
    images = DigitsDataModule(batch_size=64, seed=ctx.seed)
    vae = _vae(ctx, images)
    latents = LatentDataModule(images, vae, cache_dir=str(Path(ctx.out_dir) / "latent_cache"), batch_size=500, return_index=True)
    latents.setup("fit")
    z_test, y_test = latents.tensors("test")
    assert y_test is not None
    warmup, steps = (10, 30) if ctx.quick else (400, 1600)
    module = WorstCaseGenerator(
        MLP(LATENT_DIM, 10, hidden=(64, 64)),
        loss="cross_entropy",
        gamma=DIGITS_GAMMA,
        model_lr=0.05,
        particle_lr=0.05,
        model_warmup_steps=warmup,
        transport_conditional=True,
        transport_hidden=(128, 128),
        transport_lr=1e-3,
        gradient_norm_every=100,
    )
    snapshot = _AccuracyAt(warmup, z_test, y_test)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, **ctx.trainer_kwargs("worst_case_digits", label="digits", callbacks=[snapshot], log_every_n_steps=20, enable_progress_bar=False))
    trainer.fit(module, latents)
    seconds = time.perf_counter() - start

    classifier = module.model.eval()
    moved = module.transport(z_test, y_test)
    particles = module.particles
    with torch.no_grad():
        pred_clean, pred_moved = classifier(z_test).argmax(1), classifier(moved).argmax(1)
        acc_particles = float((classifier(particles.samples).argmax(1) == particles.targets).float().mean())

    # decoded interpolations z -> T(z) for one test digit of each class
    rows = [int(torch.nonzero(y_test == c)[0]) for c in range(10) if bool((y_test == c).any())]
    ts = torch.linspace(0, 1, 7)
    path = torch.stack([z_test[rows] + t * (moved[rows] - z_test[rows]) for t in ts], dim=1)  # (rows, 7, d)
    decoded = latents.decode(path.reshape(-1, LATENT_DIM)).reshape(len(rows), len(ts), 8, 8)
    figure = ctx.figure_dir / "worst_case_digits_interpolation.png"
    fig, axes = plt.subplots(len(rows), len(ts), figsize=(len(ts) * 0.9, len(rows) * 0.95))
    for r, i in enumerate(rows):
        for c in range(len(ts)):
            ax = axes[r, c]
            ax.imshow(decoded[r, c].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"y={int(y_test[i])}", fontsize=7)
                ax.set_title(f"pred {int(pred_clean[i])}", fontsize=7)
            elif c == len(ts) - 1:
                ax.set_title(f"pred {int(pred_moved[i])}", fontsize=7, color="tab:red" if pred_moved[i] != y_test[i] else "k")
    fig.suptitle(f"test digits z (left) -> worst case T(z, y) (right), gamma = {DIGITS_GAMMA:g}", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.35)
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    z_train = latents.tensors("train")[0]
    return {
        "n": len(z_train), "n_test": len(z_test), "warmup": warmup, "iterations": module.iteration, "seconds": seconds,
        "acc_warmup": snapshot.accuracy if snapshot.accuracy is not None else float("nan"),
        "acc_clean": float((pred_clean == y_test).float().mean()),
        "acc_transported": float((pred_moved == y_test).float().mean()),
        "acc_particles": acc_particles,
        "distance": float((particles.samples - particles.origins).norm(dim=1).mean()),
        "latent_std": float(z_train.std(0).mean()),
        "figures": [figure],
    }
