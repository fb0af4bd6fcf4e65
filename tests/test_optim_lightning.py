"""OTMDR / SAM where users put them: Lightning automatic and manual optimization, precision plugins,
gradient clipping, gradient accumulation and DDP, each against a hand-written reference."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_wass.callbacks import ReleaseSpawnedProcessGroup
from lightning_wass.optim import OTMDR, SAM

RHO, LR = 0.05, 0.1


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def make_data(n: int = 96, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def batches(dataset: TensorDataset, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(DataLoader(dataset, batch_size=size, shuffle=False))


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def gradient(net: nn.Module, x, y, scale: float = 1.0, autocast: torch.dtype | None = None) -> list[torch.Tensor]:
    net.zero_grad()
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        loss = F.cross_entropy(net(x), y) * scale
    loss.backward()
    return [p.grad.detach().clone() for p in net.parameters()]


def clip(grads: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    if max_norm is None:
        return grads
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [g * factor for g in grads]


def reference_sam(data, *, clip_norm=None, autocast=None, accumulate: int = 1, momentum: float = 0.9) -> torch.Tensor:
    """Plain-loop SAM + SGD(momentum); the stepped gradient clipped to ``clip_norm``.

    With ``accumulate > 1`` it follows the documented Lightning semantics: micro-batches before the
    last enter every pass through their gradient at theta0; the closure's loss is divided by the
    number of micro-batches as Lightning does.
    """
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=momentum)
    params = list(net.parameters())
    items = batches(data)
    for start in range(0, len(items), accumulate):
        window = items[start : start + accumulate]
        earlier = [torch.zeros_like(p) for p in params]
        for x, y in window[:-1]:
            earlier = [e + g for e, g in zip(earlier, gradient(net, x, y, 1 / accumulate, autocast))]
        x, y = window[-1]
        g = clip([e + t for e, t in zip(earlier, gradient(net, x, y, 1 / accumulate, autocast))], clip_norm)
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        e_w = [RHO * t / (norm + 1e-12) for t in g]
        with torch.no_grad():
            for p, e in zip(params, e_w):
                p.add_(e)
        g_adv = clip([a + t for a, t in zip(earlier, gradient(net, x, y, 1 / accumulate, autocast))], clip_norm)
        with torch.no_grad():
            for p, e, t in zip(params, e_w, g_adv):
                p.sub_(e)
                p.grad = t
        opt.step()
    return flat(net)


class OrdinaryModule(pl.LightningModule):
    """A module that knows nothing about SAM except that configure_optimizers returns it."""

    def __init__(self, optimizer: str = "sam") -> None:
        super().__init__()
        self.net = make_net()
        self.optimizer_name = optimizer
        self.training_step_calls = 0

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        if self.optimizer_name == "sam":
            return SAM(self.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
        return OTMDR(self.parameters(), torch.optim.SGD, rho=RHO, ascent_steps=1, num_particles=1, noise_std=0.0,
                     lr=LR, momentum=0.9)


class ManualModule(OrdinaryModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(self.net(x), y)
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train_loss", loss)


def fit(module: pl.LightningModule, data: TensorDataset, **trainer_kwargs) -> pl.Trainer:
    kwargs = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(module, DataLoader(data, batch_size=32, shuffle=False))
    return trainer


@pytest.mark.parametrize("optimizer", ["sam", "otmdr"])
def test_automatic_optimization_32_true_follows_the_plain_loop(optimizer):
    data = make_data()
    module = OrdinaryModule(optimizer)
    fit(module, data, precision="32-true")
    assert module.training_step_calls == 2 * 3  # two passes per step, three batches
    torch.testing.assert_close(flat(module.net), reference_sam(data), rtol=1e-5, atol=1e-6)


def test_automatic_optimization_bf16_mixed_follows_the_autocast_loop():
    data = make_data()
    module = OrdinaryModule("sam")
    fit(module, data, precision="bf16-mixed")
    expected = reference_sam(data, autocast=torch.bfloat16)
    torch.testing.assert_close(flat(module.net), expected, rtol=1e-4, atol=1e-5)
    assert (expected - reference_sam(data)).abs().max() > 1e-5  # bf16 really was used


def test_manual_optimization_follows_the_plain_loop():
    data = make_data()
    module = ManualModule()
    fit(module, data)
    torch.testing.assert_close(flat(module.net), reference_sam(data), rtol=1e-5, atol=1e-6)


def test_gradient_clipping_applies_to_the_gradient_that_is_stepped():
    data = make_data()
    clip_norm = 0.05
    module = OrdinaryModule("sam")
    fit(module, data, gradient_clip_val=clip_norm, gradient_clip_algorithm="norm")
    expected = reference_sam(data, clip_norm=clip_norm)
    torch.testing.assert_close(flat(module.net), expected, rtol=1e-5, atol=1e-6)
    assert (expected - reference_sam(data)).abs().max() > 1e-3  # the clip was active


def test_gradient_accumulation_follows_the_documented_semantics():
    data = make_data(n=128)
    module = OrdinaryModule("sam")
    fit(module, data, accumulate_grad_batches=2)
    expected = reference_sam(data, accumulate=2)
    torch.testing.assert_close(flat(module.net), expected, rtol=1e-5, atol=1e-6)
    # and it is not what the closure alone (last micro-batch only) would give
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    for x, y in batches(data)[1::2]:
        opt.step(lambda: (opt.zero_grad(), (F.cross_entropy(net(x), y) / 2).backward())[0] or torch.tensor(0.0))
    assert (flat(net) - expected).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------- DDP
class DDPCheckModule(pl.LightningModule):
    """Trains with SAM under ddp_spawn, switching between synced and per-replica ascent each step,
    and checks every step against a reference computed from the batches of both replicas."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.net = make_net()
        self.out = out
        self.checked = {"synced": 0, "per_replica": 0}
        self.expected: torch.Tensor | None = None

    def configure_optimizers(self):
        opt = SAM(self.parameters(), torch.optim.SGD, rho=0.2, lr=LR)
        opt.attach_no_sync(self.trainer.strategy.block_backward_sync)
        return opt

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def _reference(self, xs, ys, synced: bool) -> torch.Tensor:
        net = copy.deepcopy(self.net)
        params = list(net.parameters())
        theta0 = [p.detach().clone() for p in params]
        local = [gradient(net, x, y) for x, y in zip(xs, ys)]
        mean = [torch.stack(gs).mean(0) for gs in zip(*local)]
        final = []
        for grads in local:
            g = mean if synced else grads
            norm = torch.sqrt(sum((t**2).sum() for t in g))
            with torch.no_grad():
                for p, t0, t in zip(params, theta0, g):
                    p.copy_(t0 + 0.2 * t / norm)
            final.append(gradient(net, xs[len(final)], ys[len(final)]))
        g_final = [torch.stack(gs).mean(0) for gs in zip(*final)]
        return torch.cat([(t0 - LR * g).reshape(-1) for t0, g in zip(theta0, g_final)])

    def on_train_batch_start(self, batch, batch_idx):
        synced = batch_idx % 2 == 0
        self.optimizers().optimizer.sync_ascent = synced
        x, y = self.all_gather(batch)  # (world, b, ...)
        self.expected = self._reference(list(x), list(y), synced)
        self.other = self._reference(list(x), list(y), not synced)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        mode = "synced" if batch_idx % 2 == 0 else "per_replica"
        actual = flat(self.net)
        torch.testing.assert_close(actual, self.expected, rtol=1e-5, atol=1e-6)
        assert (self.other - self.expected).abs().max() > 1e-5, "the two modes must differ for the check to mean anything"
        replicas = self.all_gather(actual)
        assert torch.equal(replicas[0], replicas[1]), "replicas drifted apart"
        self.checked[mode] += 1

    def on_train_end(self):
        if self.global_rank == 0:
            Path(self.out).write_text(json.dumps(self.checked))


@pytest.mark.ddp
def test_ddp_synced_and_per_replica_ascent_match_references_and_keep_replicas_identical(tmp_path):
    out = tmp_path / "checked.json"
    module = DDPCheckModule(str(out))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ReleaseSpawnedProcessGroup()])
    trainer.fit(module, DataLoader(make_data(n=64), batch_size=8, shuffle=False))
    assert json.loads(out.read_text()) == {"synced": 2, "per_replica": 2}


def test_per_replica_ascent_without_a_no_sync_context_is_refused_under_ddp(monkeypatch):
    net = make_net()
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=LR, sync_ascent=False)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    with pytest.raises(RuntimeError, match="attach_no_sync"):
        opt.step(lambda: torch.tensor(0.0))
