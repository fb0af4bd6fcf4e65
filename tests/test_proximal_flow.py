"""W1W2ProximalFlow: construction, sampling, validation inside Lightning's loop, divergence errors,
resume, image networks and the example configs (fast tests; training quality is in
test_proximal_flow_training.py, DDP in test_proximal_flow_ddp.py)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn

from lightning_wass import DivergenceError, TensorDataModule, W1W2ProximalFlow
from lightning_wass.nn.potentials import ConvDiscriminator, ConvPotential, MLPDiscriminator, PotentialMLP

REPO = Path(__file__).resolve().parents[1]
VAL_METRICS = {
    "val/hj_residual",
    "val/hj_residual_relative",
    "val/terminal_error",
    "val/terminal_error_relative",
    "val/kinetic_energy",
    "val/excess_path_length",
    "val/divergence",
    "val/divergence_half_dt",
    "val/discretisation_gap",
}


def small_flow(**kwargs) -> W1W2ProximalFlow:
    kwargs.setdefault("T", 1.0)
    kwargs.setdefault("num_steps", 3)
    kwargs.setdefault("n_critic", 2)
    return W1W2ProximalFlow(
        (2,), potential=PotentialMLP(2, (16, 16)), discriminator=kwargs.pop("discriminator", MLPDiscriminator(2, (16, 16))), **kwargs
    )


def gaussian_data(n: int = 512, seed: int = 1, **kwargs) -> TensorDataModule:
    x = torch.tensor([2.0, 1.0]) + 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    kwargs.setdefault("batch_size", 64)
    kwargs.setdefault("val_fraction", 0.25)
    return TensorDataModule(x, **kwargs)


def quiet_trainer(**kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    return pl.Trainer(accelerator="cpu", devices=1, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, "alpha must be a finite number >= 0"),
        ({"L": 0.0}, "L must be a finite number > 0"),
        ({"L": -1.0}, "L must be a finite number > 0"),
        ({"num_steps": 0}, "num_steps must be >= 1"),
        ({"divergence": "js"}, "divergence must be one of 'kl', 'reverse_kl', 'alpha'"),
        ({"reference": "laplace"}, "reference must be one of 'normal', 'uniform'"),
        ({"reference_range": (1.0, 0.0)}, "reference_range must satisfy low < high"),
        ({"T": 0.0}, "T must be a finite number > 0"),
        ({"n_critic": 0}, "n_critic must be >= 1"),
        ({"divergence_order": 1.0}, "divergence_order must be > 1"),
        ({"flow_alpha": 0.0}, "flow_alpha must be a finite number > 0"),
        ({"betas": (0.5, 1.0)}, r"betas must lie in \[0, 1\)"),
        ({"data_shape": ()}, "data_shape must be a non-empty sequence"),
        ({"data_shape": (2, 0)}, "data_shape must hold positive ints"),
    ],
)
def test_bad_arguments_name_what_is_allowed(kwargs: dict, match: str) -> None:
    data_shape = kwargs.pop("data_shape", (2,))
    with pytest.raises(ValueError, match=match):
        W1W2ProximalFlow(data_shape, **kwargs)


def test_bad_types() -> None:
    with pytest.raises(TypeError, match="num_steps must be an int"):
        W1W2ProximalFlow((2,), num_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="potential must be a torch.nn.Module"):
        W1W2ProximalFlow((2,), potential=lambda x, t: x.sum(1))  # type: ignore[arg-type]


def test_the_four_ablation_settings_are_flags() -> None:
    for alpha, L in ((0.05, 1.0), (0.0, 1.0), (0.05, None), (0.0, None)):
        model = W1W2ProximalFlow((2,), alpha=alpha, L=L)
        assert model.hparams.alpha == alpha and model.hparams.L == L
    # W1 only keeps a well-defined flow: v = -grad U / flow_alpha with flow_alpha = 1 by default
    assert W1W2ProximalFlow((2,), alpha=0.0).flow_alpha == 1.0
    assert W1W2ProximalFlow((2,), alpha=0.0, flow_alpha=0.05).indicator_alpha == 0.05


def test_sampling_starts_from_the_reference_and_works_under_inference_mode() -> None:
    torch.manual_seed(0)
    model = small_flow(reference="uniform", reference_range=(0.0, 0.5))
    with torch.inference_mode():  # e.g. called from a callback during validation
        paths = model.trajectories(200, generator=torch.Generator().manual_seed(3))
        final = model.sample(200, generator=torch.Generator().manual_seed(3))
    assert paths.shape == (4, 200, 2)
    assert float(paths[0].min()) >= 0.0 and float(paths[0].max()) <= 0.5
    assert torch.equal(paths[-1], final)
    # dt / 2: twice the steps, same reference draw
    assert model.trajectories(5, num_steps=6, generator=torch.Generator().manual_seed(3)).shape == (7, 5, 2)
    # velocity convention: one step moves x0 by -dt grad U(x0, 0) / alpha
    x0 = paths[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.potential(x0, torch.zeros(200)).sum(), x0)
    assert torch.allclose(paths[1], paths[0] - model.dt * grad / model.alpha, atol=1e-6)


def test_validation_indicators_in_a_default_trainer() -> None:
    # A Trainer with Lightning's default inference_mode=True: the module turns autograd back on.
    torch.manual_seed(0)
    model, data = small_flow(), gaussian_data()
    trainer = quiet_trainer(max_steps=12, val_check_interval=4, num_sanity_val_steps=1)
    assert trainer.predict_loop.inference_mode and trainer.validate_loop.inference_mode
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert VAL_METRICS <= set(metrics)
    assert all(torch.isfinite(metrics[k]) for k in VAL_METRICS)
    assert model.critic_steps == 8 and model.potential_steps == 4 and model.generator_step == 4
    assert trainer.global_step == 12  # both optimizers step; count iterations with critic/potential_steps
    (result,) = trainer.validate(model, data, verbose=False)
    assert VAL_METRICS <= set(result)


class _NaNAfterOneStep(nn.Module):
    """A discriminator that returns NaN once its optimiser has stepped (for divergence handling)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out = self.net(x)[:, 0]
        return out * float("nan") if self.calls > 6 else out


