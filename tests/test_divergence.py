"""A forced divergence in every module: the error names the quantity, the step and the knob, and
nothing diverged reaches memory or disk (issue 12's rule, :mod:`lightning_wass.guard`).

Each case trains a few good steps, then pushes one knob far out of range (a callback, as a bad
schedule would), checkpointing after every step. The
invariants, independent of how each module checks itself:

- ``DivergenceError`` is raised, its message names the module's step and the knob that was pushed;
- the module in memory is finite and equal, tensor for tensor, to ``last.ckpt`` (the state after the
  last good step), and so is the checkpoint Lightning writes on the exception, with the same
  ``global_step``;
- resuming from ``last.ckpt`` with the same settings repeats the failed step and fails again at the
  same step with the same message (the checkpoint holds everything the step depends on).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_wass import (
    VAE,
    WGAN,
    DivergenceError,
    OTMDRClassifier,
    TensorDataModule,
    W1W2ProximalFlow,
    W2GradientFlow,
    WorstCaseGenerator,
)
from trainers import quiet_trainer


def _points(n: int = 256, seed: int = 0) -> TensorDataModule:
    g = torch.Generator().manual_seed(seed)
    return TensorDataModule(torch.randn(n, 2, generator=g), batch_size=64, seed=seed)


def _images() -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    return TensorDataModule(torch.rand(128, 1, 8, 8, generator=g), batch_size=32)


def _regression() -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    y = x.sum(1, keepdim=True) + 0.5 * torch.randn(64, 1, generator=g)  # noise: no particle sits at a zero of the loss
    return TensorDataModule(x, y, batch_size=32, return_index=True)


def _classification() -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    return TensorDataModule(x, (x[:, 0] > 0).long(), batch_size=32)


def _frozen_line() -> nn.Module:
    line = nn.Linear(2, 1)
    with torch.no_grad():
        line.weight.fill_(1.0)
        line.bias.zero_()
    return line


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def set_lr(value: float, attributes: tuple[str, ...] = (), optimizers: tuple[int, ...] | None = None) -> Callable[[Any, pl.Trainer], None]:
    """A push: the learning rate of the given optimizers (all by default) and module attributes."""

    def push(module: Any, trainer: pl.Trainer) -> None:
        for i, optimizer in enumerate(trainer.optimizers):
            if optimizers is None or i in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = value
        for name in attributes:
            _set(module, name, value)

    return push


def set_knob(name: str, value: float) -> Callable[[Any, pl.Trainer], None]:
    return lambda module, trainer: _set(module, name, value)


def _set(module: Any, name: str, value: float) -> None:
    if name in getattr(module, "hparams", {}):
        module.hparams[name] = value
    if name in vars(module) or hasattr(type(module), name):
        setattr(module, name, value)


class Push(pl.Callback):
    """Train normally, then from ``at_step`` on push a knob far out of range (again after a resume)."""

    def __init__(self, at_step: int, push: Callable[[Any, pl.Trainer], None]) -> None:
        self.at_step, self.push = at_step, push

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.at_step:
            self.push(pl_module, trainer)


@dataclass
class Case:
    id: str
    build: Callable[[], pl.LightningModule]
    data: Callable[[], TensorDataModule]
    push: Callable[[Any, pl.Trainer], None]
    knob: str  # the knob the message must name
    quantity: str  # a regular expression for what diverged
    load: Callable[[str], pl.LightningModule] | None = None


_worst_case_load = {"load": lambda path: WorstCaseGenerator.load_from_checkpoint(path, model=nn.Linear(2, 1))}
_classifier_load = {"load": lambda path: OTMDRClassifier.load_from_checkpoint(path, network=_mlp())}

CASES = [
    Case("wgan-clip-lr", lambda: WGAN(data_shape=(2,), lipschitz="clip"), _points, set_lr(1e6, ("lr",)), "lr", r"critic|generator"),
    Case("wgan-gp-lr", lambda: WGAN(data_shape=(2,), lipschitz="gp"), _points, set_lr(1e6, ("lr",)), "lr", r"critic|generator"),
    Case("wgan-sn-lr", lambda: WGAN(data_shape=(2,), lipschitz="sn"), _points, set_lr(1e6, ("lr",)), "lr", r"critic|generator"),
    Case("w2gf-dt", lambda: W2GradientFlow(data_shape=(2,)), _points, set_knob("dt", 1e6), "dt", r"Euler targets"),
    Case("w2gf-lr", lambda: W2GradientFlow(data_shape=(2,)), _points, set_lr(1e6, ("lr",), (0,)), "lr", r"generator"),
    Case(
        "w2gf-potential-lr", lambda: W2GradientFlow(data_shape=(2,), transport="adversarial"), _points,
        set_lr(1e6, ("potential_lr",), (1,)), "potential_lr", r"potential",
    ),
    Case(
        "proximal-lr", lambda: W1W2ProximalFlow(data_shape=(2,)), _points,
        set_lr(1e6, ("lr_potential", "lr_discriminator")), "lr_", r"discriminator|potential|flow",
    ),
    Case("vae-lr", lambda: VAE(data_shape=(1, 8, 8)), _images, set_lr(1e6, ("lr",)), "lr", r"VAE"),
    Case(
        "worst-case-frozen-model-gamma",
        lambda: WorstCaseGenerator(_frozen_line(), particle_lr=1.0, train_model=False, transport_hidden=(8,)),
        _regression, set_knob("gamma", 1e4), "gamma", r"particles",
        load=lambda path: WorstCaseGenerator.load_from_checkpoint(path, model=_frozen_line()),
    ),
    Case(
        "worst-case-model-lr", lambda: WorstCaseGenerator(nn.Linear(2, 1), transport_hidden=(8,)), _regression,
        set_lr(1e3, ("model_lr",), (0,)), "model_lr", r"model", **_worst_case_load,
    ),
    Case(
        "classifier-otmdr-lr", lambda: OTMDRClassifier(_mlp(), num_classes=2, scheduler="none"), _classification,
        set_lr(1e8, ("lr",)), "max_update_ratio", r"moved the parameters", **_classifier_load,
    ),
    Case(
        "classifier-sam-lr", lambda: OTMDRClassifier(_mlp(), num_classes=2, method="sam", scheduler="none"), _classification,
        set_lr(1e8, ("lr",)), "lr", r"moved the parameters", **_classifier_load,
    ),
    Case(
        "classifier-base-lr", lambda: OTMDRClassifier(_mlp(), num_classes=2, method="base", scheduler="none"), _classification,
        set_lr(1e8, ("lr",)), "lr", r"network's (update|parameters)", **_classifier_load,
    ),
]

AT_STEP = 3  # good steps before the push: last.ckpt then holds a trained state


def _fit(case: Case, module: pl.LightningModule, root: Path, ckpt_path: str | None = None) -> tuple[str, pl.Trainer]:
    every_step = ModelCheckpoint(dirpath=root / "steps", every_n_train_steps=1, save_last=True, save_top_k=-1)
    on_exception = ModelCheckpoint(dirpath=root / "on_exception", every_n_train_steps=10**6, save_last=True, save_on_exception=True)
    callbacks = [Push(AT_STEP, case.push), every_step, on_exception]
    trainer = quiet_trainer(max_steps=300, callbacks=callbacks, enable_checkpointing=True)
    with pytest.raises(DivergenceError) as info:
        trainer.fit(module, datamodule=case.data(), ckpt_path=ckpt_path)
    return str(info.value), trainer


def _float_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every floating tensor of a (nested) state, by key path."""
    found: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)

    walk("", state)
    return found


