"""W1W2ProximalFlow under DDP (2 CPU processes, ddp_spawn with its default
find_unused_parameters=False): the replicas stay identical, they draw different reference samples,
and HJResidualStopping stops both ranks at the same step."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_wass import HJResidualStopping, TensorDataModule, W1W2ProximalFlow
from lightning_wass.seeding import seeded_generator
from lightning_wass.nn.potentials import MLPDiscriminator, PotentialMLP


class RecordReplica(pl.Callback):
    """Each rank writes its step, its stopping state, a parameter checksum and one reference draw."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: pl.Trainer, pl_module: W1W2ProximalFlow) -> None:
        stopping = next(c for c in trainer.callbacks if isinstance(c, HJResidualStopping))
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()]).double()
        draw = pl_module.sample_reference(3, seeded_generator(pl_module.device, 0, trainer.global_rank, 0, 0))
        record = {
            "global_step": trainer.global_step,
            "stopped_step": stopping.stopped_step,
            "wait_count": stopping.wait_count,
            "potential_steps": pl_module.potential_steps,
            "params": flat.tolist(),
            "draw": draw.flatten().tolist(),
        }
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.ddp
def test_ddp_replicas_identical_and_stopping_on_both_ranks_at_the_same_step(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    x = torch.tensor([2.0, 1.0]) + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    data = TensorDataModule(x, batch_size=32, val_fraction=0.25)  # 384 training points: 6 batches per rank
    model = W1W2ProximalFlow(
        (2,), potential=PotentialMLP(2, (16, 16)), discriminator=MLPDiscriminator(2, (16, 16)), T=1.0, num_steps=3, n_critic=2
    )
    # A relative HJ residual is at most a few units; tol = 10 makes the criterion hold at every
    # validation, so with patience 2 the run must stop at the end of epoch 2 on both ranks:
    # 2 epochs x (6 discriminator + 3 potential steps) = global step 18.
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
        callbacks=[HJResidualStopping(tol=10.0, patience=2, verbose=False), RecordReplica(str(tmp_path))],
    )
    trainer.fit(model, data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["global_step"] == record["stopped_step"] == 18
        assert record["wait_count"] == 2 and record["potential_steps"] == 6
    assert ranks[0]["params"] == ranks[1]["params"]  # gradients are averaged: replicas stay identical
    assert ranks[0]["draw"] != ranks[1]["draw"]  # each rank draws its own reference samples
