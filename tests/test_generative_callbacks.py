"""SampleFigure, WassersteinMonitor and the shared generative interface, on WGAN / W2GradientFlow / VAE."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import numpy as np
import ot
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib.image import imread

from lightning_wass import SampleFigure, TensorDataModule, ToyDataModule, W2GradientFlow, WassersteinMonitor
from lightning_wass.modules import VAE
from lightning_wass.callbacks.evaluation import GenerativeModel, draw_samples
from lightning_wass.nn.gan_nets import MLPGenerator


from trainers import quiet_trainer as _trainer  # noqa: E402  (tests/trainers.py)


def _flow(k: int = 3) -> W2GradientFlow:
    return W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[32]), data_shape=[2], persistent_steps=k, eval_samples=0)


def _reference_w(x: torch.Tensor, y: torch.Tensor, p: int) -> float:
    """Exact W_p straight from POT (independent of lightning_wass.ot)."""
    a, b = x.double().numpy(), y.double().numpy()
    cost = ot.dist(a, b, metric="sqeuclidean" if p == 2 else "euclidean")
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10**7)) ** (1 / p)


# ----------------------------------------------------------------------------- SampleFigure
def test_sample_figure_writes_scatter_pngs_and_tensorboard_images_on_generator_steps(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dm = ToyDataModule("8gaussians", train_size=512, val_size=300, batch_size=128)
    figure = SampleFigure(every_n_steps=6, num_samples=300, dirpath=str(tmp_path / "png"))
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    model = _flow(k=3)
    _trainer(max_epochs=1, logger=logger, callbacks=[figure]).fit(model, datamodule=dm)
    # generator_step goes 3, 6, 9, 12: figures when it crosses 6 and 12 (the end adds none: 12 is drawn).
    assert model.generator_step == 12
    assert [p.name for p in figure.paths] == ["samples_step0000006.png", "samples_step0000012.png"]
    image = imread(figure.paths[-1])
    assert image.shape[2] in (3, 4) and image.shape[0] > 200
    orange = (image[..., 0] > 0.9) & (image[..., 1] > 0.4) & (image[..., 1] < 0.6) & (image[..., 2] < 0.2)
    grey = (np.abs(image[..., 0] - 0.6) < 0.1) & (np.abs(image[..., 0] - image[..., 2]) < 0.02)
    # samples drawn over the held-out data (an early generator's samples overlap: 44 orange pixels
    # were seen on one run, so the bar is set below that)
    assert orange.sum() > 20 and grey.sum() > 50
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("samples")] == [6, 12]


def test_sample_figure_draws_an_image_grid_for_a_vae_counting_global_steps(tmp_path) -> None:
    # The VAE has sample(n) but no generator_step: the callback counts trainer.global_step.
    dm = TensorDataModule(torch.rand(96, 1, 8, 8), batch_size=32, val_fraction=0.0)
    figure = SampleFigure(every_n_steps=2, num_samples=16, dirpath=str(tmp_path))
    _trainer(max_steps=3, callbacks=[figure]).fit(VAE(data_shape=(1, 8, 8), latent_dim=2), datamodule=dm)
    assert [p.name for p in figure.paths] == ["samples_step0000002.png", "samples_step0000003.png"]
    grid = imread(figure.paths[0])
    assert grid.shape[:2] == (4 * (8 + 2) + 2, 4 * (8 + 2) + 2)  # make_grid: 4 x 4 images, padding 2


# ----------------------------------------------------------------------------- WassersteinMonitor
def test_wasserstein_monitor_matches_pot_and_logs_the_floor(tmp_path) -> None:
    dm = ToyDataModule("8gaussians", train_size=512, val_size=150, batch_size=128)
    monitor = WassersteinMonitor(every_n_steps=6, num_samples=100, p=[1, 2], seed=3)
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    model = _flow(k=3)
    trainer = _trainer(max_epochs=1, logger=logger, callbacks=[monitor])
    trainer.fit(model, datamodule=dm)
    assert [h["step"] for h in monitor.history] == [0, 6, 12]
    # Reference computation: the same 100 held-out points, five disjoint 100-point train subsets for
    # the floor (its mean), and the same sample draw, with POT called directly.
    reference = dm.tensors("val")[0][:100]
    train = dm.tensors("train")[0]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    subsets = [train[order[i * 100 : (i + 1) * 100]] for i in range(5)]
    samples = draw_samples(model, 100, seed=3)
    last = monitor.history[-1]
    for p in (1, 2):
        assert last[f"W{p}"] == pytest.approx(_reference_w(samples, reference, p), rel=1e-6)
        floor = sum(_reference_w(s, reference, p) for s in subsets) / 5
        assert last[f"W{p}_floor"] == pytest.approx(floor, rel=1e-6)
        assert last[f"W{p}_ratio"] == pytest.approx(last[f"W{p}"] / last[f"W{p}_floor"])
    assert monitor.history[0]["W2"] > last["W2"]  # it trained
    assert float(trainer.callback_metrics["wasserstein/W2"]) == pytest.approx(last["W2"])
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(monitor.history, monitor.history[1:]))
    logger.save()
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("wasserstein/W2")]
    assert [int(r["step"]) for r in rows] == [0, 6, 12]


def test_draw_samples_changes_neither_rng_nor_batchnorm_nor_mode() -> None:
    model = W2GradientFlow(data_shape=[1, 8, 8])  # DCGAN generator with BatchNorm
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    rng = torch.get_rng_state()
    first = draw_samples(model, 6, seed=1)
    second = draw_samples(model, 6, seed=1)
    assert torch.equal(first, second) and first.shape == (6, 1, 8, 8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert model.training and model.generator.training
    assert isinstance(model, GenerativeModel) and isinstance(VAE(), GenerativeModel)


def test_heldout_data_from_val_dataloaders_without_datamodule_tensors() -> None:
    class Loaders(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=16)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(torch.arange(40.0).reshape(20, 2), batch_size=8)

    monitor = WassersteinMonitor(every_n_steps=100, num_samples=10)
    _trainer(max_steps=2, limit_val_batches=None, num_sanity_val_steps=0, callbacks=[monitor]).fit(_flow(1), datamodule=Loaders())
    assert len(monitor.history) == 2 and "W2_floor" not in monitor.history[0]  # no train split to draw a floor from


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SampleFigure(every_n_steps=0), "every_n_steps"),
        (lambda: SampleFigure(split="holdout"), "split"),
        (lambda: WassersteinMonitor(p=3), "p must be one of"),
        (lambda: WassersteinMonitor(num_samples=1), "num_samples"),
        (lambda: WassersteinMonitor(split="train"), "split"),
    ],
)
def test_bad_callback_arguments(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_module_without_sample_and_missing_held_out_data_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="has no sample\\(n\\) method"):
        draw_samples(torch.nn.Linear(2, 2), 4)
    dm = TensorDataModule(torch.randn(64, 2), batch_size=32, val_fraction=0.0)  # an empty val split
    with pytest.raises(ValueError, match="no held-out data for split 'val'"):
        _trainer(max_steps=1, callbacks=[WassersteinMonitor()]).fit(_flow(1), datamodule=dm)


# ----------------------------------------------------------------------------- demo part
def test_demo_part_runs_quickly_and_writes_its_figures(tmp_path) -> None:
    from lightning_wass.demo import run_demo

    (section,) = run_demo(out=tmp_path, parts=["generative"], quick=True)
    assert section.figures and all(path.exists() for path in section.figures)
    text = "\n".join(section.summary) + section.report_markdown
    assert "WGAN-GP" in text and "W2-FE" in text and "floor" in text
    assert (tmp_path / "report.md").exists()


# ----------------------------------------------------------------------------- layout
def test_every_n_steps_acts_when_a_multiple_is_crossed_and_resumes_on_schedule() -> None:
    from types import SimpleNamespace

    from lightning_wass.callbacks.every_n_steps import EveryNSteps

    class Record(EveryNSteps):
        def __init__(self) -> None:
            super().__init__(every_n_steps=5)
            self.steps: list[int] = []

        def run_at(self, trainer, pl_module, step: int) -> None:
            self.last_step = step
            self.steps.append(step)

    trainer, module = SimpleNamespace(global_step=0), SimpleNamespace(generator_step=0)
    first = Record()
    first.on_train_start(trainer, module)
    for step in (3, 6, 9, 12):  # 3 generator steps a batch
        module.generator_step = step
        first.on_train_batch_end(trainer, module)
    first.on_train_end(trainer, module)
    assert first.steps == [6, 12]  # floor(6/5) = 1 and floor(12/5) = 2 are new; the end (12) is done already
    resumed = Record()
    resumed.load_state_dict(first.state_dict())
    resumed.on_train_start(trainer, module)
    for step in (15, 18):
        module.generator_step = step
        resumed.on_train_batch_end(trainer, module)
    resumed.on_train_end(trainer, module)
    assert resumed.steps == [15, 18]  # 15 crosses 3 x 5; 18 is the end of training


def test_callbacks_import_nothing_from_modules_and_no_private_names() -> None:
    import ast
    from pathlib import Path

    import lightning_wass

    root = Path(lightning_wass.__file__).parent
    files = sorted((root / "callbacks").glob("*.py")) + [root / "modules" / n for n in ("generative.py", "wgan.py", "w2_gradient_flow.py", "proximal_flow.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_wass"):
                if path.parent.name == "callbacks":
                    assert not node.module.startswith("lightning_wass.modules"), (path.name, node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)
