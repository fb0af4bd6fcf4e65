"""WorstCaseGenerator: GDA fixed point vs the closed form, transport-map generalisation, frozen
model, resume == uninterrupted, divergence keeps the last checkpoint, lazy particle tables, bad input."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_wass import DivergenceError, GradientNormStopping, TensorDataModule, WorstCaseGenerator
from lightning_wass.nn.transport_map import ResidualTransportMap
from lightning_wass.functional.worst_case import linear_regression_worst_case, robust_linear_regression

GAMMA = 0.5
W_TRUE = torch.tensor([0.6, -0.4])


def regression_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x @ W_TRUE + 0.3 + 0.3 * torch.randn(n, generator=g)
    return x, y


def regression_dm(n: int = 100, batch_size: int = 256, **kwargs) -> TensorDataModule:
    x, y = regression_data(n)
    xt, yt = regression_data(20, seed=1)
    return TensorDataModule(x, y, x_test=xt, y_test=yt, val_fraction=0.0, batch_size=batch_size, return_index=True, **kwargs)


def trainer(max_steps: int, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


# --------------------------------------------------------------------------- closed form
@pytest.fixture(scope="module")
def converged() -> tuple[WorstCaseGenerator, TensorDataModule]:
    """Full-batch GDA in float64 on linear regression, with a target-conditioned transport map."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    dm = regression_dm()
    module = WorstCaseGenerator(
        nn.Linear(2, 1),
        gamma=GAMMA,
        model_lr=0.05,
        particle_lr=0.05,
        transport_conditional=True,
        transport_hidden=(64, 64),
        transport_lr=3e-3,
        transport_batch_size=100,
        gradient_norm_every=100,
    )
    trainer(600, precision="64-true").fit(module, dm)
    torch.set_num_threads(threads)
    return module, dm


def test_gda_fixed_point_matches_the_closed_form(converged) -> None:
    module, dm = converged
    x, y = (t.double() for t in dm.tensors("train"))
    w, b = robust_linear_regression(x, y, GAMMA)
    v = linear_regression_worst_case(x, y, w, b, GAMMA)
    assert module.iteration == 600
    torch.testing.assert_close(module.model.weight.detach().flatten(), w, rtol=0, atol=1e-4)
    torch.testing.assert_close(module.model.bias.detach()[0], b, rtol=0, atol=1e-4)
    particles = module.particles
    assert particles.samples.dtype == torch.float64
    torch.testing.assert_close(particles.samples, v, rtol=0, atol=1e-4)
    torch.testing.assert_close(particles.targets, y)
    torch.testing.assert_close(particles.origins, x)
    # the particles really moved (the check is not satisfied by v = x)
    assert (v - x).norm(dim=1).mean() > 0.05
    assert module.gradient_norms["gn_theta"] < 1e-5 and module.gradient_norms["gn_T"] < 1e-5


def test_transport_map_generalises_to_held_out_points(converged) -> None:
    """Bound: on held-out points, ||T(x, y) - v*(x, y)|| averages below 5% of the worst-case
    displacement ||v* - x|| (the identity map scores 100%; measured: 0.6%); v* is the closed-form
    worst case under the trained model."""
    module, dm = converged
    x_test, y_test = (t.double() for t in dm.tensors("test"))
    w, b = module.model.weight.detach().flatten(), module.model.bias.detach()[0]
    v_star = linear_regression_worst_case(x_test, y_test, w, b, GAMMA)
    error = (module.transport(x_test, y_test) - v_star).norm(dim=1).mean()
    displacement = (v_star - x_test).norm(dim=1).mean()
    assert displacement > 0.05
    assert error < 0.05 * displacement, (float(error), float(displacement))


