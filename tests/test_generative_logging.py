"""What the generative modules log when (modules.generative, "What is logged when"): the ``train/*``
figures reach ``self.log`` on Lightning's log steps, the last batch of an epoch / of ``max_steps``
and the batch that first computes a figure; the loggers get what they got when every batch logged;
callbacks that monitor the figures work. And the zero-gradient term: skipped on a single device
without changing the updates."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from lightning_wass import TensorDataModule, W1W2ProximalFlow, W2GradientFlow, WGAN
from lightning_wass.nn.gan_nets import MLPCritic, MLPGenerator
from lightning_wass.nn.potentials import MLPDiscriminator, PotentialMLP
from trainers import quiet_trainer  # noqa: E402  (tests/trainers.py)

BATCHES = 11  # one epoch of 11 batches: log steps 4 and 8 (log_every_n_steps=4), last batch 11


def _data() -> TensorDataModule:
    x = torch.tensor([2.0, 1.0]) + 0.5 * torch.randn(BATCHES * 32, 2, generator=torch.Generator().manual_seed(1))
    return TensorDataModule(x, batch_size=32, val_fraction=0.0, test_fraction=0.0)


def _build(name: str) -> pl.LightningModule:
    torch.manual_seed(0)
    if name == "wgan":
        return WGAN(generator=MLPGenerator(2, [2], hidden=[16]), critic=MLPCritic([2], hidden=[16]), n_critic=3, eval_samples=0)
    if name == "w2":
        return W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[16]), data_shape=[2], persistent_steps=2, eval_samples=0)
    return W1W2ProximalFlow((2,), potential=PotentialMLP(2, (16, 16)), discriminator=MLPDiscriminator(2, (16, 16)), num_steps=3, n_critic=3)


class _Metrics(pl.Callback):
    """``trainer.callback_metrics`` (as floats) after every training batch."""

    def __init__(self) -> None:
        self.after: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.after.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


class _Memory(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.setdefault(int(step or 0), {}).update({k: float(v) for k, v in metrics.items() if k.startswith("train/")})


def _fit(name: str, every: int) -> tuple[list[dict[str, float]], dict[int, dict[str, float]]]:
    seen, memory = _Metrics(), _Memory()
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=every, logger=memory, callbacks=[seen])
    trainer.fit(_build(name), _data())
    assert len(seen.after) == BATCHES
    return seen.after, memory.rows


@pytest.mark.parametrize("name", ["wgan", "w2", "proximal"])
def test_figures_reach_callback_metrics_on_log_steps_new_figures_and_the_last_batch(name: str) -> None:
    # Reference: the same run (same seeds, so the same updates) logging on every batch.
    every_batch, _ = _fit(name, every=1)
    sparse, _ = _fit(name, every=4)
    first_seen = {key: min(b for b, row in enumerate(every_batch) if key in row) for key in every_batch[-1]}
    for b, row in enumerate(sparse):  # b: 0-based batch; batch b + 1 is a log step when (b + 1) % 4 == 0
        assert set(row) == set(every_batch[b])  # every figure is there from the batch that first computes it
        logged = (b + 1) % 4 == 0 or b == BATCHES - 1 or b in first_seen.values()
        if logged:
            assert row == every_batch[b]
        else:  # the values of the previous batch, unchanged
            assert row == sparse[b - 1] and row != every_batch[b]


@pytest.mark.parametrize("name", ["wgan", "proximal"])
def test_loggers_receive_what_they_received_when_every_batch_logged(name: str) -> None:
    # Reference: log_every_n_steps=1 sends every batch's figures; log_every_n_steps=4 must send, at
    # its log steps, the newest value of every figure (what Lightning sent before: a figure a batch
    # does not compute keeps its last value), i.e. the reference's row at the same step.
    _, every_batch = _fit(name, every=1)
    _, sparse = _fit(name, every=4)
    assert sparse and all(step in every_batch for step in sparse)
    for step, row in sparse.items():
        expected = {}
        for earlier in sorted(s for s in every_batch if s <= step):
            expected.update(every_batch[earlier])
        assert row == expected


class _Forced(W1W2ProximalFlow):
    def reduces_gradients(self) -> bool:  # as under DDP: the zero-gradient term is added
        return True


class _ForcedWGAN(WGAN):
    def reduces_gradients(self) -> bool:
        return True


@pytest.mark.parametrize("name", ["wgan", "proximal"])
def test_single_device_run_without_the_zero_gradient_term_makes_the_same_updates(name: str) -> None:
    def run(forced: bool) -> dict[str, torch.Tensor]:
        module = _build(name)
        if forced:
            module.__class__ = _ForcedWGAN if name == "wgan" else _Forced
        quiet_trainer(max_epochs=1, log_every_n_steps=1).fit(module, _data())
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    plain, forced = run(False), run(True)
    assert plain.keys() == forced.keys()
    for key in plain:
        torch.testing.assert_close(plain[key], forced[key], rtol=0, atol=0, msg=key)


def test_callbacks_monitoring_training_figures_still_work(tmp_path) -> None:
    # ModelCheckpoint(monitor=...) every few steps and EarlyStopping at epoch end on train/* figures
    # of the proximal flow, with the default log_every_n_steps=50 (more than the 11 batches).
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="train/kinetic_energy", mode="min", every_n_train_steps=4, save_top_k=1)
    stopping = EarlyStopping(monitor="train/potential_loss", check_on_train_epoch_end=True, patience=100, strict=True)
    seen = _Metrics()
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint, stopping, seen], default_root_dir=tmp_path)
    trainer.fit(_build("proximal"), _data())
    assert checkpoint.best_model_path and checkpoint.best_model_score is not None
    kinetic = [row["train/kinetic_energy"] for row in seen.after if "train/kinetic_energy" in row]
    assert float(checkpoint.best_model_score) in kinetic
    # at each epoch's end EarlyStopping read the potential loss of that epoch's last batch
    assert float(stopping.best_score) in {seen.after[BATCHES - 1]["train/potential_loss"], seen.after[-1]["train/potential_loss"]}
