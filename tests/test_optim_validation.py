"""Bad hyperparameters and foreign state dicts are refused by name; a step whose result is not finite
is undone (parameters and base optimizer state) and reported; step returns the detached loss at theta."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sam_references import closure_for, flat, loss_fn, make_batches, make_mlp
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

import lightning.pytorch as pl
from lightning_wass import DivergenceError
from lightning_wass.optim import OTMDR, SAM


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lr=float("nan")), "lr must be a finite number >= 0"),
        (dict(lr=float("inf")), "lr must be a finite number >= 0"),
        (dict(lr=-0.1), "lr must be a finite number >= 0"),
        (dict(lr=0.1, momentum=1.5), r"momentum must lie in \[0, 1\)"),
        (dict(lr=0.1, momentum=1.0), r"momentum must lie in \[0, 1\)"),
        (dict(lr=0.1, momentum=-0.1), r"momentum must lie in \[0, 1\)"),
        (dict(lr=0.1, weight_decay=float("nan")), "weight_decay"),
    ],
)
def test_base_hyperparameters_that_would_make_every_step_non_finite_are_refused(kwargs, words):
    model = make_mlp()
    for cls in (SAM, OTMDR):
        with pytest.raises(ValueError, match=words):
            cls(model.parameters(), torch.optim.SGD, **kwargs)


def test_adam_betas_outside_the_unit_interval_are_refused():
    model = make_mlp()
    with pytest.raises(ValueError, match=r"betas\[1\] must lie in \[0, 1\)"):
        SAM(model.parameters(), torch.optim.Adam, lr=1e-3, betas=(0.9, 1.2))


def davda54_style_state_dict(model) -> dict:
    """What davda54/sam's SAM.state_dict() holds: its groups carry rho and adaptive and the base kwargs."""
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = sgd.state_dict()
    for group in state["param_groups"]:
        group.update(rho=0.05, adaptive=False)
    return state


@pytest.mark.parametrize("source", ["plain SGD", "davda54/sam"])
def test_foreign_state_dicts_are_refused_naming_the_missing_keys_and_nothing_is_loaded(source):
    model = make_mlp()
    x, y = make_batches(1)[0]
    sgd = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loss_fn(model, x, y).backward()
    sgd.step()
    foreign = sgd.state_dict() if source == "plain SGD" else davda54_style_state_dict(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"(?s)param group 0 lacks the keys \[.*'noise_std'.*'perturb'.*nothing was loaded"):
        opt.load_state_dict(foreign)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["perturb"] is True
    opt.step(lambda: (opt.zero_grad(), loss_fn(model, x, y))[1].backward() or loss_fn(model, x, y))  # still usable


def test_a_state_dict_from_before_rho_was_a_number_still_loads():
    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), lr=0.1)
    state = opt.state_dict()
    for group in state["param_groups"]:  # the layout saved by earlier versions
        group["rho"] = (0.05, 0.1)
        del group["rho_fractions"]
    fresh = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.2, 0.2), lr=0.1)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["rho"] == 0.1 and fresh.param_groups[0]["rho_fractions"] == (0.5, 1.0)


def test_a_step_that_makes_the_parameters_non_finite_is_undone_and_names_the_learning_rate():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    x, y = make_batches(1)[0]

    closure = closure_for(model, opt, x, y)
    opt.step(closure)
    before = flat(model).clone()
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    for group in opt.param_groups:
        group["lr"] = float("inf")  # what a broken schedule can set: the gradients stay finite
    with pytest.raises(DivergenceError, match=r"(?s)SAM step 2: the base optimizer's step turned finite gradients.*lr=inf.*restored"):
        opt.step(closure)
    assert torch.equal(flat(model), before)
    for p, m in zip(model.parameters(), momentum):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    for group in opt.param_groups:
        group["lr"] = 0.1
    opt.step(closure)  # and the optimizer goes on from the restored state
    assert opt.completed_steps == 2


def test_a_diverged_first_step_leaves_no_optimizer_state_behind():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3)
    x, y = make_batches(1)[0]
    before = flat(model).clone()

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y) * (float("nan") if opt.current_pass.perturbed else 1.0)
        loss.backward()
        return loss

    with pytest.raises(DivergenceError, match="the loss of pass 1"):
        opt.step(closure)
    assert torch.equal(flat(model), before)
    assert len(opt.state) == 0  # Adam's moments created by the undone step are gone


def test_step_returns_the_detached_loss_at_theta():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    x, y = make_batches(1)[0]
    with torch.no_grad():
        at_theta = loss_fn(model, x, y)
    losses = []

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        losses.append(loss.detach())
        return loss

    returned = opt.step(closure)
    assert not returned.requires_grad and returned.grad_fn is None
    torch.testing.assert_close(returned, at_theta)
    assert not torch.allclose(losses[1], at_theta)  # the perturbed pass's loss differs: the choice matters


class LogsAtTheta(pl.LightningModule):
    """The documented way to log the training loss at theta only (docs/otmdr.md)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_mlp()
        self.losses_at_theta: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        current = self.optimizers().optimizer.current_pass
        if current is None or current.index == 0:  # pass 0 is at theta; later passes are perturbed
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.losses_at_theta.append(float(loss))
        return loss

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)


def test_a_lightning_module_logs_the_loss_at_theta_only():
    module = LogsAtTheta()
    x, y = make_batches(1, size=64)[0]
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=32))
    assert len(module.losses_at_theta) == 2  # one per step, though training_step ran 4 times
    expected = sum(module.losses_at_theta) / 2
    assert float(trainer.callback_metrics["train_loss_epoch"]) == pytest.approx(expected, rel=1e-6)
