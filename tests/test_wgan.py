"""WGAN (clip / gp / sn critics): Lipschitz control, the GP critic's W1 estimate, shapes, resume, DDP, bad input."""

from __future__ import annotations

import math
import pickle

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import DivergenceError, TensorDataModule, ToyDataModule, W2GradientFlow, WGAN
from lightning_wass.functional import critic_gap, gradient_penalty, lipschitz_estimate
from lightning_wass.nn.gan_nets import MLPCritic, MLPGenerator


from trainers import quiet_trainer as _trainer  # noqa: E402  (tests/trainers.py)


class Shift(nn.Module):
    """A fixed-shape generator ``G(z) = z + shift``: with standard-normal ``z`` it is ``N(shift, I)``."""

    latent_dim = 2

    def __init__(self, shift: list[float]) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(shift))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.shift


def _train_critic_only(lipschitz: str, steps: int, shift=(1.2, 0.9), **kwargs) -> WGAN:
    """Train only the critic between N(0, I) data and the generator N(shift, I) (no generator step)."""
    pl.seed_everything(0, verbose=False)
    model = WGAN(
        generator=Shift(list(shift)),
        critic=MLPCritic([2], hidden=[64, 64]),
        lipschitz=lipschitz,
        n_critic=10**9,  # the generator never steps: two fixed distributions
        eval_samples=0,
        **kwargs,
    )
    _trainer(max_steps=steps).fit(model, datamodule=TensorDataModule(torch.randn(8192, 2), batch_size=256))
    assert model.critic_step == steps and model.generator_step == 0
    torch.testing.assert_close(model.generator.shift.detach(), torch.tensor(shift))
    return model


def _probe_points(shift, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    a = torch.randn(n, 2, generator=g)
    b = torch.randn(n, 2, generator=g) + torch.tensor(shift)
    eps = torch.rand(n, 1, generator=g)
    return a, b, eps * a + (1 - eps) * b


# ----------------------------------------------------------------------------- acceptance: the GP critic estimates W1
def test_gp_critic_estimates_w1_of_two_gaussians_within_ten_percent() -> None:
    # N(0, I) vs N(delta, I): W1 = |delta| exactly (the translation coupling attains Jensen's bound
    # |E x - E y|). The GP critic maximises gap - lambda E(|grad f| - 1)^2; for the optimal linear
    # critic f = c <x, e> that is c W1 - lambda (c - 1)^2, so c = 1 + W1 / (2 lambda) and the
    # estimate is W1 (1 + W1 / (2 lambda)): 7.5% above W1 for |delta| = 1.5, lambda = 10.
    shift = (1.2, 0.9)
    w1 = math.hypot(*shift)
    model = _train_critic_only("gp", steps=300, shift=shift, lr=2e-3)
    a, b, interpolates = _probe_points(shift, n=4000)
    model.critic.eval()
    with torch.no_grad():
        estimate = float(critic_gap(model.critic(a), model.critic(b)))
    assert abs(estimate - w1) / w1 < 0.10, (estimate, w1)
    predicted = w1 * (1 + w1 / (2 * model.gp_weight))
    assert abs(estimate - predicted) / predicted < 0.04, (estimate, predicted)
    # Lipschitz control: the gradient norm is pulled to c = 1.075 on the interpolates and stays bounded elsewhere.
    points = interpolates.clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(model.critic(points).sum(), points)  # per-sample: f acts row-wise
    assert 0.9 < float(grads.norm(dim=1).mean()) < 1.25
    assert float(lipschitz_estimate(model.critic, torch.cat([a, b, interpolates]))) < 1.5


def test_clipped_critic_weights_stay_in_the_box_and_bound_its_lipschitz_constant() -> None:
    clip = 0.01
    model = _train_critic_only("clip", steps=20, lr=5e-3)
    weights = [p for p in model.critic.parameters()]
    assert all(float(p.abs().max()) <= clip + 1e-7 for p in weights)
    # |W|_2 <= |W|_F <= c sqrt(fan_in fan_out) per layer, ReLU is 1-Lipschitz: the product bounds |grad f|.
    bound = math.prod(clip * math.sqrt(w.numel()) for w in weights if w.ndim == 2)
    a, b, interpolates = _probe_points((1.2, 0.9))
    lipschitz = float(lipschitz_estimate(model.critic, torch.cat([a, b, interpolates])))
    assert 0 < lipschitz <= bound
    # The same critic without clipping (a fresh init) is far above the bound: the box is what controls it.
    assert float(lipschitz_estimate(MLPCritic([2], hidden=[64, 64]), a)) > 10 * bound


def test_spectral_norm_critic_is_one_lipschitz() -> None:
    model = _train_critic_only("sn", steps=30, lr=1e-2)
    model.critic.eval()
    layers = [m for m in model.critic.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 3 and all(hasattr(m, "parametrizations") for m in layers)
    # Reference: the true spectral norms of the effective weights (SVD), independent of the power iteration.
    sigmas = [float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) for m in layers]
    assert all(0.9 < s < 1.05 for s in sigmas), sigmas
    a, b, interpolates = _probe_points((1.2, 0.9))
    assert float(lipschitz_estimate(model.critic, torch.cat([a, b, interpolates]))) <= math.prod(sigmas) + 1e-5


def test_gradient_penalty_of_a_linear_critic_has_its_closed_form() -> None:
    w = torch.tensor([3.0, 4.0])  # |grad f| = 5 everywhere: penalty (5 - 1)^2 = 16
    x, y = torch.randn(10, 2), torch.randn(10, 2)
    penalty = gradient_penalty(lambda v: v @ w, x, y, torch.rand(10))
    torch.testing.assert_close(penalty, torch.tensor(16.0))


# ----------------------------------------------------------------------------- training loop structure
def test_critic_and_generator_steps_alternate_with_n_critic() -> None:
    dm = TensorDataModule(torch.randn(1000, 2), batch_size=50, val_fraction=0.0)
    model = WGAN(generator=MLPGenerator(2, [2], hidden=[16]), critic=MLPCritic([2], hidden=[16]), n_critic=3, eval_samples=0)
    trainer = _trainer(max_epochs=1, limit_train_batches=10)
    trainer.fit(model, datamodule=dm)
    assert (model.critic_step, model.generator_step) == (10, 3)
    assert trainer.global_step == 13  # Lightning counts both optimizers' steps
    assert {"train/critic_W1", "train/gradient_penalty", "train/generator_loss"} <= set(trainer.callback_metrics)


def test_validation_logs_exact_distances_beside_the_critic_estimate() -> None:
    dm = ToyDataModule("8gaussians", train_size=256, val_size=200, batch_size=64)
    model = WGAN(generator=MLPGenerator(2, [2], hidden=[16]), critic=MLPCritic([2], hidden=[16]), eval_samples=100)
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=None, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"val/W1", "val/W2", "val/critic_W1"} <= set(metrics)
    assert 0 < metrics["val/W1"] <= metrics["val/W2"] + 1e-6


