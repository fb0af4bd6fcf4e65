"""The SAM family keeps what it derives from the param groups between steps (``_step_run.Structure``:
the flat parameter list, the perturbed groups' slices, the layout, the id set of the BatchNorm freeze)
and re-derives it when the groups change. Every step here is compared with SAM computed by hand
from its definition (Foret et al.: ``e = rho g / ||g||`` over the perturbed parameters that have a
gradient, then the base step, plain SGD here, with the gradient at ``theta + e``), with gradients
from ``torch.autograd.grad`` on detached copies, not through the optimizer's code.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_wass._validation import DivergenceError
from lightning_wass.optim import SAM

RHO, LR = 0.05, 0.1


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)


def loss_of(values: list[torch.Tensor]) -> torch.Tensor:
    """A small two-layer regression loss of ``values = [w1, b1, w2, *extras]`` (every extra adds ``||extra||^2``)."""
    x, y = _inputs()
    w1, b1, w2, *extras = values
    loss = ((torch.tanh(x @ w1 + b1) @ w2 - y) ** 2).mean()
    for extra in extras:
        loss = loss + (extra**2).sum()
    return loss


def make_params(n_extra: int = 1) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (4,), (4, 2)] + [(2,)] * n_extra
    return [torch.nn.Parameter(torch.randn(*s, generator=generator)) for s in shapes]


def reference_step(values: list[torch.Tensor], active: list[bool], perturb: list[bool]) -> list[torch.Tensor]:
    """One SAM step by hand. ``active``: the parameter requires grad (else it gets no gradient and
    is neither perturbed nor stepped); ``perturb``: its group is perturbed."""

    def gradients(point: list[torch.Tensor]) -> list[torch.Tensor | None]:
        leaves = [v.detach().clone().requires_grad_(a) for v, a in zip(point, active)]
        wanted = [leaf for leaf, a in zip(leaves, active) if a]
        found = iter(torch.autograd.grad(loss_of(leaves), wanted, allow_unused=True))
        return [next(found) if a else None for a in active]

    g = gradients(values)
    norm = torch.sqrt(sum((gi.double() ** 2).sum() for gi, q in zip(g, perturb) if gi is not None and q))
    perturbed = [
        v + RHO * gi / (norm.float() + 1e-12) if gi is not None and q else v for v, gi, q in zip(values, g, perturb)
    ]
    g_at = gradients(perturbed)
    return [v - LR * gi if gi is not None else v for v, gi in zip(values, g_at)]


def closure_for(optimizer: SAM, params: list[torch.Tensor]):
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    return closure


def step_and_compare(optimizer: SAM, params: list[torch.Tensor], perturb: list[bool] | None = None) -> None:
    values = [p.detach().clone() for p in params]
    active = [p.requires_grad for p in params]
    expected = reference_step(values, active, perturb or [True] * len(params))
    optimizer.step(closure_for(optimizer, params))
    for i, (p, e) in enumerate(zip(params, expected)):
        torch.testing.assert_close(p.detach(), e, msg=lambda m, i=i: f"parameter {i}: {m}")


def structure(optimizer: SAM):
    return optimizer._progress.structure


def test_structure_is_reused_while_the_groups_stand() -> None:
    params = make_params()
    optimizer = SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    kept = structure(optimizer)
    for _ in range(3):
        step_and_compare(optimizer, params)
        assert structure(optimizer) is kept


def test_add_param_group_is_perturbed_and_stepped() -> None:
    params = make_params(n_extra=2)
    params[4].requires_grad_(False)  # not in the optimizer yet: the reference leaves it alone too
    optimizer = SAM(params[:4], torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    before = structure(optimizer)
    params[4].requires_grad_(True)
    optimizer.add_param_group({"params": [params[4]]})
    step_and_compare(optimizer, params)  # now it is in the norm, perturbed and stepped with the others
    assert structure(optimizer) is not before
    assert len(structure(optimizer).params) == 5


def test_load_state_dict_rebuilds_the_structure() -> None:
    params = make_params()
    optimizer = SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    before = structure(optimizer)
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # new group dicts
    step_and_compare(optimizer, params)
    assert structure(optimizer) is not before
    assert structure(optimizer).groups is optimizer.param_groups


def test_parameter_replaced_in_a_group() -> None:
    params = make_params()
    optimizer = SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    old = params[3]
    params[3] = torch.nn.Parameter(torch.full((2,), 0.7))
    optimizer.param_groups[0]["params"][3] = params[3]
    old_value = old.detach().clone()
    step_and_compare(optimizer, params)
    torch.testing.assert_close(old.detach(), old_value, rtol=0, atol=0)  # the replaced one is left alone
    assert structure(optimizer).params[3] is params[3]


def test_requires_grad_toggled_and_parameters_without_gradients() -> None:
    params = make_params(n_extra=2)
    optimizer = SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    params[1].requires_grad_(False)  # no gradient: neither in the norm nor perturbed nor stepped
    step_and_compare(optimizer, params)
    step_and_compare(optimizer, params)
    params[1].requires_grad_(True)
    params[4].requires_grad_(False)
    step_and_compare(optimizer, params)
    params[4].requires_grad_(True)
    step_and_compare(optimizer, params)


def test_perturb_flag_set_after_construction() -> None:
    params = make_params()
    optimizer = SAM([{"params": params[:3]}, {"params": params[3:]}], torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    optimizer.param_groups[1]["perturb"] = False
    step_and_compare(optimizer, params, perturb=[True, True, True, False])
    optimizer.param_groups[1]["perturb"] = True
    step_and_compare(optimizer, params)


@pytest.mark.parametrize("new_shape", [(2,), (5,), (1, 2)], ids=["same-layout", "longer", "other-rank"])
def test_parameter_given_new_storage(new_shape: tuple[int, ...]) -> None:
    params = make_params()
    optimizer = SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    with torch.no_grad():
        params[3].data = torch.linspace(-1.0, 1.0, 2 if len(new_shape) > 1 else new_shape[0]).reshape(new_shape)
    step_and_compare(optimizer, params)
    assert structure(optimizer).layout[3][0] == torch.Size(new_shape)
    step_and_compare(optimizer, params)


def test_rollback_after_the_structure_changed_restores_the_new_parameters() -> None:
    params = make_params()
    optimizer = SAM(params, torch.optim.SGD, rho=RHO, lr=LR)
    step_and_compare(optimizer, params)
    extra = torch.nn.Parameter(torch.ones(3))
    optimizer.add_param_group({"params": [extra]})
    all_params = params + [extra]
    before = [p.detach().clone() for p in all_params]
    for group in optimizer.param_groups:
        group["lr"] = float("inf")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(params) + (extra**2).sum()
        loss.backward()
        return loss

    with pytest.raises(DivergenceError):
        optimizer.step(closure)
    for p, b in zip(all_params, before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
