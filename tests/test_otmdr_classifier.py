"""OTMDRClassifier: single / ensemble / BNN with OT-MDR, SAM or the base optimizer; metrics; configs; demo."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_wass import OTMDR, SAM, OTMDRClassifier
from lightning_wass.datamodules import DigitsDataModule
from lightning_wass.nn import BayesianMLPClassifier, ConvClassifier, MLPClassifier, kl_divergence
from lightning_wass.nn.bayesian import bayesian_layers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def digits(num_samples: int | None = 400, batch_size: int = 64) -> DigitsDataModule:
    return DigitsDataModule(batch_size=batch_size, num_samples=num_samples, val_fraction=0.15, test_fraction=0.25, seed=0)


def trainer(**kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.mark.parametrize("method, optimizer_type", [("base", torch.optim.SGD), ("sam", SAM), ("otmdr", OTMDR)])
def test_each_method_trains_and_reports_the_four_metrics(method, optimizer_type):
    pl.seed_everything(0, verbose=False)
    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(64,)), method=method, lr=0.1, rho=[0.02, 0.02] if method == "otmdr" else 0.02)
    dm = digits(num_samples=None)
    t = trainer(max_epochs=5)
    t.fit(model, dm)
    assert type(t.optimizers[0]) is optimizer_type
    assert {"val/acc", "val/nll", "val/ece", "val/brier"} <= set(t.callback_metrics)
    result = t.test(model, dm, verbose=False)[0]
    assert set(result) == {"test/acc", "test/nll", "test/ece", "test/brier", "test/ece_ts", "test/nll_ts"}
    assert result["test/acc"] > 0.85  # chance is 0.1


def test_logged_metrics_match_a_reference_computation():
    pl.seed_everything(0, verbose=False)
    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(32,)), method="sam", lr=0.1, ece_bins=15)
    dm = digits()
    t = trainer(max_epochs=2)
    t.fit(model, dm)
    result = t.test(model, dm, verbose=False)[0]
    x, y = dm.tensors("test")
    model.eval()
    with torch.no_grad():
        probs = model(x).double().numpy()
    y = y.numpy()
    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs((predicted[inside] == y[inside]).mean() - confidence[inside].mean())
    onehot = np.eye(10)[y]
    assert result["test/acc"] == pytest.approx((predicted == y).mean(), abs=1e-6)
    assert result["test/nll"] == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean(), rel=1e-4)
    assert result["test/brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean(), rel=1e-4)
    assert result["test/ece"] == pytest.approx(ece, abs=1e-4)


def test_ensemble_trains_members_together_on_the_mixture_likelihood():
    torch.manual_seed(0)
    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(16,)), ensemble_size=3, method="otmdr")
    members = list(model.model.members)
    assert len(members) == 3
    assert not torch.equal(members[0].net.net[0].weight, members[1].net.net[0].weight)  # re-initialised copies
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    expected = torch.log(torch.stack([F.softmax(m(x), -1) for m in members]).mean(0))
    torch.testing.assert_close(model.log_probs(x), expected)
    torch.testing.assert_close(model.data_loss(model.log_probs(x), y), F.nll_loss(expected, y))
    optimizer = model.build_optimizer()
    assert isinstance(optimizer, OTMDR)
    stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert stepped == {id(p) for p in model.model.parameters()}  # one optimizer, one global norm


def test_label_smoothing_loss():
    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(16,)), label_smoothing=0.1)
    logits = torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    expected = F.cross_entropy(logits, y, label_smoothing=0.1)
    torch.testing.assert_close(model.data_loss(F.log_softmax(logits, -1), y), expected)


class RecordingClassifier(OTMDRClassifier):
    """Records, per training pass, the batch size and the Bayesian layers' noise seed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record: list[tuple[int, int, int | None]] = []

    def log_probs(self, x, samples=1, draw_seeds=None):
        if self.training:
            self.record.append((self.global_step, int(x.shape[0]), None if draw_seeds is None else tuple(draw_seeds)))
        return super().log_probs(x, samples, draw_seeds)


