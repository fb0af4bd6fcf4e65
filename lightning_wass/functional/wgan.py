r"""Kantorovich-Rubinstein critic losses of the Wasserstein GAN family (pure torch, no Lightning).

Kantorovich-Rubinstein duality (Villani 2008, Thm 5.10):

    W1(P, Q) = sup_{||f||_L <= 1}  E_{x~P} f(x) - E_{y~Q} f(y).

WGAN (Arjovsky, Chintala & Bottou 2017, arXiv:1701.07875) maximises the *critic gap*
``E_data f - E_gen f`` over a critic ``f`` kept Lipschitz by clipping its weights to ``[-c, c]``;
WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028) instead adds the two-sided gradient penalty
``lambda E_{x_hat} (||grad f(x_hat)||_2 - 1)^2`` on random interpolates
``x_hat = eps x_data + (1 - eps) x_gen``, ``eps ~ U[0, 1]``; SN-GAN (Miyato et al. 2018,
arXiv:1802.05957) divides every weight by its spectral norm (``torch.nn.utils.parametrizations.spectral_norm``).
The generator minimises ``-E_z f(G(z))``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from lightning_wass._validation import check_callable, check_positive, check_tensor
from lightning_wass.functional.penalties import input_gradient_norms, interpolate

Critic = Callable[[Tensor], Tensor]


def _scores(name: str, value: Tensor) -> Tensor:
    """Critic scores: a real tensor with at least one score (no host sync: finiteness is the caller's)."""
    return check_tensor(name, value, item="critic score", finite=False)


def critic_gap(f_data: Tensor, f_gen: Tensor) -> Tensor:
    """The Kantorovich-Rubinstein estimate of ``W1``: ``mean f(data) - mean f(gen)`` (a 0-dim tensor)."""
    return _scores("f_data", f_data).mean() - _scores("f_gen", f_gen).mean()


def critic_loss(f_data: Tensor, f_gen: Tensor) -> Tensor:
    """The critic minimises ``mean f(gen) - mean f(data)`` (the negative critic gap)."""
    return -critic_gap(f_data, f_gen)


def generator_loss(f_gen: Tensor) -> Tensor:
    """The generator minimises ``-mean f(G(z))``."""
    return -_scores("f_gen", f_gen).mean()


def gradient_penalty(critic: Critic, data: Tensor, generated: Tensor, eps: Tensor, *, target: float = 1.0) -> Tensor:
    """WGAN-GP's penalty ``mean_i (||grad_x f(x_hat_i)||_2 - target)^2`` (without the weight ``lambda``).

    ``x_hat_i = eps_i data_i + (1 - eps_i) generated_i`` with ``eps`` of shape ``(n,)`` in ``[0, 1]``
    (the caller draws it, so the draw is reproducible). The gradient is taken with
    ``create_graph=True`` so that the penalty can be back-propagated into the critic's weights; it is
    not accumulated into any ``.grad`` (``torch.autograd.grad`` w.r.t. ``x_hat`` only).
    """
    check_callable("critic", critic)
    for name, value in (("data", data), ("generated", generated), ("eps", eps)):
        check_tensor(name, value, item="sample", finite=False)
    target = check_positive("target", target, allow_zero=True)
    if eps.numel() != data.shape[0]:
        raise ValueError(f"eps must hold one weight per sample ({data.shape[0]}), got shape {tuple(eps.shape)}")
    if data.shape != generated.shape:
        raise ValueError(f"data and generated must have the same shape, got {tuple(data.shape)} and {tuple(generated.shape)}")
    norms = input_gradient_norms(critic, interpolate(data, generated, eps.reshape(-1)))
    return (norms - target).square().mean()


@torch.no_grad()
def clip_weights(parameters: Iterable[nn.Parameter], clip_value: float) -> None:
    """Original WGAN's Lipschitz control: clamp every parameter to ``[-clip_value, clip_value]`` in place."""
    clip_value = check_positive("clip_value", clip_value)
    if isinstance(parameters, Tensor) or not isinstance(parameters, Iterable):
        raise TypeError(f"parameters must be an iterable of tensors (e.g. critic.parameters()), got {type(parameters).__name__}")
    for p in parameters:
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters must be an iterable of tensors (e.g. critic.parameters()), got an element of type {type(p).__name__}")
        p.clamp_(-clip_value, clip_value)


def lipschitz_estimate(critic: Critic, points: Tensor) -> Tensor:
    """``max_i ||grad_x f(x_i)||_2`` over ``points``: a lower bound of the critic's Lipschitz constant."""
    check_callable("critic", critic)
    check_tensor("points", points, item="point", finite=False)
    return input_gradient_norms(critic, points, create_graph=False).max()