# --------------------------------------------------------------------------- frozen model
def test_frozen_model_is_untouched_and_particles_reach_its_worst_case() -> None:
    pl.seed_everything(1, verbose=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 2, generator=g)
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    classifier = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 2))
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    dm = TensorDataModule(x, labels, x_test=x[:8], y_test=labels[:8], val_fraction=0.0, batch_size=30, return_index=True)
    module = WorstCaseGenerator(classifier, loss="cross_entropy", gamma=0.2, particle_lr=0.2, train_model=False, transport_hidden=(16,), gradient_norm_every=20)
    trainer(400).fit(module, dm)
    after = classifier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BatchNorm statistics
    assert set(module.gradient_norms) == {"gn_T"}
    particles = module.particles
    classifier.eval()
    with torch.no_grad():
        clean = nn.functional.cross_entropy(classifier(particles.origins), particles.targets)
        worst = nn.functional.cross_entropy(classifier(particles.samples), particles.targets)
    assert worst > clean
    # each particle is (close to) the maximiser of its own concave inner problem: its ascent direction vanishes
    assert module.gradient_norms["gn_T"] < 1e-4


# --------------------------------------------------------------------------- resume
def _state(module: WorstCaseGenerator, trainer_: pl.Trainer) -> dict[str, object]:
    opt_model, opt_map = trainer_.optimizers
    return {
        "samples": module.particle_table.samples.clone(),
        "momentum": module.particle_table.momentum.clone(),
        "params": [p.detach().clone() for p in module.parameters()],
        "sgd": [opt_model.state[p]["momentum_buffer"].clone() for p in module.model.parameters()],
        "adam": [opt_map.state[p]["exp_avg_sq"].clone() for p in module.transport_map.parameters()],
        "iteration": module.iteration,
        "history": list(module.gradient_norm_history),
    }