@pytest.mark.parametrize("shape", [(2,), (3,), (1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("lipschitz", ["clip", "gp", "sn"])
def test_sample_shapes_and_default_networks(shape, lipschitz) -> None:
    model = WGAN(data_shape=list(shape), lipschitz=lipschitz)
    samples = model.sample(5)
    assert samples.shape == (5, *shape)
    assert model.critic_score(samples).shape == (5,)
    if len(shape) == 3:
        assert float(samples.min()) >= 0 and float(samples.max()) <= 1  # images live in [0, 1]


def test_published_defaults_per_constraint() -> None:
    clip, gp, sn = (WGAN(data_shape=[2], lipschitz=name) for name in ("clip", "gp", "sn"))
    assert (clip.n_critic, clip.lr, clip.clip_value) == (5, 5e-5, 0.01)
    assert isinstance(clip.configure_optimizers()[1], torch.optim.RMSprop)
    assert (gp.n_critic, gp.lr, gp.betas, gp.gp_weight) == (5, 1e-4, (0.5, 0.9), 10.0)
    assert (sn.n_critic, sn.lr, sn.betas) == (1, 2e-4, (0.5, 0.999))
    assert isinstance(gp.configure_optimizers()[0], torch.optim.Adam)


def test_spectral_norm_model_pickles_exactly() -> None:
    # strategy="ddp_spawn" pickles the module; torch's parametrized modules refuse plain pickling.
    model = WGAN(data_shape=[2], lipschitz="sn")
    copy = pickle.loads(pickle.dumps(model))
    for (name, a), (other, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert name == other and torch.equal(a, b), name
    x = torch.randn(4, 2)
    torch.testing.assert_close(model.critic(x), copy.critic(x))
    assert hasattr(copy.critic.net.net[0], "parametrizations")


def _fit_wgan(tmp_path, epochs: int, ckpt: str | None = None) -> tuple[WGAN, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    dm = ToyDataModule("8gaussians", train_size=320, val_size=64, batch_size=64)
    model = WGAN(generator=MLPGenerator(2, [2], hidden=[16]), critic=MLPCritic([2], hidden=[16]), n_critic=2)
    trainer = _trainer(max_epochs=epochs, enable_checkpointing=True, default_root_dir=tmp_path, limit_val_batches=None)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model, trainer


def test_resume_equals_uninterrupted(tmp_path) -> None:
    straight, _ = _fit_wgan(tmp_path / "a", epochs=2)
    _, first = _fit_wgan(tmp_path / "b", epochs=1)
    resumed, _ = _fit_wgan(tmp_path / "c", epochs=2, ckpt=first.checkpoint_callback.best_model_path)
    assert (resumed.critic_step, resumed.generator_step) == (straight.critic_step, straight.generator_step) == (10, 5)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_from_a_checkpoint_written_before_the_counter_rename(tmp_path) -> None:
    # Former layout: the noise stream's counter was saved as "_draws" (now "noise_draw").
    straight, _ = _fit_wgan(tmp_path / "a", epochs=2)
    _, first = _fit_wgan(tmp_path / "b", epochs=1)
    checkpoint = torch.load(first.checkpoint_callback.best_model_path, weights_only=False)
    counters = checkpoint["lightning_wass_counters"]
    assert counters["noise_draw"] > 0
    counters["_draws"] = counters.pop("noise_draw")
    legacy = tmp_path / "legacy.ckpt"
    torch.save(checkpoint, legacy)
    resumed, _ = _fit_wgan(tmp_path / "c", epochs=2, ckpt=str(legacy))
    assert resumed.counters() == straight.counters()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_from_checkpoint_rebuilds_default_networks_from_the_datamodule_shape(tmp_path) -> None:
    dm = ToyDataModule("8gaussians", train_size=128, val_size=64, batch_size=64)
    model = WGAN(lipschitz="sn", eval_samples=0)  # networks built at fit time from dm.data_shape
    trainer = _trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    loaded = WGAN.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert loaded.data_shape == (2,) and loaded.lipschitz == "sn"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- DDP: both modules
class ReplicaCheck(pl.Callback):
    """At the end of training, gather every replica's parameters and a fresh noise draw on rank 0."""

    def on_train_end(self, trainer, pl_module) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        z = pl_module.noise(4).flatten()
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        noises = [torch.zeros_like(z) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(gathered, flat)
        torch.distributed.all_gather(noises, z)
        if trainer.is_global_zero:
            result = {
                "param_diff": float((gathered[0] - gathered[1]).abs().max()),
                "noise_diff": float((noises[0] - noises[1]).abs().max()),
                "generator_step": pl_module.generator_step,
            }
            torch.save(result, trainer.default_root_dir + "/replicas.pt")


@pytest.mark.ddp
def test_ddp_spawn_keeps_replicas_identical_for_wgan_and_w2_gradient_flow(tmp_path) -> None:
    # Default strategy="ddp_spawn" has find_unused_parameters=False: every backward must reach every
    # parameter. WGAN-GP (critic steps with a double backward, generator steps through the critic)
    # and W2GradientFlow with a learned potential (two networks updated in turn) both run here.
    x = torch.randn(512, 2) * 0.5 + 1.0
    models = {
        "wgan": WGAN(generator=MLPGenerator(2, [2], hidden=[16]), critic=MLPCritic([2], hidden=[16]), n_critic=2, eval_samples=0),
        "w2": W2GradientFlow(generator=MLPGenerator(2, [2], hidden=[16]), data_shape=[2], transport="potential", persistent_steps=2, eval_samples=0),
    }
    for name, model in models.items():
        root = tmp_path / name
        root.mkdir()
        trainer = _trainer(devices=2, strategy="ddp_spawn", max_steps=8, callbacks=[ReplicaCheck()], default_root_dir=str(root))
        trainer.fit(model, datamodule=TensorDataModule(x, batch_size=32))
        result = torch.load(root / "replicas.pt")
        assert result["param_diff"] == 0.0, name
        assert result["noise_diff"] > 0.1, f"{name}: replicas must draw different noise"
        assert result["generator_step"] > 0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lipschitz": "weight_decay"}, ValueError, "lipschitz must be one of 'clip', 'gp', 'sn'"),
        ({"n_critic": 0}, ValueError, "n_critic"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"clip_value": 0.0}, ValueError, "clip_value"),
        ({"gp_weight": -1.0}, ValueError, "gp_weight"),
        ({"betas": (0.5, 1.5)}, ValueError, "betas"),
        ({"data_shape": [0]}, ValueError, "data_shape"),
        ({"generator": "mlp"}, TypeError, "generator"),
        ({"critic": 3}, TypeError, "critic"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    kwargs.setdefault("data_shape", [2])
    with pytest.raises(error, match=match):
        WGAN(**kwargs)


def test_generator_output_not_matching_data_raises() -> None:
    dm = TensorDataModule(torch.randn(64, 1, 4, 4), batch_size=32)
    model = WGAN(generator=MLPGenerator(2, [16], hidden=[8]), critic=MLPCritic([16], hidden=[8]))
    with pytest.raises(ValueError, match=r"output shape \(16,\) does not match the data shape \(1, 4, 4\)"):
        _trainer(max_steps=1).fit(model, datamodule=dm)


def test_non_finite_loss_stops_training_naming_module_and_step() -> None:
    dm = TensorDataModule(torch.randn(64, 2), batch_size=32)
    model = WGAN(generator=Shift([float("nan"), 0.0]), critic=MLPCritic([2], hidden=[8]))
    with pytest.raises(DivergenceError, match="critic loss became non-finite .* in WGAN generator step 0"):
        _trainer(max_steps=1).fit(model, datamodule=dm)
