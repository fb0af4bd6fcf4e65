"""The official MNIST networks of arXiv:2407.11901 (POT_Flow_GAN_CNN.py): shapes, parameter counts
from the official layer list, and outputs against an independent NumPy forward pass written in the
official (TensorFlow NHWC) layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_wass import W1W2ProximalFlow
from lightning_wass.nn import ConvDiscriminator, ConvPotential, OfficialConvDiscriminator, OfficialConvPotential, official_init_
from lightning_wass.nn.mlp import count_parameters


def official_layer_list(image=(28, 28, 1), channels=(8, 8), gen_dims=(512, 512, 512), disc_dims=(256, 256, 256)):
    """The official variable shapes (POT_Flow_GAN_CNN.py lines 167-188), as TF shapes."""
    h, w, c = image
    k = min(h, w, 7)
    chans = [c, *channels]
    conv = [(k, k, chans[i], chans[i + 1]) for i in range(len(channels))]
    for _ in channels:
        h, w = (h + 1) // 2, (w + 1) // 2
    refdim = h * w * chans[-1]
    gen = [refdim + 1, *gen_dims, 1]
    disc = [refdim, *disc_dims, 1]
    g = conv + [(gen[i], gen[i + 1]) for i in range(len(gen) - 1)] + [(1, gen[i + 1]) for i in range(len(gen) - 1)]
    d = conv + [(disc[i], disc[i + 1]) for i in range(len(disc) - 1)] + [(1, disc[i + 1]) for i in range(len(disc) - 1)]
    return g, d


def test_parameter_counts_equal_the_official_layer_list():
    g, d = official_layer_list()
    n_g, n_d = sum(math.prod(s) for s in g), sum(math.prod(s) for s in d)
    # by hand: 7*7*1*8 + 7*7*8*8 = 3,528 conv weights; 393*512+512 + 2*(512*512+512) + 512+1 = 727,553
    assert (n_g, n_d) == (731_081, 235_977) == (3_528 + 727_553, 3_528 + 232_449)
    assert count_parameters(OfficialConvPotential()) == n_g
    assert count_parameters(OfficialConvDiscriminator()) == n_d
    # the existing conv nets have the same layers (they differ in feature order and initialisation)
    assert count_parameters(ConvPotential((1, 28, 28), activation="relu")) == n_g
    assert count_parameters(ConvDiscriminator((1, 28, 28))) == n_d


def test_shapes_and_time_input():
    torch.manual_seed(0)
    u, phi = OfficialConvPotential(), OfficialConvDiscriminator()
    x = torch.rand(5, 1, 28, 28)
    assert u(x, torch.zeros(5)).shape == (5,)
    assert u(x, 2.0).shape == (5,)
    assert phi(x).shape == (5,)
    assert not torch.allclose(u(x, 0.0), u(x, 4.0))  # t enters (official U is not zero-initialised)
    with pytest.raises(ValueError):
        phi(torch.rand(2, 1, 27, 28))


def _same_conv_nhwc(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """tf.nn.conv2d(a, kernel, strides=1, padding='SAME'), a (N, H, W, C), kernel (k, k, C, O)."""
    k = kernel.shape[0]
    before = (k - 1) // 2
    padded = np.pad(a, ((0, 0), (before, k - 1 - before), (before, k - 1 - before), (0, 0)))
    n, h, w, _ = a.shape
    out = np.zeros((n, h, w, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            out += padded[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return out


def _same_maxpool_nhwc(a: np.ndarray) -> np.ndarray:
    """tf.nn.max_pool2d(a, ksize=2, strides=2, padding='SAME') (padding never wins the max)."""
    n, h, w, c = a.shape
    padded = np.full((n, h + h % 2, w + w % 2, c), -np.inf)
    padded[:, :h, :w] = a
    return padded.reshape(n, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2, c).max(axis=(2, 4))


def _official_forward(x_nhwc, conv_w, w, b, t=None):
    """fun_U / discriminator of POT_Flow_GAN_CNN.py (lines 152-164, 190-223) in NumPy."""
    a = x_nhwc
    for kernel in conv_w:
        a = _same_maxpool_nhwc(np.maximum(_same_conv_nhwc(a, kernel), 0.0))
    n = a.shape[0]
    h = np.transpose(a, (3, 2, 1, 0)).reshape(-1, n).T  # the official flatten
    if t is not None:
        h = np.concatenate([h, t.reshape(n, 1)], axis=1)
    for i in range(len(w) - 1):
        h = np.maximum(h @ w[i] + b[i], 0.0)
    return (h @ w[-1] + b[-1]).reshape(n)


@pytest.mark.parametrize("image", [(28, 28, 1), (9, 7, 2)])
def test_outputs_match_a_numpy_forward_in_the_official_layout(image):
    rng = np.random.default_rng(0)
    g_shapes, d_shapes = official_layer_list(image, channels=(3, 4), gen_dims=(16, 16), disc_dims=(8,))
    n_conv = 2

    def arrays(shapes):
        a = [rng.normal(0.0, 0.3, size=s) for s in shapes]
        dense = a[n_conv:]
        half = len(dense) // 2
        return a[:n_conv], dense[:half], dense[half:]

    x = rng.uniform(0.0, 1.0, size=(4, *image))
    t = rng.uniform(0.0, 5.0, size=4)
    shape = (image[2], image[0], image[1])
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    g_conv, g_w, g_b = arrays(g_shapes)
    u = OfficialConvPotential(shape, channels=(3, 4), hidden=(16, 16)).double().load_official_weights(g_conv, g_w, g_b)
    expected = _official_forward(x, g_conv, g_w, g_b, t)
    np.testing.assert_allclose(u(x_torch, torch.from_numpy(t)).detach().numpy(), expected, rtol=1e-10, atol=1e-10)

    d_conv, d_w, d_b = arrays(d_shapes)
    phi = OfficialConvDiscriminator(shape, channels=(3, 4), hidden=(8,)).double().load_official_weights(d_conv, d_w, d_b)
    np.testing.assert_allclose(phi(x_torch).detach().numpy(), _official_forward(x, d_conv, d_w, d_b), rtol=1e-10, atol=1e-10)

    with pytest.raises(ValueError, match="does not fit"):
        phi.load_official_weights(g_conv, d_w[::-1], d_b)


def test_official_init_is_truncated_glorot_normal_with_zero_biases():
    torch.manual_seed(0)
    u = OfficialConvPotential()
    weight = u.mlp.net[2].weight  # 512 x 512: std sqrt(2 / 1024)
    std = math.sqrt(2.0 / 1024)
    assert float(weight.detach().std()) == pytest.approx(std, rel=0.02)
    assert float(weight.detach().abs().max()) <= 2 * std / 0.87962566103423978 + 1e-7
    conv = u.trunk.net[1].weight  # (8, 1, 7, 7): fan_in 49, fan_out 392
    assert float(conv.detach().abs().max()) <= 2 * math.sqrt(2.0 / (49 + 392)) / 0.87962566103423978 + 1e-7
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for layer in u.mlp.net if isinstance(layer, torch.nn.Linear))
    lin = official_init_(torch.nn.Linear(3, 2))
    assert float(lin.bias.detach().abs().max()) == 0.0


def test_usable_in_the_proximal_flow():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = W1W2ProximalFlow(
        shape,
        potential=OfficialConvPotential(shape, channels=(2,), hidden=(16,)),
        discriminator=OfficialConvDiscriminator(shape, channels=(2,), hidden=(16,)),
        T=5.0, num_steps=5, alpha=0.05, L=1.0, reference="uniform", reference_range=(0.0, 0.5),
    )
    x = model.sample(3)
    assert x.shape == (3, *shape) and torch.isfinite(x).all()
    with torch.enable_grad():
        indicators = model.optimality_indicators(torch.rand(6, *shape))
    assert all(torch.isfinite(v) for v in indicators.values())
