"""WorstCaseGenerator(iterations_per_step=k): one Lightning step of k GDA iterations on a batch of
k m rows follows the trajectory of k steps of k = 1 on batches of m rows (particles, momentum,
model and map weights, optimizer states, counters, gradient-norm history, the stopping iteration);
a step that diverges is undone whole; the chunked gradient-norm evaluation equals the formula."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import DivergenceError, GradientNormStopping, TensorDataModule, WorstCaseGenerator
from lightning_wass.functional.worst_case import gradient_norms, mse_per_sample


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([0.6, -0.4]) + 0.3 * torch.randn(n, generator=g)


def _fit(k: int, m: int, n: int = 50, max_steps: int = 20, callbacks: list | None = None, every: int = 4) -> tuple[WorstCaseGenerator, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    x, y = _data(n)
    dm = TensorDataModule(x, y, x_test=x[:4], y_test=y[:4], val_fraction=0.0, batch_size=k * m, return_index=True)
    torch.manual_seed(1)
    # BatchNorm statistics and dropout's random numbers must follow the same sequence too
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))
    module = WorstCaseGenerator(
        model, gamma=0.3, model_lr=0.05, particle_lr=0.05, transport_hidden=(8,), transport_lr=1e-2,
        transport_batch_size=10, gradient_norm_every=every, iterations_per_step=k,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks or [],
    )
    trainer.fit(module, dm)
    return module, trainer


def _assert_same_run(a: tuple[WorstCaseGenerator, pl.Trainer], b: tuple[WorstCaseGenerator, pl.Trainer]) -> None:
    (one, one_trainer), (many, many_trainer) = a, b
    assert one.iteration == many.iteration and one_trainer.global_step == many_trainer.global_step == one.iteration
    for name in ("samples", "momentum"):
        torch.testing.assert_close(getattr(many.particle_table, name), getattr(one.particle_table, name), rtol=0, atol=1e-12)
    for (key, p), q in zip(one.state_dict().items(), many.state_dict().values()):
        if not key.endswith("_extra_state"):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-12, msg=key)  # model (BatchNorm included) and map
    for opt_a, opt_b in zip(one_trainer.optimizers, many_trainer.optimizers):  # SGD momentum, Adam moments
        for state_a, state_b in zip(opt_a.state.values(), opt_b.state.values()):
            for key in state_a:
                torch.testing.assert_close(state_b[key], state_a[key], rtol=0, atol=1e-12, msg=key)
    assert [h["iteration"] for h in many.gradient_norm_history] == [h["iteration"] for h in one.gradient_norm_history]
    for h, g in zip(many.gradient_norm_history, one.gradient_norm_history):
        assert h == pytest.approx(g, rel=1e-10)
    assert (one.particle_table.samples - one.particle_table.origins).abs().max() > 1e-3  # the particles moved


@pytest.fixture(scope="module")
def reference() -> tuple[WorstCaseGenerator, pl.Trainer]:
    """k = 1, m = 8, n = 50: epochs of 6 batches of 8 and one of 2; 19 iterations, GN every 4."""
    return _fit(1, 8, max_steps=19)


@pytest.mark.parametrize("k", [2, 3])
def test_k_iterations_per_step_follow_k_steps_of_one_iteration(reference, k: int) -> None:
    """k = 2: batches of 16, 16, 16, 2; k = 3: batches of 24, 24, 2, and the last step stops at
    max_steps = 19 after 2 of its 3 iterations. The epoch's short batch gives one short part."""
    many = _fit(k, 8, max_steps=19)
    _assert_same_run(reference, many)
    steps = {2: 4 + 4 + 3, 3: 3 + 3 + 2}[k]  # Lightning steps: (2, 2, 2, 1) per epoch / (3, 3, 1), then the rest
    assert many[1].fit_loop.epoch_loop.batch_progress.total.completed == steps


def test_one_step_an_epoch() -> None:
    """k = 7: one step is a whole epoch (6 parts of 8 rows and one of 2), GN every 7 iterations."""
    one = _fit(1, 8, every=7)
    _assert_same_run(one, _fit(7, 8, every=7))
    assert [h["iteration"] for h in one[0].gradient_norm_history] == [7.0, 14.0]


def test_gradient_norm_stopping_stops_at_the_end_of_the_step_of_the_evaluation() -> None:
    """n = 48, m = 8: 6 iterations an epoch; GN every 4, tol = 1e3 (always met), patience 2: the
    evaluation at iteration 8 stops training. k = 2: a step ends at iteration 8, so both runs stop
    there; k = 3: the evaluation at 8 is made inside the step of iterations 7-9, and training stops
    at the end of that step (iteration 9), as the docstring says; its iterates are those of 9
    iterations of k = 1."""
    stops = [GradientNormStopping(tol=1e3, patience=2, verbose=False) for _ in range(3)]
    one = _fit(1, 8, n=48, max_steps=40, callbacks=[stops[0]])
    two = _fit(2, 8, n=48, max_steps=40, callbacks=[stops[1]])
    assert stops[0].stopped_iteration == stops[1].stopped_iteration == 8
    _assert_same_run(one, two)
    three = _fit(3, 8, n=48, max_steps=40, callbacks=[stops[2]])
    assert stops[2].stopped_iteration == 8 and three[0].iteration == 9
    _assert_same_run(_fit(1, 8, n=48, max_steps=9), three)