def test_resume_from_a_mid_run_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    def run(ckpt_path: str | None, callbacks: list) -> tuple[WorstCaseGenerator, pl.Trainer]:
        pl.seed_everything(2, verbose=False)
        dm = regression_dm(n=48, batch_size=16)  # 3 batches per epoch, shuffled by (seed, epoch)
        torch.manual_seed(5)
        module = WorstCaseGenerator(nn.Linear(2, 1), gamma=GAMMA, transport_hidden=(16,), transport_batch_size=8, gradient_norm_every=4)
        t = trainer(36, callbacks=callbacks, enable_checkpointing=True, default_root_dir=tmp_path)
        t.fit(module, dm, ckpt_path=ckpt_path)
        return module, t

    stop_a = GradientNormStopping(tol=1e3, patience=100)  # counts evaluations, never stops
    # checkpoints at epoch boundaries, saved after the last batch of the epoch (Lightning resumes
    # those exactly; with every_n_epochs it shifts the data order by one batch on resume)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    full, full_trainer = run(None, [stop_a, checkpoints])
    mid = tmp_path / "ckpt" / "epoch=5-step=18.ckpt"  # after 18 of the 36 iterations
    assert mid.exists(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    stop_b = GradientNormStopping(tol=1e3, patience=100)
    resumed, resumed_trainer = run(str(mid), [stop_b])
    a, b = _state(full, full_trainer), _state(resumed, resumed_trainer)
    assert a["iteration"] == b["iteration"] == 36
    for key in ("samples", "momentum"):
        assert torch.equal(a[key], b[key]), key
    for key in ("params", "sgd", "adam"):
        assert all(torch.equal(p, q) for p, q in zip(a[key], b[key])), key
    assert a["history"] == b["history"]
    assert stop_a.state_dict() == stop_b.state_dict() and stop_a.wait_count == 9

    # the checkpoint alone rebuilds the module: every particle and the default transport map
    loaded = WorstCaseGenerator.load_from_checkpoint(tmp_path / "ckpt" / "epoch=11-step=36.ckpt", model=nn.Linear(2, 1))
    assert torch.equal(loaded.particles.samples, full.particles.samples)
    x_new = torch.randn(5, 2)
    assert torch.equal(loaded.transport(x_new), full.transport(x_new))


# --------------------------------------------------------------------------- divergence
def test_divergence_raises_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    pl.seed_everything(3, verbose=False)
    dm = regression_dm(n=40, batch_size=64)
    linear = nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 1.0]]))
    # gamma * curvature = 1e3 * 2 ||w||^2 >> 1: the inner maximisation is unbounded
    module = WorstCaseGenerator(linear, gamma=1e3, particle_lr=5.0, model_lr=1e-6, transport_hidden=(8,))
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=-1)
    # a second checkpointer that saves when the exception is raised: it too gets the last good state
    on_exception = ModelCheckpoint(dirpath=tmp_path / "on_exception", every_n_train_steps=1000, save_last=True, save_on_exception=True)
    with pytest.raises(DivergenceError, match="smaller gamma"):
        trainer(500, callbacks=[checkpoints, on_exception], enable_checkpointing=True).fit(module, dm)
    failed_at = module.iteration + 1
    assert 2 <= failed_at < 500  # the particles' distance bound (max_transport_ratio) stops it at iteration 2
    assert torch.isfinite(module.particle_table.samples).all()  # the failing step wrote nothing
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == module.iteration  # the checkpoint of the last good iteration
    restored = WorstCaseGenerator.load_from_checkpoint(tmp_path / "last.ckpt", model=nn.Linear(2, 1))
    assert torch.isfinite(restored.particles.samples).all()
    assert torch.equal(restored.particles.samples, module.particles.samples)
    saved = torch.load(tmp_path / "on_exception" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == module.iteration
    assert torch.equal(saved["state_dict"]["particle_table._extra_state"]["samples"], module.particles.samples)


# --------------------------------------------------------------------------- warm-up
def test_model_warmup_keeps_the_particles_at_the_data_then_releases_them() -> None:
    pl.seed_everything(4, verbose=False)
    dm = regression_dm(n=32, batch_size=64)
    model = nn.Linear(2, 1)
    start = [p.detach().clone() for p in model.parameters()]
    module = WorstCaseGenerator(model, gamma=GAMMA, model_warmup_steps=5, transport_hidden=(8,), gradient_norm_every=0)
    trainer(5).fit(module, dm)
    assert torch.equal(module.particles.samples, module.particles.origins)  # clean training only
    assert not torch.equal(start[0], model.weight)
    trainer(2).fit(module, dm)  # iterations 6 and 7: the particles move
    assert module.iteration == 7
    assert (module.particles.samples - module.particles.origins).abs().max() > 0


# --------------------------------------------------------------------------- without our DataModules
def test_plain_dataloader_with_num_particles_fills_the_table_lazily() -> None:
    x, y = regression_data(32)
    index = torch.arange(32)
    # two batches per pass, fixed order; the matching map is given explicitly
    loader = DataLoader(TensorDataset(x, y, index), batch_size=16, shuffle=False)
    torch.manual_seed(0)
    module = WorstCaseGenerator(
        nn.Linear(2, 1), gamma=GAMMA, num_particles=32, transport_map=ResidualTransportMap(2, hidden=(8,)), gradient_norm_every=0
    )
    t = trainer(1)
    t.fit(module, loader)
    assert not module.particle_table.complete
    assert module.particles.samples.shape == (16, 2)  # only the rows seen so far
    t = trainer(8)
    t.fit(module, loader)
    assert module.particle_table.complete and module.particles.samples.shape == (32, 2)
    torch.testing.assert_close(module.particles.origins, x)
    torch.testing.assert_close(module.particles.targets, y)
    assert (module.particles.samples - x).abs().max() > 0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -1.0}, "gamma"),
        ({"model_lr": -0.1}, "model_lr"),
        ({"particle_lr": -0.1}, "particle_lr"),
        ({"transport_lr": 0.0}, "transport_lr"),
        ({"particle_momentum": 1.0}, "particle_momentum"),
        ({"loss": "hinge"}, "loss"),
        ({"transport_batch_size": 0}, "transport_batch_size"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WorstCaseGenerator(nn.Linear(2, 1), **kwargs)


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="model"):
        WorstCaseGenerator(lambda x: x)  # type: ignore[arg-type]


