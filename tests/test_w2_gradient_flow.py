"""W2GradientFlow (W2-FE, arXiv:2406.13619): Euler targets, OT-map estimators, convergence, resume, bad input."""

from __future__ import annotations

import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import DivergenceError, TensorDataModule, ToyDataModule, W2GradientFlow, WassersteinMonitor
from lightning_wass.functional import (
    adversarial_map,
    forward_euler_targets,
    minibatch_ot_targets,
    potential_map,
    semi_dual_loss,
    w2gan_dual_loss,
)
from lightning_wass.nn.gan_nets import MLPGenerator


from trainers import quiet_trainer as _trainer  # noqa: E402  (tests/trainers.py)


# ----------------------------------------------------------------------------- pure functions
def test_minibatch_ot_targets_match_brute_force_assignment_and_euler_step() -> None:
    g = torch.Generator().manual_seed(0)
    y, x = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) + 1.0
    # Reference: the optimal matching by enumerating all 6! permutations.
    best = min(itertools.permutations(range(6)), key=lambda s: sum(float((y[i] - x[j]).square().sum()) for i, j in enumerate(s)))
    matched = x[list(best)]
    targets, w2 = minibatch_ot_targets(y, x, dt=1.0)
    torch.testing.assert_close(targets, matched)
    torch.testing.assert_close(w2, (matched - y).square().sum(1).mean().sqrt())
    half, _ = minibatch_ot_targets(y, x, dt=0.25)
    torch.testing.assert_close(half, y + 0.25 * (matched - y))
    torch.testing.assert_close(forward_euler_targets(y, matched, 0.5), (y + matched) / 2)
    # Image-shaped batches are flattened for the OT problem and come back in their shape.
    images, _ = minibatch_ot_targets(y.reshape(6, 1, 2, 1), x.reshape(6, 1, 2, 1), dt=1.0)
    torch.testing.assert_close(images.reshape(6, 2), matched)


