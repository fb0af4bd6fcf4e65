"""fp16 mixed precision with a gradient scaler for SAM-family optimizers under Lightning.

Lightning's own :class:`~lightning.pytorch.plugins.precision.MixedPrecision` runs the closure once,
unscales, and calls ``scaler.step(optimizer)`` *without* the closure. A SAM-family optimizer needs
the closure (it evaluates the loss at several perturbed points per step), and each of its passes
must be unscaled before it sets a perturbation, is clipped or is stepped. :class:`SAMMixedPrecision`
keeps everything else of ``MixedPrecision`` (autocast, the scaled backward, the scaler's state in
checkpoints) and, for :class:`~lightning_wass.OTMDR` / :class:`~lightning_wass.SAM`, hands the
closure and the scaler to ``optimizer.step(closure, grad_scaler=scaler)``:

- after every pass the gradients are unscaled, then Lightning's ``on_before_optimizer_step`` hooks
  and gradient clipping run on the unscaled gradients (so ``gradient_clip_val`` works);
- an inf/NaN gradient in any pass skips the step (parameters and optimizer state untouched) and
  ``scaler.update()`` lowers the scale, as for any optimizer under ``16-mixed``.

Other optimizers in the same Trainer are stepped exactly as by ``MixedPrecision``; with
``"bf16-mixed"`` (no scaler) the plugin is ``MixedPrecision`` itself. The scaler is also attached
to the SAM-family optimizers, so the two-step API (``first_step`` / ``second_step`` after
``self.manual_backward``) in a manual-optimization ``training_step`` unscales each pass too, and
its last ``second_step`` calls ``scaler.update()``.

    trainer = Trainer(plugins=[SAMMixedPrecision("16-mixed", "cuda")])
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim import Optimizer

from lightning_wass.optim.otmdr import OTMDR


class SAMMixedPrecision(MixedPrecision):
    """``MixedPrecision`` that drives SAM-family optimizers with their closure under fp16 (see module docstring).

    Args:
        precision: ``"16-mixed"`` or ``"bf16-mixed"``.
        device: the device autocast runs on (``"cuda"``, ``"cpu"``, ...).
        scaler: the ``torch.amp.GradScaler`` (default for ``"16-mixed"``: a new one on ``device``).
    """

    def __init__(
        self, precision: Literal["16-mixed", "bf16-mixed"], device: str | torch.device, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        if precision not in ("16-mixed", "bf16-mixed"):
            raise ValueError(f"precision must be '16-mixed' or 'bf16-mixed', got {precision!r}")
        if isinstance(device, torch.device):
            device = device.type
        if not isinstance(device, str):
            raise TypeError(f"device must be a device name such as 'cuda' or 'cpu', got {type(device).__name__} ({device!r})")
        try:
            device_type = torch.device(device).type
        except RuntimeError:
            raise ValueError(f"device must be a device name such as 'cuda' or 'cpu', got {device!r}") from None
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        if scaler is not None and precision == "bf16-mixed":
            raise ValueError("scaler must be None with precision='bf16-mixed' (bf16 needs no loss scaling)")
        super().__init__(precision, device_type, scaler)  # type: ignore[arg-type]

    def connect(self, model: Any, optimizers: list[Optimizer], lr_schedulers: list[Any]) -> tuple[Any, list[Optimizer], list[Any]]:
        if self.scaler is not None:
            for optimizer in optimizers:
                target = getattr(optimizer, "_optimizer", optimizer)
                if isinstance(target, OTMDR):
                    target.attach_grad_scaler(self.scaler, update_after_two_step=True)
        return super().connect(model, optimizers, lr_schedulers)

    def optimizer_step(  # type: ignore[override]
        self, optimizer: Any, model: pl.LightningModule, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        if self.scaler is None or not isinstance(optimizer, OTMDR):
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        wrapped = partial(self._wrap_sam_closure, model, optimizer, closure)
        output = optimizer.step(wrapped, grad_scaler=self.scaler, **kwargs)
        self.scaler.update()
        return output

    def _wrap_sam_closure(self, model: pl.LightningModule, optimizer: OTMDR, closure: Callable[[], Any]) -> Any:
        result = closure()
        optimizer.unscale_pass_gradients()  # hooks and clipping below see unscaled gradients
        self._after_closure(model, optimizer)
        return result

    def clip_gradients(
        self,
        optimizer: Optimizer,
        clip_val: int | float = 0.0,
        gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM,
    ) -> None:
        if isinstance(optimizer, OTMDR):  # unscaled pass by pass already (MixedPrecision would refuse it)
            Precision.clip_gradients(self, optimizer, clip_val=clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
            return
        super().clip_gradients(optimizer, clip_val=clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
