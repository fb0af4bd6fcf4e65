"""A SAM-family step reads a value back to the host once (its divergence check), and takes the same
step on the accelerator code path as on the CPU one.

On an accelerator every read of a tensor's value (``.item()``, ``bool(t)``, ``float(t)``,
``.tolist()``, ...) waits for the device. The optimizer reads its scalar norms back on the CPU only
(free there); ``_reads_back_for_free`` says where, and patching it to ``False`` runs the accelerator
path here, without CUDA. A counter patched onto ``torch.Tensor`` then counts every read during whole
steps (closures included: this model's forward and backward read nothing back).
"""

from __future__ import annotations

import copy

import pytest
import torch
from sam_references import closure_for, flat, make_batches, make_mlp, sam_step

import lightning_wass.optim.otmdr as otmdr_module
from lightning_wass.optim import OTMDR, SAM

SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class ReadCounter:
    """Counts the calls of the host-read methods of ``torch.Tensor`` while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(self_tensor, *args, __name=name, __original=original, **kwargs):  # type: ignore[no-untyped-def]
                self.calls.append(__name)
                return __original(self_tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.fixture
def accelerator_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otmdr_module, "_reads_back_for_free", lambda device: False)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, **SGD),
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, adaptive=True, **SGD),
        lambda ps: OTMDR(ps, torch.optim.SGD, rho=(0.05, 0.1), noise_std=1e-3, **SGD),
        lambda ps: OTMDR(ps, torch.optim.SGD, num_particles=2, **SGD),
    ],
    ids=["sam", "asam", "otmdr-chain-noise", "otmdr-2-particles"],
)
def test_one_host_read_per_step_on_the_accelerator_path(make, accelerator_path, monkeypatch) -> None:
    model = make_mlp(batch_norm=True)
    optimizer = make(model.parameters())
    batches = make_batches(n_batches=3)
    chunks = optimizer.num_particles > 1
    optimizer.step(closure_for(model, optimizer, *batches[0], chunks=chunks))  # first step: state created
    counter = ReadCounter(monkeypatch)
    for x, y in batches[1:]:
        optimizer.step(closure_for(model, optimizer, x, y, chunks=chunks))
    monkeypatch.undo()
    assert counter.calls == ["tolist", "tolist"], counter.calls  # one read per step: the verdict


def test_two_step_api_reads_back_once_per_step(accelerator_path, monkeypatch) -> None:
    model = make_mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD)
    x, y = make_batches(n_batches=1)[0]
    loss_fn = torch.nn.functional.cross_entropy
    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    loss_fn(model(x), y).backward()
    optimizer.second_step(zero_grad=True)
    counter = ReadCounter(monkeypatch)
    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    loss_fn(model(x), y).backward()
    optimizer.second_step(zero_grad=True)
    monkeypatch.undo()
    assert counter.calls == ["tolist"], counter.calls


def test_accelerator_path_takes_the_reference_sam_step(accelerator_path) -> None:
    # davda54/sam's update written out per parameter (tests/sam_references.py), not our kernels
    batches = make_batches()
    reference = make_mlp()
    reference_opt = torch.optim.SGD(reference.parameters(), **SGD)
    for x, y in batches:
        sam_step(reference, reference_opt, x, y, rho=0.05)
    model = make_mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD)
    for x, y in batches:
        optimizer.step(closure_for(model, optimizer, x, y))
    torch.testing.assert_close(flat(model), flat(reference), rtol=1e-5, atol=1e-6)


def test_accelerator_and_cpu_paths_agree_for_the_chain_with_noise(monkeypatch) -> None:
    batches = make_batches()
    models = []
    for free in (True, False):
        monkeypatch.setattr(otmdr_module, "_reads_back_for_free", lambda device, free=free: free)
        model = make_mlp(seed=3)
        optimizer = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=1e-3, adaptive=True, **SGD)
        for x, y in batches:
            optimizer.step(closure_for(model, optimizer, x, y))
        models.append(copy.deepcopy(model))
    torch.testing.assert_close(flat(models[0]), flat(models[1]), rtol=1e-5, atol=1e-6)
