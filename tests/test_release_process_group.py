"""ReleaseSpawnedProcessGroup: a ``ddp_spawn`` worker's process group is destroyed at teardown
(Lightning leaves it to interpreter shutdown, where Gloo can abort the worker; see the callback's
module docstring), by our modules without being asked, and nothing is touched outside such a worker."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_wass import ReleaseSpawnedProcessGroup, TensorDataModule, WorstCaseGenerator
from lightning_wass.callbacks.release_process_group import release_spawned_process_group


def _record_group_state(module: pl.LightningModule, folder: str) -> None:
    """Write whether this rank's process group is still initialised (a module's ``teardown`` runs after every callback's)."""
    state = {"initialized": dist.is_initialized(), "world_size": module.trainer.world_size}
    Path(folder, f"rank{module.global_rank}.json").write_text(json.dumps(state))


class _UserModule(pl.LightningModule):
    """A module of the user's own (not ours): it gets the release only from the Trainer's callbacks."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def teardown(self, stage: str) -> None:
        _record_group_state(self, self.folder)


class _RecordingWorstCase(WorstCaseGenerator):
    def __init__(self, folder: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        _record_group_state(self, self.folder)


def _spawn_fit(module: pl.LightningModule, data, folder: Path, callbacks: list[pl.Callback]) -> list[dict]:
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
    )
    trainer.fit(module, data)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(32, 2)), batch_size=4)


@pytest.mark.ddp
def test_the_callback_destroys_each_spawned_workers_group_and_lightning_alone_does_not(tmp_path: Path) -> None:
    without, with_callback = tmp_path / "without", tmp_path / "with"
    without.mkdir(), with_callback.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        left = _spawn_fit(_UserModule(str(without)), _loader(), without, callbacks=[])
        released = _spawn_fit(_UserModule(str(with_callback)), _loader(), with_callback, callbacks=[ReleaseSpawnedProcessGroup()])
    finally:
        torch.set_num_threads(threads)
    assert [r["world_size"] for r in left + released] == [2, 2, 2, 2]
    assert [r["initialized"] for r in left] == [True, True]  # Lightning's spawn launcher leaves the group
    assert [r["initialized"] for r in released] == [False, False]


@pytest.mark.ddp
def test_our_modules_release_the_group_without_being_asked(tmp_path: Path) -> None:
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    dm = TensorDataModule(x, x.sum(1), val_fraction=0.0, test_fraction=0.0, batch_size=8, return_index=True)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    module = _RecordingWorstCase(str(tmp_path), model=model, gamma=0.3, transport_hidden=(8,), transport_batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = _spawn_fit(module, dm, tmp_path, callbacks=[])
    finally:
        torch.set_num_threads(threads)
    assert [r["initialized"] for r in records] == [False, False]
    assert sum(isinstance(c, ReleaseSpawnedProcessGroup) for c in module.configure_callbacks()) == 1


def test_outside_a_spawned_worker_the_group_is_left_alone(tmp_path: Path) -> None:
    """A one-process Trainer (no multiprocessing launcher) with a group the user initialised: untouched."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[ReleaseSpawnedProcessGroup()])
        trainer.fit(_UserModule(str(tmp_path)), _loader())
        assert dist.is_initialized()
        assert release_spawned_process_group(trainer) is False and dist.is_initialized()
    finally:
        dist.destroy_process_group()