def test_bnn_elbo_chunked_halves_and_noise_shared_within_a_step():
    pl.seed_everything(0, verbose=False)
    model = RecordingClassifier(BayesianMLPClassifier((1, 8, 8), hidden=(16,)), method="otmdr", base_optimizer="adam", lr=1e-3,
                                rho=[0.005, 0.01], noise_std=0.01, kl_weight=0.5)
    dm = digits(num_samples=256, batch_size=64)
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(model, dm)
    # official chain: ascent passes on the two halves, final pass on the whole batch
    steps = sorted({s for s, _, _ in model.record})
    assert len(steps) == math.ceil(dm.train_size / 64)
    for step in steps:
        passes = [(n, seed) for s, n, seed in model.record if s == step]
        sizes = [n for n, _ in passes]
        b = sizes[-1]
        assert sizes == [(b + 1) // 2, b // 2, b]  # B1, B2 at the ascent steps; the whole batch B at the end
        assert len({seed for _, seed in passes}) == 1  # the same weight noise on every pass of the step
    assert len({seed for _, _, seed in model.record}) == len(steps)  # fresh noise each step
    # the KL is divided by the training-set size
    assert model._train_size == dm.train_size
    torch.testing.assert_close(model.kl_term(), 0.5 * kl_divergence(model.model) / dm.train_size)
    groups = t.optimizers[0].param_groups
    assert [g["perturb"] for g in groups] == [True, False]  # means perturbed, sigmas not


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path):
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class CountBatches(Callback):
        count = 0

        def on_train_batch_end(self, *args, **kwargs):
            self.count += 1

    def run(ckpt: str | None = None) -> tuple[OTMDRClassifier, int]:
        pl.seed_everything(0, verbose=False)
        model = OTMDRClassifier(ConvClassifier(width=4), method="otmdr", rho=[0.02, 0.02], noise_std=1e-3, num_particles=2)
        saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        counter = CountBatches()
        t = trainer(max_epochs=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[saver, counter], default_root_dir=str(tmp_path))
        t.fit(model, digits(num_samples=192), ckpt_path=ckpt)
        return model, counter.count

    uninterrupted, n_full = run()
    resumed, n_resumed = run(str(tmp_path / "epoch=0.ckpt"))  # from the end of the first epoch
    assert n_resumed * 2 == n_full  # it really resumed: only the second epoch ran
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_stock_fp16_is_refused_before_training_and_sam_mixed_precision_trains():
    # on a GPU precision="16-mixed" means a GradScaler; on CPU Lightning substitutes bf16, so build the plugins
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_wass import SAMMixedPrecision

    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(8,)), method="sam")
    before = [p.detach().clone() for p in model.parameters()]
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="(?s)16-mixed.*SAMMixedPrecision"):
        trainer(plugins=[plugin]).fit(model, digits(num_samples=100))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    t = trainer(plugins=[SAMMixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    t.fit(model, digits(num_samples=100))
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert torch.isfinite(t.callback_metrics["train/loss_epoch"])


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(method="adamw"), ValueError, "method"),
        (dict(method="sam", rho=[0.05, 0.1]), ValueError, "one radius"),
        (dict(ensemble_size=0), ValueError, "ensemble_size"),
        (dict(rho=-1.0), ValueError, "rho"),
        (dict(rho=[0.1, 0.1], ascent_steps=3), ValueError, "ascent_steps"),
        (dict(base_optimizer="lbfgs"), ValueError, "base_optimizer"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(mc_samples=0), ValueError, "mc_samples"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        OTMDRClassifier(MLPClassifier((1, 8, 8)), **kwargs)
    with pytest.raises(TypeError, match="network"):
        OTMDRClassifier("mlp")


@pytest.mark.parametrize("config", ["otmdr_digits.yaml", "otmdr_digits_ensemble.yaml", "otmdr_digits_bnn.yaml"])
def test_digits_example_configs_run(config, tmp_path):
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["fit", "--config", str(EXAMPLES / config), "--trainer.fast_dev_run=true",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
        save_config_kwargs={"overwrite": True},
    )


@pytest.mark.parametrize("config", ["otmdr_cifar10_wrn.yaml", "otmdr_cifar10_ensemble.yaml", "otmdr_cifar10_bnn.yaml"])
def test_cifar_example_configs_build(config):
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(EXAMPLES / config), "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false"],
    )
    assert isinstance(cli.model, OTMDRClassifier)
    assert cli.model.hparams.method == "otmdr"
    x = torch.rand(2, 3, 32, 32)
    member = copy.deepcopy(cli.model.model.members[0]).eval()
    with torch.no_grad():
        assert member(x).shape == (2, 10)


def test_demo_part_runs_quickly_and_writes_its_figure(tmp_path):
    from lightning_wass.demo import run_demo

    sections = run_demo(out=tmp_path, parts=["otmdr"], quick=True)
    assert len(sections) == 1
    assert (tmp_path / "figures" / "otmdr_calibration.png").stat().st_size > 10_000
    report = (tmp_path / "report.md").read_text()
    for method in ("SGD", "SAM", "OT-MDR"):
        assert f"| {method} |" in report
    assert "ECE" in report and "Brier" in report


