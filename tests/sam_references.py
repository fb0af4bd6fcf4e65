"""Hand-written references for the SAM-family tests, from the documented update rules.

Each reference is written out parameter by parameter from the papers' and the public codes' rules
(davda54/sam's ``first_step`` / ``second_step``; the official OT-MDR ``SAM_batch_chain`` and
``SAMnChain``), not from our optimizer's code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_mlp(seed: int = 0, batch_norm: bool = False, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 16)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def make_batches(n_batches: int = 4, size: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n_batches)]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def closure_for(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, chunks: bool = False):
    """The closure contract: clear, forward (this pass's chunk with ``chunks``), backward, return the loss."""

    def closure():
        optimizer.zero_grad()
        xb, yb = optimizer.current_pass.select(x, y) if chunks else (x, y)
        loss = loss_fn(model, xb, yb)
        loss.backward()
        return loss

    return closure


def grads_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss_fn(model, x, y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((g**2).sum() for g in grads))


def sam_step(model: nn.Module, base: torch.optim.Optimizer, x, y, rho: float, adaptive: bool = False) -> None:
    """davda54/sam: e = rho g / (||g|| + 1e-12) (adaptive: rho |theta|^2 g / (||theta * g|| + 1e-12));
    step at theta with grad L(theta + e)."""
    params = list(model.parameters())
    g = grads_at(model, x, y)
    with torch.no_grad():
        if adaptive:
            n = torch.sqrt(sum(((p.abs() * gi) ** 2).sum() for p, gi in zip(params, g)))
            e = [rho * p.pow(2) * gi / (n + 1e-12) for p, gi in zip(params, g)]
        else:
            n = norm(g)
            e = [rho * gi / (n + 1e-12) for gi in g]
        for p, ei in zip(params, e):
            p.add_(ei)
    g_adv = grads_at(model, x, y)
    with torch.no_grad():
        for p, ei, ga in zip(params, e, g_adv):
            p.sub_(ei)
            p.grad = ga
    base.step()


def chain_gradient(model: nn.Module, chunks: list[tuple[torch.Tensor, torch.Tensor]], whole, rho: tuple[float, ...],
                   summed: bool = True, averaged: bool = False) -> list[torch.Tensor]:
    """One particle of the official chain from the current theta: ascent step s on chunk s,
    theta_{s+1} = theta_s + rho_s d_s / ||g_s|| (d_s = g_0 + ... + g_s when summed, divided by s + 1
    when averaged: the official mode 1.1), then the gradient on the whole batch at the end point;
    theta is restored before returning."""
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    history: list[list[torch.Tensor]] = []
    for s, (xs, ys) in enumerate(chunks):
        g = grads_at(model, xs, ys)
        history.append(g)
        direction = [sum(parts) / (len(history) if averaged else 1) for parts in zip(*history)] if summed else g
        n = norm(g)
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(rho[s] * d / (n + 1e-12))
    final = grads_at(model, *whole)
    with torch.no_grad():
        for p, t in zip(params, theta0):
            p.copy_(t)
    return final


def step_with(model: nn.Module, base: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    base.step()
