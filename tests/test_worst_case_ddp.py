"""DDP: 2 processes x batch b give the same particles and model as 1 process x batch 2b, also when
the world size does not divide the data set (the padding row is dropped: no particle is updated
twice an epoch), and GradientNormStopping stops both processes at the same iteration."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_wass import GradientNormStopping, TensorDataModule, WorstCaseGenerator


def _run(
    devices: int, batch_size: int, root: Path, n: int = 64, max_steps: int = 20, stop: bool = True, iterations_per_step: int = 1
) -> tuple[WorstCaseGenerator, GradientNormStopping]:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([0.5, -0.3, 0.2]) + 0.1 * torch.randn(n, generator=g)
    dm = TensorDataModule(x, y, x_test=x[:8], y_test=y[:8], val_fraction=0.0, batch_size=batch_size, return_index=True)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    module = WorstCaseGenerator(
        model, gamma=0.3, model_lr=0.05, particle_lr=0.05, transport_hidden=(16,), transport_lr=1e-2, transport_batch_size=10, gradient_norm_every=3,
        iterations_per_step=iterations_per_step,
    )
    stopping = GradientNormStopping(tol=1e3, patience=2)  # the reduced decision stops every rank at iteration 6
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        precision="64-true",
        max_steps=max_steps,  # n = 64: 2 iterations per epoch
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=[stopping] * stop + [ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    trainer.fit(module, dm)
    return module, stopping


@pytest.mark.ddp
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, stopping = _run(1, 32, tmp_path / "one")
        double, _ = _run(2, 16, tmp_path / "two")
    finally:
        torch.set_num_threads(threads)
    # the checkpoint written by the 2-process run holds every particle, the model and the map (float64)
    state = torch.load(tmp_path / "two" / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    table = state["particle_table._extra_state"]
    assert table["samples"].shape == (64, 3)
    torch.testing.assert_close(table["samples"], single.particle_table.samples, rtol=0, atol=1e-10)
    torch.testing.assert_close(table["momentum"], single.particle_table.momentum, rtol=0, atol=1e-10)
    reference = single.state_dict()
    weights = [k for k in reference if not k.endswith("_extra_state")]
    assert any(k.startswith("transport_map.") for k in weights) and any(k.startswith("model.") for k in weights)
    for key in weights:
        torch.testing.assert_close(state[key], reference[key], rtol=0, atol=1e-10)
    assert (single.particle_table.samples - single.particle_table.origins).abs().max() > 1e-3
    # ddp_spawn hands rank 0's state back to this process (its parameters stay float32 here)
    torch.testing.assert_close(double.particle_table.samples, single.particle_table.samples, rtol=0, atol=1e-10)
    back = double.state_dict()
    for key in weights:
        torch.testing.assert_close(back[key].double(), reference[key], rtol=0, atol=1e-6)
    # both stopped at the second evaluation (a rank that did not stop would hang the other)
    assert stopping.stopped_iteration == 6 and double.iteration == single.iteration == 6
    assert [h["iteration"] for h in double.gradient_norm_history] == [3.0, 6.0]
    for h, k in zip(double.gradient_norm_history, single.gradient_norm_history):
        assert h["gn_T"] == pytest.approx(k["gn_T"], rel=1e-9) and h["gn_theta"] == pytest.approx(k["gn_theta"], rel=1e-9)


@pytest.mark.ddp
def test_a_data_set_size_not_divisible_by_the_world_size_updates_each_particle_once(tmp_path: Path) -> None:
    """n = 201 on 2 processes: each rank gets 101 rows an epoch, one of them a padding copy of a
    real point. Dropped, the run equals one process over the same global batches (2 epochs of 7
    iterations: 32 x 6 + 9 points in one process, 16 x 6 + 5 per rank with one padding row)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, _ = _run(1, 32, tmp_path / "one", n=201, max_steps=14, stop=False)
        _run(2, 16, tmp_path / "two", n=201, max_steps=14, stop=False)
    finally:
        torch.set_num_threads(threads)
    assert single.iteration == 14
    state = torch.load(tmp_path / "two" / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["particle_table._extra_state"]["samples"].shape == (201, 3)
    torch.testing.assert_close(state["particle_table._extra_state"]["samples"], single.particle_table.samples, rtol=0, atol=1e-10)
    torch.testing.assert_close(state["particle_table._extra_state"]["momentum"], single.particle_table.momentum, rtol=0, atol=1e-10)
    reference = single.state_dict()
    for key in (k for k in reference if not k.endswith("_extra_state")):
        torch.testing.assert_close(state[key], reference[key], rtol=0, atol=1e-10)


@pytest.mark.ddp
def test_k_iterations_per_step_under_ddp_with_padding_follow_one_process(tmp_path: Path) -> None:
    """n = 201 on 2 processes with iterations_per_step=3 and 48 rows per rank and step (3 GDA
    batches of 16 per rank; the epoch's last batch, 5 rows with one padding row, is one part):
    12 iterations in 5 steps (3, 3, 1, 3, then 2 of 3 at max_steps) equal 12 iterations of one
    process with k = 1 and batch 32, the padding rows dropped."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, _ = _run(1, 32, tmp_path / "one", n=201, max_steps=12, stop=False)
        double, _ = _run(2, 48, tmp_path / "two", n=201, max_steps=12, stop=False, iterations_per_step=3)
    finally:
        torch.set_num_threads(threads)
    assert single.iteration == double.iteration == 12
    checkpoint = torch.load(tmp_path / "two" / "ckpt" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 12
    state = checkpoint["state_dict"]
    for name in ("samples", "momentum"):
        torch.testing.assert_close(state["particle_table._extra_state"][name], getattr(single.particle_table, name), rtol=0, atol=1e-10)
    reference = single.state_dict()
    for key in (k for k in reference if not k.endswith("_extra_state")):
        torch.testing.assert_close(state[key], reference[key], rtol=0, atol=1e-10)
    assert [h["iteration"] for h in double.gradient_norm_history] == [3.0, 6.0, 9.0, 12.0]
    for h, k in zip(double.gradient_norm_history, single.gradient_norm_history):
        assert h["gn_T"] == pytest.approx(k["gn_T"], rel=1e-9) and h["gn_theta"] == pytest.approx(k["gn_theta"], rel=1e-9)