def test_learned_potential_recovers_a_translation_map() -> None:
    # mu = N(0, I), nu = N(delta, I): the optimal map is T(y) = y + delta, i.e. phi(y) = -<delta, y>.
    torch.manual_seed(0)
    delta = torch.tensor([2.0, -1.0])
    potential = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(potential.parameters(), lr=1e-2)
    for _ in range(150):
        y, x = torch.randn(128, 2), torch.randn(128, 2) + delta
        loss = semi_dual_loss(lambda v: potential(v).squeeze(-1), y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randn(1000, 2)
    error = (potential_map(lambda v: potential(v).squeeze(-1), y) - (y + delta)).norm(dim=1).mean()
    assert float(error) < 0.2 * float(delta.norm())


def test_w2gan_dual_loss_equals_hand_computation() -> None:
    # phi(x) = <a, x>, psi(y) = ||y||^2 / 4: the objective by hand, pair by pair.
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    a = torch.tensor([0.5, -1.0])
    phi = lambda v: v @ a  # noqa: E731
    psi = lambda v: v.square().sum(1) / 4  # noqa: E731
    by_hand = 0.0
    for xi, yi in zip(x.tolist(), y.tolist()):
        u = 0.5 * xi[0] - 1.0 * xi[1]
        v = (yi[0] ** 2 + yi[1] ** 2) / 4
        c = ((xi[0] - yi[0]) ** 2 + (xi[1] - yi[1]) ** 2) / 2
        by_hand += (u + v) / 3 - 7.0 * max(u + v - c, 0.0) ** 2 / 3
    torch.testing.assert_close(w2gan_dual_loss(phi, psi, x, y, penalty=7.0), torch.tensor(-by_hand))
    # The map of psi: y - grad psi(y) = y / 2.
    torch.testing.assert_close(adversarial_map(psi, y), y / 2)
    with pytest.raises(ValueError, match="same shape"):
        w2gan_dual_loss(phi, psi, x, y[:2], penalty=1.0)


def test_adversarial_potential_gradient_recovers_the_closed_form_gaussian_map() -> None:
    """mu = N(0, I) (generated), P = N(m, B) (data): the optimal map is the linear T(y) = m + B^(1/2) y.

    B has a rotated eigenbasis (scales 2 and 0.5), so T is neither a translation nor diagonal. The
    W2-GAN pair (psi = -phi + eps, as in Leygonie et al.) is trained on the penalised dual alone,
    without the library's module; T(y) = y - grad psi(y) must land within 15% of the mean
    displacement ||T(y) - y|| of the closed-form map.
    """
    torch.manual_seed(0)
    angle = torch.tensor(0.6)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    root = rotation @ torch.diag(torch.tensor([2.0, 0.5])) @ rotation.T  # B^(1/2), B = root @ root
    m = torch.tensor([1.0, -1.0])

    def closed_form(y: torch.Tensor) -> torch.Tensor:
        return m + y @ root.T

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

    phi_net, eps_net = net(), net()
    phi = lambda v: phi_net(v).squeeze(-1)  # noqa: E731
    psi = lambda v: -phi_net(v).squeeze(-1) + eps_net(v).squeeze(-1)  # noqa: E731
    opt = torch.optim.Adam([*phi_net.parameters(), *eps_net.parameters()], lr=1e-3, betas=(0.5, 0.999))
    for _ in range(1500):
        y, x = torch.randn(256, 2), closed_form(torch.randn(256, 2))
        loss = w2gan_dual_loss(phi, psi, x, y, penalty=100.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randn(2000, 2)
    error = (adversarial_map(psi, y) - closed_form(y)).norm(dim=1).mean()
    displacement = (closed_form(y) - y).norm(dim=1).mean()
    assert float(error) < 0.15 * float(displacement), (float(error), float(displacement))


# ----------------------------------------------------------------------------- acceptance: W2 goes down
def test_exact_ot_flow_drives_exact_w2_to_held_out_data_down() -> None:
    """Stated bound: 8 Gaussians, batch 256, K = 5, dt = 0.5, Adam 1e-3, a 2 x 64 MLP generator.

    After 64 outer iterations (320 generator updates) the exact W2 between 500 samples and the 500
    held-out points is within 1.4x the sample floor (mean W2 between five 500-point training subsets
    and the 500 held-out points), from about 4x at initialisation (measured: 1.02x and 1.16x for the
    two seeds, from 3.7x and 4.5x); averaged over two seeds the W2 measured every 50
    generator updates decreases at every measurement (monotone in expectation).
    """
    curves = []
    for seed in (0, 1):
        pl.seed_everything(seed, verbose=False)
        dm = ToyDataModule("8gaussians", train_size=4096, val_size=500, batch_size=256, seed=seed)
        model = W2GradientFlow(
            generator=MLPGenerator(2, [2], hidden=[64, 64]),
            data_shape=[2],
            dt=0.5,
            persistent_steps=5,
            lr=1e-3,
            eval_samples=0,
            seed=seed,
        )
        monitor = WassersteinMonitor(every_n_steps=50, num_samples=500)
        _trainer(max_epochs=4, callbacks=[monitor]).fit(model, datamodule=dm)
        assert model.outer_step == 64 and model.generator_step == 320
        steps = [h["step"] for h in monitor.history]
        assert steps == [0, 50, 100, 150, 200, 250, 300, 320]
        ratios = [h["W2_ratio"] for h in monitor.history]
        assert ratios[0] > 2.5, "the untrained generator should be far from the data"
        assert ratios[-1] < 1.4, f"seed {seed}: final W2 / floor = {ratios[-1]:.2f}"
        curves.append([h["W2"] for h in monitor.history])
    mean_curve = [sum(values) / len(values) for values in zip(*curves)]
    assert all(b < a for a, b in zip(mean_curve, mean_curve[1:])), mean_curve


def test_learned_potential_transport_trains_and_lowers_w2() -> None:
    pl.seed_everything(0, verbose=False)
    dm = ToyDataModule("8gaussians", train_size=1024, val_size=500, batch_size=256)
    model = W2GradientFlow(
        generator=MLPGenerator(2, [2], hidden=[64, 64]),
        data_shape=[2],
        transport="potential",
        persistent_steps=5,
        potential_steps=5,
        eval_samples=0,
    )
    monitor = WassersteinMonitor(every_n_steps=1000, num_samples=500)
    _trainer(max_epochs=10, callbacks=[monitor]).fit(model, datamodule=dm)
    assert model.outer_step == 40 and model.generator_step == 200
    first, last = monitor.history[0]["W2"], monitor.history[-1]["W2"]
    assert last < 0.6 * first, (first, last)


def test_adversarial_transport_trains_both_potentials_and_lowers_w2() -> None:
    pl.seed_everything(0, verbose=False)
    dm = ToyDataModule("8gaussians", train_size=1024, val_size=500, batch_size=256)
    model = W2GradientFlow(
        generator=MLPGenerator(2, [2], hidden=[64, 64]),
        data_shape=[2],
        transport="adversarial",
        persistent_steps=5,
        potential_lr=3e-3,
        eval_samples=0,
    )
    assert model.potential_steps == 25  # the adversarial estimator's default
    before = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("potential")}
    assert any(n.startswith("potential_correction.") for n in before) and any(n.startswith("potential.") for n in before)
    monitor = WassersteinMonitor(every_n_steps=1000, num_samples=500)
    _trainer(max_epochs=10, callbacks=[monitor]).fit(model, datamodule=dm)
    assert model.outer_step == 40 and model.generator_step == 200
    # Every weight matrix of both networks moved (phi's output bias cancels in phi(x) + psi(y)).
    for name, p in model.named_parameters():
        if name in before and name.endswith("weight"):
            assert not torch.equal(p, before[name]), f"{name} was not trained"
    first, last = monitor.history[0]["W2"], monitor.history[-1]["W2"]
    assert last < 0.6 * first, (first, last)


# ----------------------------------------------------------------------------- interface
@pytest.mark.parametrize("shape", [(2,), (5,), (1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_sample_shapes(shape) -> None:
    model = W2GradientFlow(data_shape=list(shape))
    assert model.sample(7).shape == (7, *shape)
    assert model.generator_step == 0


def test_validation_logs_exact_w1_and_w2() -> None:
    x = torch.randn(600, 2)
    dm = TensorDataModule(x, batch_size=100, val_fraction=0.2)
    model = W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[16]), data_shape=[2], eval_samples=50)
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=None, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"val/W1", "val/W2", "train/W2_minibatch"} <= set(metrics)
    assert 0 < float(metrics["val/W1"]) <= float(metrics["val/W2"]) + 1e-6  # W1 <= W2 (Jensen)


def _fit_w2(tmp_path, epochs: int, ckpt: str | None = None) -> tuple[W2GradientFlow, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    dm = ToyDataModule("8gaussians", train_size=512, val_size=100, batch_size=128)
    model = W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[16, 16]), data_shape=[2], persistent_steps=3)
    trainer = _trainer(max_epochs=epochs, enable_checkpointing=True, default_root_dir=tmp_path, limit_val_batches=None)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model, trainer


