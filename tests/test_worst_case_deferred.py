"""WorstCaseGenerator's deferred checks (one process): the checks of a step's k iterations are read
back once, at the step's end; a suspect value replays the step from its start with every check in
place. A divergence at inner iteration j of a step is reported with iteration j and the knob to
turn, as k = 1 reports it, and the whole step is undone; a replay that finds nothing gives the same
iterates (random state and integer buffers included); the direct backward / optimizer-step path
equals Lightning's wrapped one and is taken only where no hook is skipped."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_wass import DivergenceError, TensorDataModule, WorstCaseGenerator
from test_worst_case_steps import _assert_same_run, _data, _fit


def _message_without_where(message: str) -> str:
    """The message with the iteration it names removed (k = 1 and k > 1 name it differently)."""
    return re.sub(r"WorstCaseGenerator iterations? \d+(-\d+)?( \(of the step's iterations \d+-\d+\))?", "<where>", message)


def _curved(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``y_i f(v_i)^2``: the curvature in ``v_i`` grows with the target, so only the row with a
    large target makes the inner maximisation diverge (at the iteration whose batch holds it)."""
    return target * output.reshape(-1) ** 2


def _one_row_diverging(k: int, row: int, max_steps: int = 100) -> tuple[WorstCaseGenerator, pl.Trainer, TensorDataModule]:
    """n = 40, m = 10, a frozen line; gamma times the curvature of row ``row`` is 20 (> 1), of the others 4e-3."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    y = torch.full((40,), 0.01)
    y[row] = 50.0
    pl.seed_everything(3, verbose=False)
    dm = TensorDataModule(x, y, x_test=x[:4], y_test=y[:4], val_fraction=0.0, batch_size=10 * k, return_index=True)
    line = nn.Linear(2, 1)
    with torch.no_grad():
        line.weight.copy_(torch.tensor([[1.0, 1.0]]))
        line.bias.zero_()
    module = WorstCaseGenerator(
        line, loss=_curved, gamma=0.1, particle_lr=1.0, train_model=False, transport_hidden=(8,), gradient_norm_every=0,
        iterations_per_step=k,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )
    return module, trainer, dm


@pytest.mark.parametrize("row", [7, 21])
def test_particles_diverging_at_inner_iteration_j_name_j_and_gamma(row: int) -> None:
    """k = 1 fails at iteration N (6 for row 7, 8 for row 21); k = 4 fails in the step of
    iterations 5-8 with the same message, naming iteration N of that step, and is undone whole:
    the module is where 4 iterations of k = 1 leave it."""
    one, one_trainer, dm = _one_row_diverging(1, row)
    with pytest.raises(DivergenceError) as single:
        one_trainer.fit(one, dm)
    failed_at = int(re.search(r"WorstCaseGenerator iteration (\d+);", str(single.value)).group(1))
    assert 5 < failed_at <= 8  # an inner iteration of the step of iterations 5-8
    many, many_trainer, many_dm = _one_row_diverging(4, row)
    with pytest.raises(DivergenceError) as stepped:
        many_trainer.fit(many, many_dm)
    message = str(stepped.value)
    assert f"WorstCaseGenerator iteration {failed_at} (of the step's iterations 5-8)" in message
    assert re.search(r"particles.*smaller gamma.*particle_lr", message) and "model_lr" not in message
    assert _message_without_where(message) == _message_without_where(str(single.value))
    reference, reference_trainer, reference_dm = _one_row_diverging(1, row, max_steps=4)
    reference_trainer.fit(reference, reference_dm)
    _assert_same_run((reference, reference_trainer), (many, many_trainer))


class _RaiseModelLr(Callback):
    """From Lightning step ``at`` on, the model's learning rate is ``lr`` (module and optimizer)."""

    def __init__(self, at: int, lr: float) -> None:
        self.at, self.lr = at, lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at:
            pl_module.model_lr = self.lr
            trainer.optimizers[0].param_groups[0]["lr"] = self.lr


def _model_lr_run(k: int, steps: int, at: int | None) -> tuple[WorstCaseGenerator, pl.Trainer, TensorDataModule]:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    y = x.sum(1, keepdim=True) + 0.5 * torch.randn(64, 1, generator=g)
    dm = TensorDataModule(x, y, x_test=x[:4], y_test=y[:4], val_fraction=0.0, batch_size=8 * k, return_index=True)
    torch.manual_seed(1)
    module = WorstCaseGenerator(nn.Linear(2, 1), transport_hidden=(8,), iterations_per_step=k, gradient_norm_every=0)
    callbacks = [] if at is None else [_RaiseModelLr(at, 1e6)]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
    )
    return module, trainer, dm


