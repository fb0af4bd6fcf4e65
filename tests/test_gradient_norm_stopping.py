"""GradientNormStopping: patience semantics on a scripted module, state round trip, and the
WorstCaseGenerator reaching tol = 1e-5 on the 2-D regression experiment (checked independently)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import GradientNormStopping, ToyDataModule, WorstCaseGenerator


class ScriptedNorms(pl.LightningModule):
    """Reports the gradient norms of a script, one evaluation every ``every`` steps."""

    def __init__(self, script: list[dict[str, float]], every: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.script, self.every = script, every
        self.gradient_norms: dict[str, float] = {}
        self.gradient_norms_iteration: int | None = None
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        if self.steps % self.every == 0:
            self.gradient_norms = self.script[self.steps // self.every - 1]
            self.gradient_norms_iteration = self.steps
        return (self.weight * batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(100, 1)), batch_size=1)


def _fit(module: pl.LightningModule, callback: GradientNormStopping, steps: int = 40) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback]
    )
    trainer.fit(module)
    return trainer


SCRIPT = [
    {"gn_theta": 1e-3, "gn_T": 1e-3},
    {"gn_theta": 1e-6, "gn_T": 1e-3},  # only one below: keep going
    {"gn_theta": 1e-6, "gn_T": 1e-6},  # both below (evaluation 3, step 6)
    {"gn_theta": 1e-4, "gn_T": 1e-6},  # back above: the count restarts
    {"gn_theta": 1e-6, "gn_T": 1e-7},  # step 10
    {"gn_theta": 1e-6, "gn_T": 1e-7},  # step 12
    {"gn_theta": 1e-6, "gn_T": 1e-7},  # step 14
] + [{"gn_theta": 1.0, "gn_T": 1.0}] * 20


@pytest.mark.parametrize("patience, stop_step", [(1, 6), (2, 12), (3, 14)])
def test_stops_when_all_norms_stay_below_tol_for_patience_evaluations(patience: int, stop_step: int) -> None:
    callback = GradientNormStopping(tol=1e-5, patience=patience)
    module = ScriptedNorms(SCRIPT)
    trainer = _fit(module, callback)
    assert callback.stopped_iteration == stop_step
    assert trainer.global_step == stop_step and module.steps == stop_step


def test_monitor_selects_the_norms_and_names_missing_ones() -> None:
    callback = GradientNormStopping(tol=1e-5, monitor=["gn_theta"])
    assert _fit(ScriptedNorms(SCRIPT), callback).global_step == 4
    with pytest.raises(KeyError, match="gn_x"):
        _fit(ScriptedNorms(SCRIPT), GradientNormStopping(monitor=["gn_x"]))


def test_state_round_trip_and_bad_arguments() -> None:
    callback = GradientNormStopping(tol=1e-5, patience=3)
    _fit(ScriptedNorms(SCRIPT), callback, steps=11)
    state = callback.state_dict()
    assert state["wait_count"] == 1 and state["last_checked_iteration"] == 10
    fresh = GradientNormStopping(tol=1e-5, patience=3)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(ValueError, match="tol"):
        GradientNormStopping(tol=0.0)
    with pytest.raises(ValueError, match="patience"):
        GradientNormStopping(patience=0)
    with pytest.raises(TypeError, match="monitor"):
        GradientNormStopping(monitor="gn_T")  # type: ignore[arg-type]


def test_a_module_without_gradient_norms_is_refused() -> None:
    class Plain(ScriptedNorms):
        def __getattribute__(self, name):  # hide the protocol
            if name == "gradient_norms_iteration":
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(TypeError, match="gradient_norms"):
        _fit(Plain(SCRIPT), GradientNormStopping())


def _reference_gradient_norms(module: WorstCaseGenerator, gamma: float) -> tuple[float, float]:
    """GN_theta and GN_T recomputed in float64 from the particles, one sample at a time."""
    linear = module.model
    w = linear.weight.detach().double().clone().requires_grad_(True)
    b = linear.bias.detach().double().clone().requires_grad_(True)
    p = module.particles
    v, x, y = p.samples.double(), p.origins.double(), p.targets.double()
    grads_theta, squares = [], []
    for i in range(len(v)):
        vi = v[i].clone().requires_grad_(True)
        loss = (vi @ w[0] + b[0] - y[i]) ** 2
        gw, gb, gv = torch.autograd.grad(loss, (w, b, vi))
        grads_theta.append(torch.cat([gw.flatten(), gb]))
        squares.append(((gv - (vi.detach() - x[i]) / gamma) ** 2).sum())
    gn_theta = torch.stack(grads_theta).mean(0).norm()
    gn_t = torch.stack(squares).mean().sqrt()
    return float(gn_theta), float(gn_t)


def test_worst_case_generator_reaches_tol_1e_5_on_the_2d_regression_experiment() -> None:
    """The paper's 2-D regression (n = 200, linear model, squared loss) with its step sizes
    (eta = tau = 0.01, momentum 0.7), gamma = 0.3, float32: GN stopping at tol = 1e-5."""
    pl.seed_everything(0, verbose=False)
    gamma = 0.3
    dm = ToyDataModule("regression", batch_size=500, return_index=True)
    module = WorstCaseGenerator(nn.Linear(1, 1), gamma=gamma, gradient_norm_every=10, transport_hidden=(32,))
    callback = GradientNormStopping(tol=1e-5)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=5000, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[callback],
    )
    trainer.fit(module, dm)
    assert callback.stopped_iteration is not None and trainer.global_step == callback.stopped_iteration < 5000
    history = module.gradient_norm_history
    assert max(history[-2]["gn_theta"], history[-2]["gn_T"]) >= 1e-5  # it stopped at the first evaluation below tol
    gn_theta, gn_t = _reference_gradient_norms(module, gamma)
    assert gn_theta < 1e-5 and gn_t < 1e-5
    assert gn_t == pytest.approx(module.gradient_norms["gn_T"], rel=0.05, abs=2e-7)
    assert gn_theta == pytest.approx(module.gradient_norms["gn_theta"], rel=0.05, abs=2e-7)
    assert (module.particles.samples - module.particles.origins).abs().mean() > 0.05  # a real worst case


def test_a_module_that_never_evaluates_the_norms_is_refused() -> None:
    dm = ToyDataModule("regression", batch_size=500, return_index=True)
    module = WorstCaseGenerator(nn.Linear(1, 1), gradient_norm_every=0, transport_hidden=(8,))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[GradientNormStopping()],
    )
    with pytest.raises(ValueError, match="gradient_norm_every=0.*never stop"):
        trainer.fit(module, dm)
    assert module.iteration == 0
