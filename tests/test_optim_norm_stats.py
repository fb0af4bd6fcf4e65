"""The BatchNorm freeze of the SAM family (``lightning_wass.optim.norm_stats.frozen_running_stats``).

Checked against the layers' own buffers: inside the block no running statistic changes, however
many passes run, and the global hook leaves as soon as the modules called hold every watched
parameter (the speed-up), but not before.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from lightning_wass.optim.norm_stats import frozen_running_stats


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))


def _stats(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in model.named_buffers()]


def _hooks() -> int:
    return len(torch_module._global_forward_pre_hooks)


def test_running_stats_do_not_change_in_any_pass_of_the_block_and_return_afterwards():
    model = _net().train()
    x = torch.randn(8, 3)
    before = _stats(model)
    with frozen_running_stats(model.parameters()):
        for _ in range(3):  # several passes: the hook has left after the first call
            model(x).sum().backward()
    for a, b in zip(before, _stats(model)):
        assert torch.equal(a, b)
    model(x)  # outside the block the layers track again
    assert int(model[1].num_batches_tracked) == 1 and int(model[3][1].num_batches_tracked) == 1
    assert model[1].track_running_stats and model[3][1].track_running_stats


def test_the_hook_leaves_once_the_called_modules_hold_every_watched_parameter():
    model = _net().train()
    hooks = _hooks()
    with frozen_running_stats(model.parameters()):
        assert _hooks() == hooks + 1
        model[0](torch.randn(8, 3))  # holds only the first Linear's parameters: the hook stays
        assert _hooks() == hooks + 1
        model(torch.randn(8, 3))  # the top-level module holds them all
        assert _hooks() == hooks
    assert _hooks() == hooks


def test_a_parameter_outside_every_module_keeps_the_hook_so_later_modules_are_frozen_too():
    model, aux = _net().train(), nn.BatchNorm1d(4).train()
    loose = nn.Parameter(torch.ones(4))
    hooks = _hooks()
    with frozen_running_stats([*model.parameters(), loose]):
        out = model(torch.randn(8, 3)) * loose
        assert _hooks() == hooks + 1
        aux(out)  # called after the model: still reached, because the loose parameter is watched
    assert int(aux.num_batches_tracked) == 0 and aux.running_mean.abs().max() == 0


def test_without_params_the_hook_stays_for_the_whole_block():
    model, aux = _net().train(), nn.BatchNorm1d(4).train()
    hooks = _hooks()
    with frozen_running_stats():
        aux(model(torch.randn(8, 3)))
        assert _hooks() == hooks + 1
    assert int(aux.num_batches_tracked) == 0 and int(model[1].num_batches_tracked) == 0


def test_a_module_shared_by_two_parents_is_frozen_once_and_restored():
    shared = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.Sequential(shared)).train()
    with frozen_running_stats(model.parameters()):
        model(torch.randn(8, 3))
    assert int(shared.num_batches_tracked) == 0 and shared.track_running_stats