def test_the_model_weights_growing_name_their_iteration_and_model_lr() -> None:
    """model_lr = 1e6 from the second step (iterations 4-6 of k = 3) on: the model's first update
    there moves it far beyond max_update_ratio; the error names iteration 4 and model_lr (as
    k = 1 names iteration 4), and the module is where 3 good iterations left it."""
    one, one_trainer, dm = _model_lr_run(1, 40, at=3)
    with pytest.raises(DivergenceError) as single:
        one_trainer.fit(one, dm)
    assert "the model's update in WorstCaseGenerator iteration 4 moved" in str(single.value) and "model_lr" in str(single.value)
    many, many_trainer, many_dm = _model_lr_run(3, 40, at=1)
    with pytest.raises(DivergenceError) as stepped:
        many_trainer.fit(many, many_dm)
    message = str(stepped.value)
    assert "the model's update in WorstCaseGenerator iteration 4 (of the step's iterations 4-6)" in message
    assert "lower model_lr" in message and "smaller gamma" not in message
    assert _message_without_where(message) == _message_without_where(str(single.value))
    reference, reference_trainer, reference_dm = _model_lr_run(1, 3, at=None)
    reference_trainer.fit(reference, reference_dm)
    _assert_same_run((reference, reference_trainer), (many, many_trainer))


class _AlwaysReplay(WorstCaseGenerator):
    """Every read-back of the deferred checks is suspect: every step is replayed."""

    replays = 0

    def _record_deferred(self, check, values) -> None:
        super()._record_deferred(check, values)
        check.finite("a forced suspect value", torch.tensor(float("nan")), "")

    def _checked_iterations(self, *args, attribute: bool = False, **kwargs):
        type(self).replays += attribute
        return super()._checked_iterations(*args, attribute=attribute, **kwargs)


@pytest.mark.parametrize("k", [1, 3])
def test_a_replay_that_finds_nothing_gives_the_same_iterates(k: int) -> None:
    """BatchNorm statistics and its batch counter, dropout's random numbers, the gradient-norm
    evaluations (one inside a step of k = 3, at iteration 8) follow the run without replays."""
    reference = _fit(k, 8, max_steps=19)
    _AlwaysReplay.replays = 0
    replayed = _fit_always_replaying(k, 8, max_steps=19)
    assert isinstance(replayed[0], _AlwaysReplay) and _AlwaysReplay.replays >= replayed[1].fit_loop.epoch_loop.batch_progress.total.completed
    _assert_same_run(reference, replayed)
    counters = [(name, b) for name, b in replayed[0].named_buffers() if not b.is_floating_point()]
    assert counters and all(
        torch.equal(b, dict(reference[0].named_buffers())[name]) for name, b in counters
    )  # num_batches_tracked: the replays' forward passes are not counted twice


def _fit_always_replaying(k: int, m: int, max_steps: int, n: int = 50, every: int = 4) -> tuple[WorstCaseGenerator, pl.Trainer]:
    """``test_worst_case_steps._fit`` with :class:`_AlwaysReplay`."""
    pl.seed_everything(0, verbose=False)
    x, y = _data(n)
    dm = TensorDataModule(x, y, x_test=x[:4], y_test=y[:4], val_fraction=0.0, batch_size=k * m, return_index=True)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))
    module = _AlwaysReplay(
        model, gamma=0.3, model_lr=0.05, particle_lr=0.05, transport_hidden=(8,), transport_lr=1e-2,
        transport_batch_size=10, gradient_norm_every=every, iterations_per_step=k,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(module, dm)
    return module, trainer


class _HookCounter(Callback):
    def __init__(self) -> None:
        self.backward = self.optimizer_step = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        self.backward += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.optimizer_step += 1


def test_the_direct_path_equals_lightnings_and_yields_to_hooks() -> None:
    """Without hooks the direct path is taken; a callback with backward / optimizer-step hooks gets
    Lightning's path (called once per iteration); both give the same iterates."""
    direct = _fit(2, 8, max_steps=11)
    assert direct[0].direct_lightning_path()
    hooks = _HookCounter()
    wrapped = _fit(2, 8, max_steps=11, callbacks=[hooks])
    assert not wrapped[0].direct_lightning_path()
    assert hooks.backward == hooks.optimizer_step == 11  # one backward and one counted step per iteration
    _assert_same_run(direct, wrapped)