# ------------------------------------------------------------------ ensembles of different networks, label checks
def test_an_ensemble_of_different_networks_is_trained_as_one_mixture_with_one_gradient_norm():
    from lightning_wass.nn import Ensemble

    nets = [MLPClassifier((1, 8, 8), hidden=(16,)), MLPClassifier((1, 8, 8), hidden=(8, 8)), ConvClassifier(in_channels=1, width=4)]
    model = OTMDRClassifier(nets, method="sam", rho=0.05)
    assert isinstance(model.model, Ensemble) and list(model.model.members) == nets
    x = torch.rand(5, 1, 8, 8)
    probs = model(x)
    assert probs.shape == (5, 10)
    expected = torch.stack([torch.softmax(n(x), -1) for n in nets]).mean(0)  # the mixture of the members
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    passed = Ensemble(nets)
    assert OTMDRClassifier(passed).model is passed  # an Ensemble is used as it is, not wrapped again
    before = [p.detach().clone() for p in model.parameters()]
    trainer(max_epochs=1).fit(model, digits(num_samples=128))
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    assert all(moved)  # every member was stepped by the one optimizer
    with pytest.raises(ValueError, match="ensemble_size=2 but network holds 3 members"):
        OTMDRClassifier(nets, ensemble_size=2)
    with pytest.raises(ValueError, match="same module more than once"):
        OTMDRClassifier([nets[0], nets[0]])
    with pytest.raises(TypeError, match=r"network\[1\] must be a torch.nn.Module"):
        OTMDRClassifier([nets[0], "resnet"])


