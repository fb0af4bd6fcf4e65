"""``lightning_wass.optim.snapshot.StateSnapshot``: a restore gives back exactly the state at the last
save, whether the save reused its buffers (same state objects as before) or rebuilt them (state
created, replaced by ``load_state_dict``, or holding a non-tensor value)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_wass.optim.snapshot import StateSnapshot


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer.zero_grad()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()


def _state(optimizer: torch.optim.Optimizer) -> dict:
    return {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in optimizer.state.items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            if torch.is_tensor(a[key][name]):
                assert torch.equal(a[key][name], b[key][name]), name
            else:
                assert a[key][name] == b[key][name], name


def test_restore_after_saves_that_reuse_their_buffers():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    snapshot = StateSnapshot()
    params = list(model.parameters())
    _step(model, optimizer, 0)
    for seed in range(1, 4):  # the same state objects every time: the buffers are reused
        snapshot.save(optimizer, params)
        expected = _state(optimizer)
        _step(model, optimizer, seed)
        snapshot.restore(optimizer)
        _assert_same(_state(optimizer), expected)


def test_a_state_created_or_replaced_after_a_save_is_caught():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = list(model.parameters())
    snapshot = StateSnapshot()
    snapshot.save(optimizer, params)  # no state yet
    _step(model, optimizer, 0)
    snapshot.restore(optimizer)
    assert all(not optimizer.state.get(p) for p in params)  # the state the step created is gone

    _step(model, optimizer, 1)
    snapshot.save(optimizer, params)
    other = copy.deepcopy(optimizer.state_dict())
    other["state"][0]["momentum_buffer"].fill_(7.0)
    optimizer.load_state_dict(other)  # new tensor objects
    snapshot.save(optimizer, params)
    expected = _state(optimizer)
    _step(model, optimizer, 2)
    snapshot.restore(optimizer)
    _assert_same(_state(optimizer), expected)
    assert torch.equal(optimizer.state[params[0]]["momentum_buffer"], torch.full((2, 3), 7.0))


def test_a_non_tensor_value_is_saved_as_it_was():
    param = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    optimizer.state[param] = {"count": 1, "buffer": torch.ones(2)}
    snapshot = StateSnapshot()
    snapshot.save(optimizer, [param])
    optimizer.state[param]["count"] = 2
    optimizer.state[param]["buffer"].add_(1.0)
    snapshot.save(optimizer, [param])  # a new int object: the layout is read again
    optimizer.state[param]["count"] = 3
    optimizer.state[param]["buffer"].add_(1.0)
    snapshot.restore(optimizer)
    assert optimizer.state[param]["count"] == 2 and torch.equal(optimizer.state[param]["buffer"], torch.full((2,), 2.0))