def _diverging(k: int, max_steps: int) -> tuple[WorstCaseGenerator, pl.Trainer, TensorDataModule]:
    """gamma times the curvature >> 1: the inner maximisation is unbounded (n = 40, m = 10)."""
    pl.seed_everything(3, verbose=False)
    x, y = _data(40)
    dm = TensorDataModule(x, y, x_test=x[:4], y_test=y[:4], val_fraction=0.0, batch_size=10 * k, return_index=True)
    linear = nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 1.0]]))
        linear.bias.zero_()
    module = WorstCaseGenerator(linear, gamma=1e3, particle_lr=5.0, model_lr=1e-6, transport_hidden=(8,), iterations_per_step=k, gradient_norm_every=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    return module, trainer, dm


def test_a_step_that_diverges_is_undone_whole() -> None:
    """With k = 4 the second step (iterations 5-8) diverges; every iteration of it is undone
    (iteration 5 had written its particles before the step failed): the module is exactly where
    4 iterations of k = 1 leave it."""
    module, trainer, dm = _diverging(1, 4)
    trainer.fit(module, dm)
    failed, failed_trainer, failed_dm = _diverging(4, 40)
    with pytest.raises(DivergenceError, match=r"iterations 5-8.*smaller gamma"):
        failed_trainer.fit(failed, failed_dm)
    _assert_same_run((module, trainer), (failed, failed_trainer))


def test_bad_iterations_per_step_are_refused() -> None:
    with pytest.raises(ValueError, match="iterations_per_step"):
        WorstCaseGenerator(nn.Linear(2, 1), iterations_per_step=0)
    with pytest.raises(TypeError, match="iterations_per_step"):
        WorstCaseGenerator(nn.Linear(2, 1), iterations_per_step=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gradient_norm_every=2 must be 0 or >= iterations_per_step=3"):
        WorstCaseGenerator(nn.Linear(2, 1), gradient_norm_every=2, iterations_per_step=3)
    x, y = _data(20)
    dm = TensorDataModule(x, y, x_test=x[:4], y_test=y[:4], val_fraction=0.0, batch_size=10, return_index=True)
    module = WorstCaseGenerator(nn.Linear(2, 1), transport_hidden=(4,), iterations_per_step=3, gradient_norm_every=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"iterations_per_step=3 must divide the training DataLoader's batch_size=10"):
        trainer.fit(module, dm)


# --------------------------------------------------------------------------- chunked gradient norms
def _reference_norms(model: nn.Module, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, gamma: float, wd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented formulas, one particle at a time:
    GN_theta = ||(1/n) sum_i d_theta loss_i + wd theta||,  GN_T = sqrt((1/n) sum_i ||d_v loss_i - (v_i - x_i)/gamma||^2)."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    squares = []
    for i in range(len(v)):
        vi = v[i : i + 1].clone().requires_grad_(True)
        loss = ((model(vi).reshape(-1) - y[i : i + 1]) ** 2).sum()
        gv, *gp = torch.autograd.grad(loss, [vi, *params])
        squares.append(((gv - (vi.detach() - x[i : i + 1]) / gamma) ** 2).sum())
        total = [t + g for t, g in zip(total, gp)]
    gn_theta = torch.sqrt(sum(((t / len(v) + wd * p) ** 2).sum() for t, p in zip(total, params)))
    return gn_theta, torch.sqrt(torch.stack(squares).mean())


def test_chunked_gradient_norms_equal_the_unchunked_value_and_the_formula() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    g = torch.Generator().manual_seed(2)
    table_x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    table_y = torch.randn(40, generator=g, dtype=torch.float64)
    table_v = table_x + 0.2 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    gamma, wd, params = 0.6, 0.01, list(model.parameters())
    rows = torch.tensor([3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 14])  # a shard given as indices, unsorted
    for pick, n in ((None, 40), (rows, len(rows)), (slice(1, None, 3), 13)):
        subset = slice(None) if pick is None else pick
        want_theta, want_t = _reference_norms(model, table_v[subset], table_x[subset], table_y[subset], gamma, wd)
        unchunked = gradient_norms(model, mse_per_sample, table_v, table_x, table_y, gamma, parameters=params, weight_decay=wd, chunk_size=10**6, rows=pick, total=n)
        torch.testing.assert_close(unchunked["gn_theta"], want_theta, rtol=1e-12, atol=0)
        torch.testing.assert_close(unchunked["gn_T"], want_t, rtol=1e-12, atol=0)
        for chunk in (1, 4, n):
            got = gradient_norms(model, mse_per_sample, table_v, table_x, table_y, gamma, parameters=params, weight_decay=wd, chunk_size=chunk, rows=pick, total=n)
            torch.testing.assert_close(got["gn_theta"], unchunked["gn_theta"], rtol=1e-12, atol=0)
            torch.testing.assert_close(got["gn_T"], unchunked["gn_T"], rtol=1e-12, atol=0)