def _figures_dropped(message: str) -> str:
    return re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", message)


def _step_of(message: str) -> str:
    match = re.search(r"(step|iteration) (\d+)", message)
    assert match, message
    return match.group(0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forced_divergence_is_named_undone_and_resumable(case: Case, tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = case.build()
    message, trainer = _fit(case, module, tmp_path / "run")

    # the message: what diverged, in which step, and what to change
    assert type(module).__name__ in message, message
    assert re.search(case.quantity, message), message
    assert case.knob in message, message
    assert "put back" in message or "restored" in message, message
    step = _step_of(message)

    # memory and both checkpoints hold the last good state, finite everywhere
    memory = _float_tensors(module.state_dict())
    assert all(torch.isfinite(v).all() for v in memory.values())
    last = torch.load(tmp_path / "run" / "steps" / "last.ckpt", weights_only=False)
    saved_on_exception = torch.load(tmp_path / "run" / "on_exception" / "last.ckpt", weights_only=False)
    assert last["global_step"] >= AT_STEP
    for checkpoint in (last, saved_on_exception):
        tensors = _float_tensors({"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint["optimizer_states"]})
        assert tensors and all(torch.isfinite(v).all() for v in tensors.values()), [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        stored = _float_tensors(checkpoint["state_dict"])
        assert set(stored) == set(memory)
        for key, value in stored.items():
            assert torch.equal(value, memory[key]), key
    assert saved_on_exception["global_step"] == last["global_step"] == trainer.global_step

    # the same settings, resumed from last.ckpt: the same step fails the same way
    pl.seed_everything(0, verbose=False)
    again, _ = _fit(case, case.build(), tmp_path / "resumed", ckpt_path=str(tmp_path / "run" / "steps" / "last.ckpt"))
    assert _step_of(again) == step
    assert _figures_dropped(again) == _figures_dropped(message)  # the figures depend on the batch order after a resume

    # and the checkpoint alone rebuilds a finite module
    load = case.load or (lambda path: type(module).load_from_checkpoint(path))
    rebuilt = load(str(tmp_path / "run" / "steps" / "last.ckpt"))
    assert all(torch.isfinite(p).all() for p in rebuilt.parameters())