@pytest.mark.parametrize(
    ("alpha", "L", "advice"),
    [
        (0.0, None, "neither proximal is on: add the W1 proximal (L=1.0"),
        (0.05, None, "the W1 proximal is off: set L"),
        (0.0, 1.0, "the W2 proximal is off: set alpha > 0"),
        (0.05, 1.0, "lower lr_potential"),
    ],
)
def test_divergence_stops_with_an_error_that_names_the_regulariser(alpha: float, L: float | None, advice: str) -> None:
    torch.manual_seed(0)
    model = small_flow(alpha=alpha, L=L, discriminator=_NaNAfterOneStep())
    with pytest.raises(DivergenceError, match="non-finite") as info:
        quiet_trainer(max_steps=20, limit_val_batches=0).fit(model, gaussian_data())
    assert advice in str(info.value)
    assert "W1W2ProximalFlow step" in str(info.value)


def _fit_small_flow(epochs: int, ckpt: str | None = None) -> tuple[W1W2ProximalFlow, pl.Trainer]:
    """A seeded small flow fitted for ``epochs`` epochs (resumed from ``ckpt`` if given)."""
    pl.seed_everything(0, verbose=False)
    model, data = small_flow(n_critic=3), gaussian_data(n=256, batch_size=32)
    trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0)
    trainer.fit(model, data, ckpt_path=ckpt)
    return model, trainer


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    straight, _ = _fit_small_flow(4)
    first, trainer = _fit_small_flow(2)
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    resumed, trainer = _fit_small_flow(4, str(path))
    assert resumed.critic_steps == straight.critic_steps and resumed.potential_steps == straight.potential_steps
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.potential.mlp.net[0].weight, straight.potential.mlp.net[0].weight)


