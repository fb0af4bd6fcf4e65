"""Training W1W2ProximalFlow on a Gaussian-to-Gaussian problem whose optimal flow is known.

From ``rho_0 = N(0, I)`` to data ``Q = N(m, s^2 I)`` in 2-D, the W1 (+) W2 proximal problem

    min_rho  alpha W2^2(rho_0, rho) / (2 T) + KL(rho || Q)

has a Gaussian solution ``rho_T = N(mu, sigma^2 I)`` with ``mu = m / (1 + alpha s^2 / T)`` and
``alpha (sigma - 1) / T - 1 / sigma + sigma / s^2 = 0`` (set the derivatives of
``alpha (|mu|^2 + d (sigma - 1)^2) / (2T) + KL`` to zero). The Lipschitz bound ``L = 1`` is not
active there (``|grad phi| = alpha |v_T| << 1``), so it is also the solution with the W1 proximal.
Its flow moves every point on a straight line at constant speed to ``mu + sigma x_0`` (the OT map),
with kinetic energy ``(|mu|^2 + d (sigma - 1)^2) / (2 T)``. The tests compare the trained flow with
this closed form.

Settings: T = 1, 5 Euler steps, KL (Donsker-Varadhan), L = 1, W2 weight alpha = 0.2 with the
velocity scale flow_alpha = 0.05 (the network learns velocities at the official alpha's scale; the
larger weight straightens the flow within the few hundred potential steps a test can afford),
2 discriminator steps per potential step, 800 optimizer steps.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from scipy.optimize import brentq

from lightning_wass import TensorDataModule, W1W2ProximalFlow, wasserstein_distance
from lightning_wass.nn.potentials import MLPDiscriminator, PotentialMLP
from lightning_wass.functional.proximal_flow import excess_path_length

M = torch.tensor([2.0, 1.0])
S, T, ALPHA = 0.5, 1.0, 0.2


def proximal_solution(alpha: float) -> tuple[torch.Tensor, float]:
    mu = M / (1.0 + alpha * S**2 / T)
    sigma = brentq(lambda z: alpha * (z - 1.0) / T - 1.0 / z + z / S**2, 0.05, 5.0)
    return mu, sigma


class Record(pl.Callback):
    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.history.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


def train(alpha: float) -> tuple[W1W2ProximalFlow, list[dict[str, float]]]:
    pl.seed_everything(0, verbose=False)
    data = M + S * torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    model = W1W2ProximalFlow(
        (2,),
        potential=PotentialMLP(2, (64, 64), zero_init_last=True),
        discriminator=MLPDiscriminator(2, (64, 64)),
        T=T,
        num_steps=5,
        alpha=alpha,
        flow_alpha=0.05,
        L=1.0,
        n_critic=2,
    )
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=800,
        check_val_every_n_epoch=4,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(model, TensorDataModule(data, batch_size=256, val_fraction=0.1))
    return model, record.history


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[W1W2ProximalFlow, list[dict[str, float]]]]:
    return {"w1w2": train(ALPHA), "w1": train(0.0)}


def _second_half_mean(history: list[dict[str, float]], key: str) -> float:
    half = history[len(history) // 2 :]
    return sum(h[key] for h in half) / len(half)


def test_endpoints_follow_the_exact_proximal_map(runs) -> None:
    model, _ = runs["w1w2"]
    mu, sigma = proximal_solution(ALPHA)
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    with torch.enable_grad():
        rollout = model.flow(x0)
    exact = mu + sigma * x0
    displacement = float((exact - x0).norm(dim=1).mean())  # about 2.1
    error = float((rollout.terminal - exact).norm(dim=1).mean())
    assert error < 0.1 * displacement, f"mean endpoint error {error:.3f} vs displacement {displacement:.3f}"
    assert torch.allclose(rollout.terminal.mean(0), mu, atol=0.1)
    assert torch.allclose(rollout.terminal.std(0), torch.full((2,), sigma), atol=0.08)
    # Straight trajectories: paths at most 1 % longer than the chord |x_T - x_0|.
    assert float(excess_path_length(rollout.states)) < 0.01


def test_w2_proximal_lowers_kinetic_energy_to_the_optimal_value(runs) -> None:
    mu, sigma = proximal_solution(ALPHA)
    optimal = (float(mu.pow(2).sum()) + 2 * (sigma - 1.0) ** 2) / (2 * T)  # about 2.50
    ke_w1w2 = _second_half_mean(runs["w1w2"][1], "val/kinetic_energy")
    ke_w1 = _second_half_mean(runs["w1"][1], "val/kinetic_energy")
    assert abs(ke_w1w2 - optimal) < 0.1 * optimal, (ke_w1w2, optimal)
    assert ke_w1w2 < 0.8 * ke_w1, (ke_w1w2, ke_w1)


def test_hj_residual_falls_during_training(runs) -> None:
    history = runs["w1w2"][1]
    relative = [h["val/hj_residual_relative"] for h in history]
    assert relative[-1] < 0.5 * relative[0], relative
    assert relative[-1] < 0.5 * max(relative[: len(relative) // 2]), relative
    # and it ends well below the residual of the W1-only flow (no kinetic energy)
    w1_relative = runs["w1"][1][-1]["val/hj_residual_relative"]
    assert relative[-1] < 0.5 * w1_relative, (relative[-1], w1_relative)


def test_dt_and_half_dt_samples_agree_within_the_sample_floor(runs) -> None:
    # Exact W2 between n = 1000 samples with dt and n = 1000 with dt/2 (independent reference draws)
    # is at most 1.5 x the W2 between two independent n-samples of the exact target N(mu, sigma^2 I).
    model, history = runs["w1w2"]
    n = 1000
    coarse = model.sample(n, generator=torch.Generator().manual_seed(11))
    fine = model.sample(n, num_steps=2 * model.num_steps, generator=torch.Generator().manual_seed(12))
    mu, sigma = proximal_solution(ALPHA)
    g = torch.Generator().manual_seed(13)
    floor = wasserstein_distance(mu + sigma * torch.randn(n, 2, generator=g), mu + sigma * torch.randn(n, 2, generator=g))
    gap = wasserstein_distance(coarse.double(), fine.double())
    assert float(gap) < 1.5 * float(floor), (float(gap), float(floor))
    # the logged paired gap (same x_0) is small against the displacement, and the divergence
    # estimates with dt and dt/2 agree
    assert history[-1]["val/discretisation_gap"] < 0.1
    assert math.isclose(history[-1]["val/divergence"], history[-1]["val/divergence_half_dt"], abs_tol=0.05)
