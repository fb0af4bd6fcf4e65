"""Mean-field Gaussian Bayesian layers: KL, sampling distribution, shared noise, parameter groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence as torch_kl

from lightning_wass.nn import (
    BayesConv2d,
    BayesianConvClassifier,
    BayesianMLPClassifier,
    BayesLinear,
    bayesian_parameter_groups,
    kl_divergence,
    shared_noise,
    use_posterior_mean,
)
from lightning_wass.optim import OTMDR


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    layer = BayesLinear(7, 5, prior_sigma=0.3, init_mu_std=0.5, init_rho=-2.0, init_rho_std=0.5)
    expected = sum(
        torch_kl(Normal(getattr(layer, f"{n}_mu"), F.softplus(getattr(layer, f"{n}_rho"))), Normal(0.0, 0.3)).sum()
        for n in ("weight", "bias")
    )
    torch.testing.assert_close(layer.kl_divergence(), expected)
    net = nn.Sequential(layer, nn.ReLU(), BayesConv2d(1, 2, 3))
    torch.testing.assert_close(kl_divergence(net), layer.kl_divergence() + net[2].kl_divergence())
    assert float(kl_divergence(nn.Linear(2, 2))) == 0.0


def test_official_initialisation():
    torch.manual_seed(0)
    layer = BayesLinear(200, 100)
    assert layer.weight_rho.mean().item() == pytest.approx(-5.0, abs=0.01)
    assert layer.weight_mu.std().item() == pytest.approx(0.1, rel=0.05)
    torch.testing.assert_close(layer.sigma("weight"), torch.log1p(torch.exp(layer.weight_rho)))


def test_linear_output_has_the_reparameterised_gaussian_distribution():
    torch.manual_seed(0)
    layer = BayesLinear(4, 3, init_mu_std=1.0, init_rho=-1.0, init_rho_std=0.2)
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    with torch.no_grad():
        draws = torch.cat([layer(x) for _ in range(8000)])
    mean = x @ layer.weight_mu.T + layer.bias_mu
    var = x.square() @ layer.sigma("weight").square().T + layer.sigma("bias").square()
    torch.testing.assert_close(draws.mean(0), mean[0].detach(), atol=4 * (var[0].sqrt() / 90).max().item(), rtol=0)
    assert torch.allclose(draws.var(0), var[0].detach(), rtol=0.06)


def test_conv_uses_means_when_asked_and_matches_conv2d():
    torch.manual_seed(0)
    layer = BayesConv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    expected = F.conv2d(x, layer.weight_mu, layer.bias_mu, padding=1)
    layer.eval()
    with use_posterior_mean(layer):
        torch.testing.assert_close(layer(x), expected)
    assert not torch.allclose(layer(x), expected)  # eval mode samples by default (MC prediction)
    layer.train()
    with use_posterior_mean(layer):
        assert not torch.allclose(layer(x), expected)  # training always samples


def test_shared_noise_repeats_the_draws_inside_a_block_only():
    torch.manual_seed(0)
    net = BayesianMLPClassifier((1, 4, 4), num_classes=3, hidden=(8,))
    x = torch.randn(5, 1, 4, 4)
    with shared_noise(net, seed=11):
        a, b = net(x), net(x)
    with shared_noise(net, seed=12):
        c = net(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(net(x), net(x))


def test_reparameterisation_gives_gradients_to_means_and_sigmas():
    net = BayesianConvClassifier(in_channels=1, num_classes=3, width=4)
    net(torch.randn(4, 1, 8, 8)).square().sum().backward()
    for name, p in net.named_parameters():
        if name.endswith("_mu") or name.endswith("_rho"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_groups_put_sigmas_in_an_unperturbed_group():
    net = BayesianConvClassifier(in_channels=1, num_classes=3, width=4)
    groups = bayesian_parameter_groups(net, perturb_sigma=False)
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(names[id(p)].endswith("_rho") for p in groups[1]["params"]) and groups[1]["perturb"] is False
    assert not any(names[id(p)].endswith("_rho") for p in groups[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert bayesian_parameter_groups(net, perturb_sigma=True)[1]["perturb"] is True
    # OTMDR honours it: the sigmas stay put on the perturbed passes
    opt = OTMDR(groups, torch.optim.Adam, rho=0.5, ascent_steps=1, noise_std=0.0, lr=1e-3)
    sigmas = [p.detach().clone() for p in groups[1]["params"]]
    means = [p.detach().clone() for p in groups[0]["params"]]
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    seen = []

    def closure():
        opt.zero_grad()
        if opt.current_pass.perturbed:
            seen.append((all(torch.equal(p, s) for p, s in zip(groups[1]["params"], sigmas)),
                         any(not torch.equal(p, m) for p, m in zip(groups[0]["params"], means))))
        with shared_noise(net, 0):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert seen == [(True, True)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="prior_sigma"):
        BayesLinear(2, 2, prior_sigma=0.0)
    with pytest.raises(ValueError, match="out_features"):
        BayesLinear(2, 0)
    with pytest.raises(ValueError, match="groups"):
        BayesConv2d(3, 4, 3, groups=2)