def test_resume_equals_uninterrupted(tmp_path) -> None:
    straight, _ = _fit_w2(tmp_path / "a", epochs=2)
    _, first = _fit_w2(tmp_path / "b", epochs=1)
    resumed, _ = _fit_w2(tmp_path / "c", epochs=2, ckpt=first.checkpoint_callback.best_model_path)
    assert (resumed.outer_step, resumed.generator_step) == (straight.outer_step, straight.generator_step) == (8, 24)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.1}, "dt"),
        ({"persistent_steps": 0}, "persistent_steps"),
        ({"transport": "sinkhorn"}, "transport"),
        ({"lr": 0}, "lr"),
        ({"potential_steps": 0}, "potential_steps"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"transport": "adversarial", "dual_penalty": 0.0}, "dual_penalty"),
        ({"transport": "adversarial", "potential_steps": 0}, "potential_steps"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        W2GradientFlow(data_shape=[2], **kwargs)


def test_potential_correction_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="potential_correction must be a torch.nn.Module"):
        W2GradientFlow(data_shape=[2], transport="adversarial", potential_correction="mlp")


def test_generator_output_not_matching_data_raises() -> None:
    dm = TensorDataModule(torch.randn(64, 3), batch_size=32)
    model = W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[8]))
    with pytest.raises(ValueError, match=r"generator's output shape \(2,\) does not match the data shape \(3,\)"):
        _trainer(max_steps=1).fit(model, datamodule=dm)


class _NaNGenerator(nn.Module):
    latent_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, z):
        return z * self.scale


def test_non_finite_values_stop_training_naming_module_and_step() -> None:
    dm = TensorDataModule(torch.randn(64, 2), batch_size=32)
    with pytest.raises(DivergenceError, match="generator output became non-finite.*W2GradientFlow generator step 0"):
        _trainer(max_steps=1).fit(W2GradientFlow(generator=_NaNGenerator()), datamodule=dm)
