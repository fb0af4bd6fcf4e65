"""The cheaper paths of the generative modules' training step, each against a reference written here.

- ``GenerativeModule.run_backward`` / ``step_optimizer`` skip Lightning's wrappers only where these
  add nothing: the iterates and ``global_step`` equal those of the wrapped path (forced here by a
  callback overriding a step hook, which must then be called as before);
- the guard's restore of the Trainer's step counters (saved field by field) puts back exactly what
  Lightning's own ``state_dict()`` of them held;
- ``rms_ratio`` (``||x||_F / sqrt(n)``) is the documented ``sqrt(mean_i ||x_i||^2)`` quotient, and the
  spread bound still fails a step with it;
- ``euler_rollout`` checks its input once and the potential's output at every Euler step, and gives
  the iterates of the documented rule ``x_{k+1} = x_k - dt grad U(x_k, t_k) / alpha``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import DivergenceError, TensorDataModule, W1W2ProximalFlow, W2GradientFlow, WGAN
from lightning_wass.functional.proximal_flow.rollout import euler_rollout
from lightning_wass.guard import UpdateGuard, rms_ratio
from trainers import quiet_trainer


def _points(n: int = 256) -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    return TensorDataModule(torch.randn(n, 2, generator=g), val_fraction=0.0, batch_size=32, drop_last=True)


class CountingHook(pl.Callback):
    """Overrides a step hook (so the module must take Lightning's wrapped path) and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.calls += 1


BUILDERS = {
    "proximal": lambda: W1W2ProximalFlow(data_shape=(2,), n_critic=2),
    "wgan-gp": lambda: WGAN(data_shape=(2,), lipschitz="gp", n_critic=2, eval_samples=0),
    "w2fe": lambda: W2GradientFlow(data_shape=(2,), persistent_steps=2, eval_samples=0),
}


def _fit(name: str, callbacks: list[pl.Callback]) -> tuple[pl.LightningModule, pl.Trainer]:
    torch.manual_seed(0)
    module = BUILDERS[name]()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=6, callbacks=callbacks)
    trainer.fit(module, _points())
    return module, trainer


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_the_direct_path_gives_the_iterates_and_steps_of_lightnings_wrapped_path(name):
    direct, direct_trainer = _fit(name, [])
    assert direct.direct_lightning_path()
    hook = CountingHook()
    wrapped, wrapped_trainer = _fit(name, [hook])
    assert not wrapped.direct_lightning_path()
    assert hook.calls == wrapped_trainer.global_step > 0  # the wrapped path still calls the hooks, once a step
    assert direct_trainer.global_step == wrapped_trainer.global_step
    assert direct.counters() == wrapped.counters()
    for (key, a), (_, b) in zip(direct.state_dict().items(), wrapped.state_dict().items()):
        assert torch.equal(a, b), key


def test_a_module_overriding_a_backward_hook_takes_the_wrapped_path():
    class Hooked(W1W2ProximalFlow):
        def on_after_backward(self) -> None:
            self.backwards = getattr(self, "backwards", 0) + 1

    module = Hooked(data_shape=(2,), n_critic=2)
    quiet_trainer(max_epochs=1, limit_train_batches=4).fit(module, _points())
    assert not module.direct_lightning_path()
    assert module.backwards == 4 + 2  # one backward a discriminator step, one a potential step


def test_a_failed_step_puts_back_the_trainers_step_counters_as_lightnings_state_dict_had_them():
    class Diverge(pl.Callback):
        """Record the counters' state_dict() before batch 3, then make that step diverge."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 3:
                loop = trainer.fit_loop.epoch_loop
                self.before = (
                    loop.manual_optimization.optim_step_progress.state_dict(),
                    loop.automatic_optimization.optim_progress.state_dict(),
                    trainer.global_step,
                )
                for opt in trainer.optimizers:
                    for group in opt.param_groups:
                        group["lr"] = 1e9

    callback = Diverge()
    module = W1W2ProximalFlow(data_shape=(2,), n_critic=2)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=6, callbacks=[callback])
    with pytest.raises(DivergenceError, match="lr_"):
        trainer.fit(module, _points())
    loop = trainer.fit_loop.epoch_loop
    after = (
        loop.manual_optimization.optim_step_progress.state_dict(),
        loop.automatic_optimization.optim_progress.state_dict(),
        trainer.global_step,
    )
    assert after == callback.before
    assert after[2] == 3 + 1  # three discriminator steps and one potential step were kept


def test_rms_ratio_is_the_documented_quotient():
    g = torch.Generator().manual_seed(0)
    for shape in [(256, 2), (7, 1, 5, 5), (1, 3)]:
        x, ref = 3 * torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)

        def rms(t: torch.Tensor) -> float:  # sqrt(mean_i ||x_i||^2), per sample in float64
            return math.sqrt(sum(float(row.double().square().sum()) for row in t) / len(t))

        assert float(rms_ratio(x, ref)) == pytest.approx(rms(x) / rms(ref), rel=1e-6)
    assert rms_ratio(torch.randn(4, 2).double(), torch.randn(4, 2).double()).dtype == torch.float64
    assert rms_ratio(torch.randn(4, 2).half(), torch.randn(4, 2)).dtype == torch.float32
    assert math.isnan(float(rms_ratio(torch.zeros(0, 2), torch.ones(3, 2))))  # no samples: no spread figure


def test_the_spread_bound_still_fails_a_step_whose_samples_spread():
    guard = UpdateGuard()
    data = torch.randn(64, 2)
    with pytest.raises(DivergenceError, match=r"reached 2e\+03, beyond its bound 1000"):
        with guard.step("step 1") as check:
            check.bounded("the spread", rms_ratio(2000 * data, data), 1e3, "lower lr")


def _reference_rollout(potential, x0, T, K, alpha):
    dt, x, states = T / K, x0.detach(), [x0.detach()]
    for k in range(K):
        y = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(potential(y, torch.full((len(y),), k * dt)).sum(), y)
        x = (x - dt * grad / alpha).detach()
        states.append(x)
    return states


def test_euler_rollout_follows_the_documented_rule():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

    def potential(x, t):
        return net(torch.cat([x, t.reshape(-1, 1)], 1)).reshape(-1)

    x0 = torch.randn(32, 2)
    ours = euler_rollout(potential, x0, 1.0, 4, 0.3)
    for a, b in zip(ours.states, _reference_rollout(potential, x0, 1.0, 4, 0.3)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert ours.times == [0.0, 0.25, 0.5, 0.75]


def test_euler_rollout_checks_the_potentials_output_at_every_step():
    calls = []

    def potential(x, t):  # one value per sample at t = 0, then two
        calls.append(float(t[0]))
        out = x.square().sum(1)
        return out if len(calls) == 1 else torch.cat([out, out])

    with pytest.raises(ValueError, match="one value per sample"):
        euler_rollout(potential, torch.randn(8, 2), 1.0, 3, 1.0)
    assert calls == pytest.approx([0.0, 1.0 / 3])  # the second step (float32 times)
    with pytest.raises(RuntimeError, match="needs autograd"):
        with torch.no_grad():
            euler_rollout(lambda x, t: x.sum(1), torch.randn(8, 2), 1.0, 3, 1.0)
    with pytest.raises(TypeError, match="x0"):
        euler_rollout(lambda x, t: x.sum(1), torch.arange(8).reshape(4, 2), 1.0, 3, 1.0)
