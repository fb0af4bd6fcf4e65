"""rho as a plain number per group that a schedule may set; GSAM's lr-proportional rho; interval=k."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sam_references import closure_for as shared_closure
from sam_references import chain_gradient, flat, grads_at, loss_fn, make_batches, make_mlp, sam_step, step_with
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

import lightning.pytorch as pl
from lightning_wass.optim import OTMDR, SAM, ProportionalRho


def closure_for(model, opt, x, y, calls=None):
    """The shared closure, also recording each pass's index in ``calls``."""
    inner = shared_closure(model, opt, x, y)

    def closure():
        if calls is not None:
            calls.append(opt.current_pass.index)
        return inner()

    return closure


def test_a_hand_written_rho_schedule_sets_group_rho_to_a_number():
    # GSAM-style code: for g in optimizer.param_groups: g["rho"] = rho_t
    batches = make_batches()
    radii = [0.2, 0.1, 0.05, 0.01]
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for (x, y), rho in zip(batches, radii):
        sam_step(ref, ref_opt, x, y, rho)
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    for (x, y), rho in zip(batches, radii):
        for g in opt.param_groups:
            g["rho"] = rho
        opt.step(closure_for(model, opt, x, y))
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)


def test_a_chain_keeps_its_radius_ratios_when_a_schedule_sets_rho():
    opt_model = make_mlp()
    opt = OTMDR(opt_model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=0.0, chunked_ascent=True, lr=0.1)
    assert opt.param_groups[0]["rho"] == 0.1 and opt.param_groups[0]["rho_fractions"] == (0.5, 1.0)
    opt.param_groups[0]["rho"] = 0.3  # the schedule scales both steps: radii (0.15, 0.3)
    x, y = make_batches(1, size=20)[0]
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    step_with(ref, ref_opt, chain_gradient(ref, [(x[:10], y[:10]), (x[10:], y[10:])], (x, y), (0.15, 0.3)))

    opt.step(shared_closure(opt_model, opt, x, y, chunks=True))
    torch.testing.assert_close(flat(opt_model), flat(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_a_schedule_that_sets_a_bad_rho_is_refused_at_the_next_step(bad):
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    opt.param_groups[0]["rho"] = bad
    x, y = make_batches(1)[0]
    before = flat(model).clone()
    with pytest.raises(ValueError, match="param group 0 rho must be a finite number >= 0"):
        opt.step(closure_for(model, opt, x, y))
    assert torch.equal(flat(model), before)


def test_proportional_rho_follows_the_learning_rate_as_gsam_defines_it():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.0)
    rho = ProportionalRho(opt, rho_max=0.05, rho_min=0.01)
    assert opt.param_groups[0]["rho"] == pytest.approx(0.05)  # lr = lr_max at the start
    x, y = make_batches(1)[0]
    for t in range(1, 11):
        opt.step(closure_for(model, opt, x, y))
        cosine.step()
        rho.step()
        lr_t = 0.2 * (1 + math.cos(math.pi * t / 10)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_t)
        # GSAM: rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)
        assert opt.param_groups[0]["rho"] == pytest.approx(0.01 + 0.04 * lr_t / 0.2)
        assert rho.get_last_rho() == [opt.param_groups[0]["rho"]]
        assert rho.get_last_lr() == [opt.param_groups[0]["lr"]]  # it never changes a learning rate
    with pytest.raises(ValueError, match="lr_max must exceed lr_min"):
        ProportionalRho(opt, rho_max=0.05, lr_min=1.0)
    with pytest.raises(ValueError, match="'rho'"):
        ProportionalRho(torch.optim.SGD(model.parameters(), lr=0.1), rho_max=0.05)


class ScheduledModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_mlp()
        self.seen_rho: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        self.seen_rho.append(self.optimizers().optimizer.param_groups[0]["rho"])

    def configure_optimizers(self):
        opt = SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        lr = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.5, total_iters=4)
        rho = ProportionalRho(opt, rho_max=0.05, rho_min=0.0)
        return [opt], [{"scheduler": lr, "interval": "step"}, {"scheduler": rho, "interval": "step"}]


def test_proportional_rho_is_stepped_by_lightning_after_the_lr_scheduler():
    module = ScheduledModule()
    data = TensorDataset(torch.randn(128, 6), torch.randint(0, 3, (128,)))
    quiet_trainer(max_epochs=1).fit(module, DataLoader(data, batch_size=32))
    lrs = [0.1 * (1 - 0.5 * t / 4) for t in range(4)]
    assert module.seen_rho == pytest.approx([0.05 * lr / 0.1 for lr in lrs])


@pytest.mark.parametrize("interval", [2, 3])
def test_interval_takes_the_perturbed_step_every_k_steps_and_a_plain_step_otherwise(interval):
    batches = make_batches(n_batches=6)
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for t, (x, y) in enumerate(batches, start=1):
        if t % interval == 0:  # Composer: steps interval, 2 interval, ...
            sam_step(ref, ref_opt, x, y, 0.05)
        else:
            step_with(ref, ref_opt, grads_at(ref, x, y))
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, interval=interval)
    passes = []
    for x, y in batches:
        calls: list[int] = []
        opt.step(closure_for(model, opt, x, y, calls))
        passes.append(len(calls))
    assert passes == [2 if t % interval == 0 else 1 for t in range(1, 7)]
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="interval"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, interval=0)


def test_interval_is_refused_in_the_two_step_loop_which_computes_both_passes_anyway():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, interval=2)
    x, y = make_batches(1)[0]
    loss_fn(model, x, y).backward()
    before = flat(model).clone()
    with pytest.raises(RuntimeError, match=r"interval=2.*step\(closure\) only"):
        opt.first_step(zero_grad=True)
    assert torch.equal(flat(model), before)
