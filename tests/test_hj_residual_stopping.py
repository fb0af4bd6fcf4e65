"""HJResidualStopping: patience, the optional terminal criterion, missing metrics, checkpointed
state, and the same decision on every DDP rank (on a scripted module whose indicators follow a
given schedule, so the expected stopping epoch is known exactly)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import HJResidualStopping, ReleaseSpawnedProcessGroup
from lightning_wass.callbacks import HJResidualStopping as FromCallbacks

BIG, SMALL = 0.5, 0.01


class Scripted(pl.LightningModule):
    """Logs ``val/hj_residual_relative = hj[rank][v]`` and ``val/terminal_error_relative = terminal[v]``
    at the v-th validation (one per epoch)."""

    def __init__(self, hj: list[list[float]], terminal: list[float] | None = None, sync: bool = True) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.hj, self.terminal, self.sync = hj, terminal, sync
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        v = min(self.validations, len(self.hj[0]) - 1)
        rank = self.global_rank if len(self.hj) > 1 else 0
        self.log("val/hj_residual_relative", float(self.hj[rank][v]), sync_dist=self.sync)
        if self.terminal is not None:
            self.log("val/terminal_error_relative", float(self.terminal[v]), sync_dist=self.sync)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=4)

    def val_dataloader(self):
        return self.train_dataloader()


def fit(module: pl.LightningModule, callback: HJResidualStopping, max_epochs: int = 12, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
        **kwargs,
    )
    trainer.fit(module)
    return trainer


def test_exported() -> None:
    assert HJResidualStopping is FromCallbacks


def test_stops_after_patience_consecutive_validations_below_tol() -> None:
    schedule = [BIG, SMALL, BIG, SMALL, SMALL, SMALL, SMALL, SMALL]  # the run of 3 ends at validation 5
    callback = HJResidualStopping(tol=0.1, patience=3, verbose=False)
    trainer = fit(Scripted([schedule]), callback)
    assert callback.stopped_epoch == 5 and trainer.current_epoch == 6
    assert callback.stopped_step == 6 == trainer.global_step  # one training step per epoch
    assert callback.last == {"val/hj_residual_relative": pytest.approx(SMALL)}


def test_never_stops_while_above_tol() -> None:
    callback = HJResidualStopping(tol=0.1, patience=1, verbose=False)
    trainer = fit(Scripted([[BIG] * 5]), callback, max_epochs=5)
    assert callback.stopped_step == -1 and trainer.current_epoch == 5 and callback.wait_count == 0


def test_terminal_error_must_also_be_below_its_tolerance() -> None:
    hj = [[SMALL] * 8]
    terminal = [BIG, BIG, BIG, SMALL, SMALL, SMALL, SMALL, SMALL]
    callback = HJResidualStopping(tol=0.1, patience=2, terminal_tol=0.2, verbose=False)
    fit(Scripted(hj, terminal), callback)
    assert callback.stopped_epoch == 4
    # without terminal_tol the HJ residual alone stops at the second validation
    alone = HJResidualStopping(tol=0.1, patience=2, verbose=False)
    fit(Scripted(hj, terminal), alone)
    assert alone.stopped_epoch == 1


def test_missing_metric() -> None:
    with pytest.raises(RuntimeError, match="'val/terminal_error_relative', which was not logged"):
        fit(Scripted([[SMALL] * 4]), HJResidualStopping(terminal_tol=0.1, verbose=False), max_epochs=2)
    lenient = HJResidualStopping(monitor="val/hj_residual", strict=False, verbose=False)
    fit(Scripted([[SMALL] * 4]), lenient, max_epochs=3)
    assert lenient.stopped_step == -1 and lenient.wait_count == 0


def test_non_finite_values_never_count_as_converged() -> None:
    callback = HJResidualStopping(tol=0.1, patience=1, verbose=False)
    fit(Scripted([[float("nan")] * 3]), callback, max_epochs=3)
    assert callback.stopped_step == -1


def test_wait_count_is_checkpointed_and_resumed(tmp_path: Path) -> None:
    schedule = [BIG, SMALL, SMALL, SMALL, SMALL, SMALL]
    straight = HJResidualStopping(tol=0.1, patience=4, verbose=False)
    fit(Scripted([schedule]), straight)
    assert straight.stopped_epoch == 4

    first = HJResidualStopping(tol=0.1, patience=4, verbose=False)
    trainer = fit(Scripted([schedule]), first, max_epochs=3)  # validations 0, 1, 2: wait 2
    assert first.wait_count == 2
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["callbacks"]
    assert state[first.state_key]["wait_count"] == 2

    resumed = HJResidualStopping(tol=0.1, patience=4, verbose=False)
    module = Scripted([schedule])
    module.validations = 3
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[resumed],
    )
    trainer.fit(module, ckpt_path=str(path))
    assert resumed.stopped_epoch == straight.stopped_epoch == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tol": 0.0}, ValueError, "tol must be a finite number > 0"),
        ({"tol": "small"}, TypeError, "tol must be a number"),
        ({"patience": 0}, ValueError, "patience must be >= 1"),
        ({"terminal_tol": -1.0}, ValueError, "terminal_tol must be a finite number > 0"),
        ({"monitor": ""}, ValueError, "monitor must be a non-empty metric name"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        HJResidualStopping(**kwargs)


# ----------------------------------------------------------------------------- DDP
class RecordStop(pl.Callback):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stopping = next(c for c in trainer.callbacks if isinstance(c, HJResidualStopping))
        record = {"epoch": trainer.current_epoch, "stopped_epoch": stopping.stopped_epoch, "step": trainer.global_step}
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.ddp
def test_ranks_that_disagree_stop_together_once_all_agree(tmp_path: Path) -> None:
    # Rank-local (unsynced) values: rank 0 is below tol from validation 1 on, rank 1 from
    # validation 3 on. With patience 2 both must stop after validation 4, the second validation
    # at which every rank agrees; a rank that stopped alone would leave the other hanging.
    hj = [[BIG, SMALL, SMALL, SMALL, SMALL, SMALL, SMALL], [BIG, BIG, BIG, SMALL, SMALL, SMALL, SMALL]]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[HJResidualStopping(tol=0.1, patience=2, verbose=False), RecordStop(str(tmp_path)), ReleaseSpawnedProcessGroup()],
    )
    trainer.fit(Scripted(hj, sync=False))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["stopped_epoch"] == 4


class ScriptedOfficial(pl.LightningModule):
    """Logs the official-convention pair (small from the third validation) and ours (always big)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        value = BIG if self.validations < 2 else SMALL
        self.log("val/hj_residual_official", value)
        self.log("val/terminal_error_official", value)
        self.log("val/hj_residual_relative", BIG)
        self.log("val/terminal_error_relative", BIG)

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=4)

    def val_dataloader(self):
        return self.train_dataloader()


def test_official_monitors_the_official_convention_indicators() -> None:
    callback = HJResidualStopping(tol=0.1, patience=2, terminal_tol=0.1, official=True, verbose=False)
    assert (callback.monitor, callback.terminal_monitor) == ("val/hj_residual_official", "val/terminal_error_official")
    fit(ScriptedOfficial(), callback)
    assert callback.stopped_epoch == 3
    assert set(callback.last) == {"val/hj_residual_official", "val/terminal_error_official"}
    # the default (ours, relative) never stops on the same run; an explicit monitor wins over official
    ours = HJResidualStopping(tol=0.1, patience=2, verbose=False)
    fit(ScriptedOfficial(), ours, max_epochs=6)
    assert ours.stopped_step == -1
    explicit = HJResidualStopping(monitor="val/hj_residual_relative", official=True)
    assert explicit.monitor == "val/hj_residual_relative" and explicit.terminal_monitor == "val/terminal_error_official"