class ScaledNet(nn.Module):
    """A network with a bare parameter (no reset_parameters of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 10)
        self.temperature = nn.Parameter(torch.linspace(0.5, 1.5, 10))
        self.one = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.body(x.flatten(1)) * self.temperature * self.one


def test_copies_of_one_network_reinitialise_every_parameter():
    model = OTMDRClassifier(ScaledNet(), ensemble_size=3)
    first, second, third = model.model.members
    for name, p in first.named_parameters():
        if name == "one":
            assert torch.equal(p, getattr(second, name))  # a constant initial value is its initialisation
            continue
        assert not torch.equal(p, dict(second.named_parameters())[name]), name
        assert not torch.equal(dict(second.named_parameters())[name], dict(third.named_parameters())[name]), name


@pytest.mark.parametrize(
    "labels, words",
    [
        (torch.tensor([0, 1, 10, 2]), r"label 10 is out of range for num_classes=10"),
        (torch.tensor([0, -1, 3, 2]), r"label -1 is out of range for num_classes=10"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"integer class labels.*torch.float32"),
    ],
)
def test_bad_labels_are_refused_naming_the_label_and_num_classes(labels, words):
    from torch.utils.data import DataLoader, TensorDataset

    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(8,)), method="sam")
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorDataset(torch.rand(4, 1, 8, 8), labels), batch_size=4)
    with pytest.raises(ValueError, match=words):
        trainer(max_epochs=1).fit(model, loader)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_a_network_whose_width_is_not_num_classes_is_refused_at_the_first_batch():
    model = OTMDRClassifier(MLPClassifier((1, 8, 8), hidden=(8,), num_classes=5), num_classes=10, method="sam")
    with pytest.raises(ValueError, match="network outputs 5 logits per sample but num_classes=10"):
        trainer(max_epochs=1).fit(model, digits(num_samples=100))


def test_bnn_monte_carlo_draws_differ_and_the_estimate_variance_falls_as_one_over_s():
    torch.manual_seed(0)
    model = OTMDRClassifier(BayesianMLPClassifier((1, 8, 8), hidden=(16,)), train_samples=1)
    for layer in bayesian_layers(model.model):  # wider posteriors, so the draws visibly matter
        with torch.no_grad():
            for name in layer._names:
                getattr(layer, f"{name}_rho").fill_(-1.0)
    model.train()
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        single = [model.log_probs(x, 1, [seed]).exp()[0, 0] for seed in range(2)]
        assert not torch.equal(single[0], single[1])
        variances = {}
        for S in (1, 4, 16):
            estimates = torch.stack([model.log_probs(x, S, [1000 * trial + s for s in range(S)]).exp()[0, 0]
                                     for trial in range(300)])
            variances[S] = float(estimates.var())
    # the mean of S independent draws of p(y|x, w): variance sigma^2 / S
    assert 0.7 < variances[1] / variances[4] / 4 < 1.4
    assert 0.7 < variances[1] / variances[16] / 16 < 1.4


@pytest.mark.parametrize("pattern", ["shared", "official"])
def test_bnn_noise_patterns_across_the_passes_of_one_step(pattern):
    model = RecordingClassifier(BayesianMLPClassifier((1, 8, 8), hidden=(16,)), method="otmdr", base_optimizer="adam",
                                lr=1e-3, rho=[0.005, 0.01], noise_std=0.0, train_samples=3, bnn_noise=pattern)
    trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(model, digits(num_samples=128))
    b1, b2, final = [seeds for _, _, seeds in model.record]
    assert len(set(b1)) == 3  # three different draws within a pass
    if pattern == "shared":
        assert b1 == b2 == final
    else:  # official: fresh draws per ascent pass; the final pass reuses the last draw of B2 for all draws
        assert set(b1).isdisjoint(b2)
        assert final == (b2[-1],) * 3


def test_official_label_smoothing_puts_eps_over_c_minus_1_on_the_wrong_classes():
    # the official smooth_crossentropy: target (1 - eps) on y, eps / (C - 1) elsewhere; KL(target || p)
    model = OTMDRClassifier(MLPClassifier((1, 8, 8)), label_smoothing=0.1, label_smoothing_mode="others")
    log_probs = torch.log_softmax(torch.randn(6, 10), -1)
    y = torch.tensor([0, 3, 9, 2, 2, 5])
    target = torch.full((6, 10), 0.1 / 9).scatter_(1, y[:, None], 0.9)
    kl = F.kl_div(log_probs, target, reduction="none").sum(-1).mean()
    entropy = -(target * target.log()).sum(-1).mean()
    torch.testing.assert_close(model.data_loss(log_probs, y), kl + entropy)
    uniform = OTMDRClassifier(MLPClassifier((1, 8, 8)), label_smoothing=0.1)
    torch.testing.assert_close(uniform.data_loss(log_probs, y), F.cross_entropy(log_probs, y, label_smoothing=0.1))


# ------------------------------------------------------------------ ensemble diversity and temperature scaling
def test_pairwise_disagreement_is_the_mean_over_member_pairs_of_differing_predictions():
    from lightning_wass.modules.classifier_metrics import PairwiseDisagreement

    # three members, four samples; predicted classes per member written out
    predicted = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0], [1, 1, 2, 0]])
    probs = F.one_hot(predicted, 4).float() * 0.7 + 0.075
    metric = PairwiseDisagreement()
    metric.update(probs)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([[float(predicted[a, n] != predicted[b, n]) for a, b in pairs] for n in range(4)])
    assert float(metric.compute()) == pytest.approx(expected)


def test_fitted_temperature_recovers_the_temperature_that_generated_the_labels():
    from lightning_wass.modules.classifier_metrics import fit_temperature

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 5, generator=g)
    labels = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=g).squeeze(1)  # calibrated at T = 2
    temperature = fit_temperature(torch.log_softmax(logits, -1), labels)
    assert float(temperature) == pytest.approx(2.0, rel=0.05)


def test_an_ensemble_logs_disagreement_and_temperature_scaled_calibration():
    nets = [MLPClassifier((1, 8, 8), hidden=(16,)), MLPClassifier((1, 8, 8), hidden=(8,))]
    model = OTMDRClassifier(nets, method="sam", rho=0.05, lr=0.05)
    dm = digits(num_samples=256)
    t = trainer(max_epochs=2)
    t.fit(model, dm)
    assert 0.0 <= float(t.callback_metrics["val/disagreement"]) <= 1.0
    temperature = float(model.temperature)
    assert temperature > 0 and float(t.callback_metrics["val/temperature"]) == pytest.approx(temperature)
    # the fitted temperature does not raise the validation NLL (it minimises it)
    model.eval()
    with torch.no_grad():
        x, y = dm.tensors("val")
        log_probs = model.log_probs(x)
    nll = F.nll_loss(log_probs, y)
    nll_tempered = F.cross_entropy(log_probs / temperature, y)
    assert float(nll_tempered) <= float(nll) + 1e-6
    results = t.test(model, dm, verbose=False)[0]
    assert {"test/ece_ts", "test/nll_ts", "test/disagreement", "test/ece"} <= set(results)