def test_a_batch_without_indices_is_refused() -> None:
    x, y = regression_data(16)
    dm = TensorDataModule(x, y, x_test=x, y_test=y, val_fraction=0.0, batch_size=8)  # return_index=False
    with pytest.raises(ValueError, match="return_index=True"):
        trainer(1).fit(WorstCaseGenerator(nn.Linear(2, 1)), dm)


def test_a_model_output_that_does_not_fit_the_loss_is_refused() -> None:
    with pytest.raises(ValueError, match=r"output of shape \(8, 3\) does not fit targets"):
        trainer(1).fit(WorstCaseGenerator(nn.Linear(2, 3)), regression_dm(n=8))


def test_targets_of_the_wrong_shape_are_refused() -> None:
    x, _ = regression_data(8)
    dm = TensorDataModule(x, torch.randn(8, 2), x_test=x, y_test=torch.randn(8, 2), val_fraction=0.0, batch_size=8, return_index=True)
    with pytest.raises(ValueError, match="does not fit targets of shape"):
        trainer(1).fit(WorstCaseGenerator(nn.Linear(2, 1)), dm)


def test_class_labels_out_of_range_are_refused() -> None:
    x, _ = regression_data(8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    dm = TensorDataModule(x, labels, x_test=x, y_test=labels, val_fraction=0.0, batch_size=8, return_index=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        trainer(1).fit(WorstCaseGenerator(nn.Linear(2, 3), loss="cross_entropy"), dm)


def test_fp16_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        trainer(1, precision="16-true").fit(WorstCaseGenerator(nn.Linear(2, 1)), regression_dm(n=8))


# --------------------------------------------------------------------------- review fixes
def test_a_lambda_loss_that_cannot_be_pickled_trains() -> None:
    pl.seed_everything(6, verbose=False)
    module = WorstCaseGenerator(
        nn.Linear(2, 1), loss=lambda o, t: (o.squeeze(1) - t) ** 2, gamma=GAMMA, transport_hidden=(8,), gradient_norm_every=2
    )
    trainer(3).fit(module, regression_dm(n=16, batch_size=8))
    assert module.iteration == 3 and "gn_T" in module.gradient_norms
    assert (module.particles.samples - module.particles.origins).abs().max() > 0


def test_transport_after_loading_a_float64_checkpoint(tmp_path: Path) -> None:
    pl.seed_everything(7, verbose=False)
    module = WorstCaseGenerator(nn.Linear(2, 1), gamma=GAMMA, transport_hidden=(8,), transport_lr=1e-2, gradient_norm_every=0)
    t = trainer(3, precision="64-true")
    t.fit(module, regression_dm(n=16, batch_size=8))
    t.save_checkpoint(tmp_path / "f64.ckpt")
    loaded = WorstCaseGenerator.load_from_checkpoint(tmp_path / "f64.ckpt", model=nn.Linear(2, 1))
    x_new = torch.randn(5, 2)
    moved = loaded.transport(x_new)
    assert moved.dtype == torch.float64
    torch.testing.assert_close(moved, module.transport(x_new), rtol=0, atol=0)
    assert not torch.equal(moved, x_new.double())  # the map was trained: not the identity


def test_logging_and_gradient_norms_do_not_change_training(tmp_path: Path) -> None:
    """BatchNorm statistics and dropout's random numbers see only the N training forwards."""
    from lightning.pytorch.loggers import CSVLogger

    def run(**kwargs) -> WorstCaseGenerator:
        pl.seed_everything(8, verbose=False)
        model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 1))
        module = WorstCaseGenerator(model, gamma=GAMMA, transport_hidden=(8,), gradient_norm_every=kwargs.pop("every"))
        trainer(5, **kwargs).fit(module, regression_dm(n=16, batch_size=8))
        return module

    quiet = run(every=0)
    watched = run(every=1, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    for module in (quiet, watched):
        assert int(module.model[1].num_batches_tracked) == 5
        assert module.model.training  # the previous mode is restored
    assert len(watched.gradient_norm_history) == 5
    for p, q in zip(quiet.model.state_dict().values(), watched.model.state_dict().values()):
        assert torch.equal(p, q)
    assert torch.equal(quiet.particles.samples, watched.particles.samples)


def test_class_labels_out_of_range_beyond_the_first_batch_are_refused() -> None:
    x, _ = regression_data(16)
    labels = torch.tensor([0, 1, 2] * 5 + [0])
    labels[BAD_LABEL_AT] = 5
    dm = TensorDataModule(x, labels, x_test=x, y_test=labels, val_fraction=0.0, batch_size=4, return_index=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*3 outputs.*labels in \[0, 5\]"):
        trainer(4).fit(WorstCaseGenerator(nn.Linear(2, 3), loss="cross_entropy", transport_hidden=(8,)), dm)
    # a plain DataLoader (lazily filled table): the batch that brings the bad label is refused
    loader = DataLoader(TensorDataset(x, labels, torch.arange(16)), batch_size=4, shuffle=False)
    module = WorstCaseGenerator(nn.Linear(2, 3), loss="cross_entropy", num_particles=16, transport_map=ResidualTransportMap(2, hidden=(8,)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        trainer(4).fit(module, loader)


BAD_LABEL_AT = 13


def test_dataset_indices_beyond_num_particles_are_refused() -> None:
    x, y = regression_data(32)
    loader = DataLoader(TensorDataset(x, y, torch.arange(32)), batch_size=16, shuffle=False)
    module = WorstCaseGenerator(nn.Linear(2, 1), num_particles=16, transport_map=ResidualTransportMap(2, hidden=(8,)), gradient_norm_every=0)
    with pytest.raises(ValueError, match=r"num_particles=16.*index 31"):
        trainer(2).fit(module, loader)


def test_trajectory_matches_hand_written_gda_updates() -> None:
    """Full batch, float64: the module's iterates equal DESIGN.md 3.1's updates written out here
    (particles ascend with their own heavy-ball momentum, the model descends with SGD momentum,
    dampening 0, both from the same (theta, v) of the iteration)."""
    eta, tau, mu, mu_v, gamma, steps = 0.03, 0.07, 0.6, 0.8, 0.5, 4
    pl.seed_everything(9, verbose=False)
    x32, y32 = regression_data(24)  # float32 data: exact in float64 too
    dm = TensorDataModule(x32, y32, x_test=x32, y_test=y32, val_fraction=0.0, batch_size=64, return_index=True)
    model = nn.Linear(2, 1)
    w, b = model.weight.detach().double().clone().reshape(-1), model.bias.detach().double().clone()[0]
    module = WorstCaseGenerator(
        model, gamma=gamma, model_lr=eta, model_momentum=mu, particle_lr=tau, particle_momentum=mu_v,
        transport_hidden=(8,), gradient_norm_every=0,
    )
    trainer(steps, precision="64-true").fit(module, dm)

    x, y = x32.double(), y32.double()
    v, g = x.clone(), torch.zeros_like(x)
    hw, hb = torch.zeros_like(w), torch.zeros_like(b)
    for _ in range(steps):
        r = v @ w + b - y                               # residuals at the current particles
        grad_v = 2 * r[:, None] * w                     # d_v (w.v + b - y)^2
        grad_w, grad_b = (2 * r[:, None] * v).mean(0), (2 * r).mean()
        g = mu_v * g + grad_v - (v - x) / gamma         # particle ascent, heavy ball
        v = v + tau * g
        hw, hb = mu * hw + grad_w, mu * hb + grad_b     # model descent, SGD momentum, dampening 0
        w, b = w - eta * hw, b - eta * hb
    assert module.iteration == steps
    torch.testing.assert_close(module.particles.samples, v, rtol=0, atol=1e-12)
    torch.testing.assert_close(module.particle_table.momentum, g, rtol=0, atol=1e-12)
    torch.testing.assert_close(module.model.weight.detach().reshape(-1), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(module.model.bias.detach()[0], b, rtol=0, atol=1e-12)
    assert (v - x).abs().max() > 1e-3  # the particles moved: the comparison is not trivial