def test_resume_from_a_checkpoint_with_the_former_counter_key(tmp_path: Path) -> None:
    # Before the one generative base, the flow saved {"critic_steps", "potential_steps"} under
    # "proximal_flow_counters"; such a checkpoint must still resume to the uninterrupted run.
    straight, _ = _fit_small_flow(3)
    first, trainer = _fit_small_flow(1)
    path = tmp_path / "legacy.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    counters = checkpoint.pop("lightning_wass_counters")
    assert counters == {"generator_step": first.generator_step, "critic_step": first.critic_step} and counters["critic_step"] == 6
    checkpoint["proximal_flow_counters"] = {"critic_steps": counters["critic_step"], "potential_steps": counters["generator_step"]}
    torch.save(checkpoint, path)
    resumed, _ = _fit_small_flow(3, str(path))
    assert (resumed.critic_step, resumed.generator_step) == (straight.critic_step, straight.generator_step) == (18, 6)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_image_data_uses_the_conv_trunk_and_trains() -> None:
    default = W1W2ProximalFlow((1, 28, 28), reference="uniform")
    assert isinstance(default.potential, ConvPotential) and isinstance(default.discriminator, ConvDiscriminator)
    assert default.potential.trunk.out_features == 8 * 7 * 7  # official: two 7x7 conv + 2x2 max-pool layers
    model = W1W2ProximalFlow(
        (1, 8, 8),
        potential=ConvPotential((1, 8, 8), channels=(4,), hidden=(32,)),
        discriminator=ConvDiscriminator((1, 8, 8), channels=(4,), hidden=(32,)),
        T=2.0,
        num_steps=2,
        n_critic=1,
        reference="uniform",
    )
    images = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    trainer = quiet_trainer(max_steps=4, limit_val_batches=1, num_sanity_val_steps=0, val_check_interval=2)
    trainer.fit(model, TensorDataModule(images, batch_size=16, val_fraction=0.25))
    assert VAL_METRICS <= set(trainer.callback_metrics)
    assert model.sample(3).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("name", ["8gaussians", "circle", "mnist"])
def test_example_configs_build_through_lightning_cli(name: str) -> None:
    from lightning.pytorch.cli import LightningCLI

    config = REPO / "examples" / f"proximal_flow_{name}.yaml"
    cli = LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(config), "--trainer.logger=false"],
        save_config_callback=None,
    )
    assert isinstance(cli.model, W1W2ProximalFlow)
    assert cli.model.hparams.alpha > 0 and cli.model.hparams.L is not None
    if name == "mnist":
        assert cli.model.data_shape == (1, 28, 28) and cli.model.hparams.reference == "uniform"
        assert cli.datamodule.num_samples == 6000


def test_demo_part_quick(tmp_path: Path) -> None:
    from lightning_wass.demo import PARTS, run_demo

    assert "proximal_flow" in PARTS
    (section,) = run_demo(out=tmp_path, parts=["proximal_flow"], quick=True)
    assert section.title == "W1 (+) W2 proximal flow on the circle"
    assert [p.name for p in section.figures] == ["proximal_flow_trajectories.png", "proximal_flow_indicators.png"]
    assert all(p.exists() and p.stat().st_size > 10_000 for p in section.figures)
    assert any(line.startswith("circle: W2 ") and "x sample floor" in line for line in section.summary)
    report = (tmp_path / "report.md").read_text()
    assert "W1 (+) W2 proximal flow on the circle" in report and "| potential step |" in report


OFFICIAL_2D = {  # name: (dim, alpha, lamda, width): the README lines of the official code (-L 1.0)
    "pinwheel": (2, 0.5, 0.1, 64),
    "pinwheel_7d": (7, 0.1, 0.01, 64),
    "pinwheel_12d": (12, 0.1, 0.01, 64),
    "moons": (2, 0.5, 0.1, 48),
    "moons_7d": (7, 0.1, 0.01, 48),
    "moons_12d": (12, 0.1, 0.01, 48),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_2D))
def test_official_configs_carry_the_official_settings(name: str) -> None:
    import yaml

    config = yaml.safe_load((REPO / "examples" / f"proximal_flow_{name}_official.yaml").read_text())
    dim, alpha, lamda, width = OFFICIAL_2D[name]
    args = config["model"]["init_args"]
    assert args["data_shape"] == [dim] and args["alpha"] == alpha and args["gp_weight"] == lamda and args["L"] == 1.0
    assert (args["T"], args["num_steps"], args["n_critic"], args["divergence"]) == (1.0, 5, 5, "kl")
    assert (args["lr_potential"], args["lr_discriminator"], args["betas"]) == (1e-4, 2e-5, [0.5, 0.9])
    assert args["indicator_samples"] == 5000
    u, phi = args["potential"]["init_args"], args["discriminator"]["init_args"]
    assert (u["in_features"], u["hidden"], u["activation"]) == (dim, [width] * 5, "tanh")
    assert (phi["in_features"], phi["hidden"], phi["activation"]) == (dim, [width] * 3, "relu")
    data = config["data"]["init_args"]
    assert data["name"] == name and data["batch_size"] == 200 and data["train_size"] == 100_000
    assert config["trainer"]["max_steps"] == 25_000 * 6  # 25,000 iterations of 5 critic + 1 potential steps
