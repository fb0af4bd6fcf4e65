"""torch.compile: the BatchNorm freeze of the perturbed passes works on compiled models, silently.

``backend="aot_eager"`` traces with dynamo and AOTAutograd like the default inductor backend (the
parts that decide whether hooks run and attributes are guarded) without generating C++ code, so the
test takes seconds on CPU.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from sam_references import closure_for, flat, loss_fn, make_batches, make_mlp

from lightning_wass.optim import OTMDR, SAM


def train(model, opt, batches, two_step=False):
    for x, y in batches:
        if two_step:
            loss_fn(model, x, y).backward()
            opt.first_step(zero_grad=True)
            loss_fn(model, x, y).backward()
            opt.second_step(zero_grad=True)
            continue

        opt.step(closure_for(model, opt, x, y))


@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()"])
@pytest.mark.parametrize("two_step", [False, True], ids=["closure", "two-step"])
def test_compiled_batchnorm_statistics_update_once_per_step_without_warnings(how, two_step):
    torch._dynamo.reset()
    batches = make_batches(n_batches=3)
    eager = make_mlp(batch_norm=True)
    train(eager, SAM(eager.parameters(), torch.optim.SGD, rho=0.05, lr=0.1), batches, two_step)

    net = make_mlp(batch_norm=True)
    if how == "torch.compile(model)":
        model = torch.compile(net, backend="aot_eager")
    else:
        net.compile(backend="aot_eager")
        model = net
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, batches, two_step)
    hook_warnings = [str(w.message) for w in caught if "hook" in str(w.message)]
    assert hook_warnings == []
    bn = net[1]
    assert int(bn.num_batches_tracked) == 3  # once per step (without the freeze: 6)
    torch.testing.assert_close(bn.running_mean, eager[1].running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, eager[1].running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flat(net), flat(eager), rtol=1e-4, atol=1e-5)


def test_compiled_otmdr_chain_matches_eager():
    torch._dynamo.reset()
    batches = make_batches(n_batches=2, size=24)
    kwargs = dict(rho=(0.05, 0.1), num_particles=2, noise_std=1e-3, lr=0.1)
    eager = make_mlp(batch_norm=True)
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, backend="aot_eager")
    for model, net in ((eager, eager), (compiled, compiled_net)):
        opt = OTMDR(net.parameters(), torch.optim.SGD, **kwargs)
        for x, y in batches:
            opt.step(closure_for(model, opt, x, y, chunks=True))
    assert int(compiled_net[1].num_batches_tracked) == 2
    torch.testing.assert_close(flat(compiled_net), flat(eager), rtol=1e-4, atol=1e-5)
