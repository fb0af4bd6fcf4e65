"""What the demo prints while it runs: one progress line per training run, Lightning kept quiet.

:func:`quiet_lightning` silences, for the duration of a demo part only, Lightning's start-up
banners and tips (``GPU available: ...``, ``💡 Tip: ...``, INFO records of the ``lightning``
loggers) and the warnings known to be harmless on the demo's small in-memory data
(:data:`HARMLESS_WARNINGS`). Everything is restored when the part ends, so users' own runs, and
``lightning-wass fit``, show all of it. Errors and warnings not in the list still show.

:class:`DemoProgress` replaces Lightning's progress bar in the demo: on a terminal a line
``  <run>: step k/n (p%)`` updated in place, otherwise (a log file, a test) a line when the run starts, one
at a quarter-way point when :attr:`DemoProgress.QUIET_SECONDS` have passed since the last line, and a
closing line with the run's time.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from typing import IO, Any

import lightning.pytorch as pl

# Messages (regular expressions matched at the start) of warnings the demo's data and models
# trigger by design; silenced inside the demo only.
HARMLESS_WARNINGS: tuple[str, ...] = (
    r".*does not have many workers",  # in-memory tensors: worker processes would only add start-up time
    r".*The number of training batches \(\d+\) is smaller than the logging interval",  # quick runs
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch 2.14 deprecation raised inside Lightning
    r".*GPU available but not used",
    r".*TPU available but not used",
    r".*You defined a `validation_step` but have no `val_dataloader`",
    r".*Checkpoint directory .* exists and is not empty",
    r".*The `srun` command is available on your system",
)

LIGHTNING_LOGGERS: tuple[str, ...] = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


@contextlib.contextmanager
def quiet_lightning(enabled: bool = True) -> Iterator[None]:
    """Inside the block: Lightning's INFO messages (banners, tips) hidden and :data:`HARMLESS_WARNINGS`
    ignored; both restored on exit. ``enabled=False`` changes nothing."""
    if not enabled:
        yield
        return
    saved = {}
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


class DemoProgress(pl.Callback):
    """Prints the progress of one training run of the demo (see the module docstring).

    Args:
        label: what the run is called in the printed lines (``"vae"``, ``"OT-MDR"``).
        stream: where to print (default ``sys.stdout``, looked up when the run starts).
        tty: update one line in place (``True``) or print a line per quarter (``False``); by default
            whether ``stream`` is a terminal.
    """

    def __init__(self, label: str, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        super().__init__()
        self.label = label
        self._stream = stream
        self._tty = tty
        self._start = 0.0
        self._last_print = 0.0
        self._quarter = 0

    QUIET_SECONDS = 5.0  # off a terminal: a quarter-way line only when this long has passed since the last line

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def _is_tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    @staticmethod
    def fraction(trainer: pl.Trainer, batch_idx: int) -> tuple[float, str]:
        """How far the run is (0..1) and the count to show, from ``max_steps`` or else ``max_epochs``."""
        if trainer.max_steps and trainer.max_steps > 0:
            done, total = trainer.global_step, trainer.max_steps
            return min(1.0, done / total), f"step {done}/{total}"
        epochs = trainer.max_epochs or 1
        batches = trainer.num_training_batches
        within = (batch_idx + 1) / batches if isinstance(batches, int) and batches > 0 else 0.0
        return min(1.0, (trainer.current_epoch + within) / epochs), f"epoch {trainer.current_epoch + 1}/{epochs}"

    def _total(self, trainer: pl.Trainer) -> str:
        if trainer.max_steps and trainer.max_steps > 0:
            return f"{trainer.max_steps} steps"
        return f"{trainer.max_epochs} epoch{'s' if trainer.max_epochs != 1 else ''}"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last_print = time.perf_counter()
        self._quarter = 0
        if not self._is_tty():
            print(f"  {self.label}: training ({self._total(trainer)}) ...", file=self.stream, flush=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        fraction, count = self.fraction(trainer, batch_idx)
        now = time.perf_counter()
        if self._is_tty():
            if now - self._last_print >= 0.2:
                self._last_print = now
                print(f"\r  {self.label}: {count} ({fraction:.0%}, {now - self._start:.0f} s)\x1b[K", end="", file=self.stream, flush=True)
        elif int(fraction * 4) > self._quarter and fraction < 1.0:
            self._quarter = int(fraction * 4)
            if now - self._last_print >= self.QUIET_SECONDS:  # a short run prints its start and end only
                self._last_print = now
                print(f"  {self.label}: {self._quarter * 25}% ({count}, {now - self._start:.0f} s)", file=self.stream, flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        done = f"{trainer.global_step} steps" if trainer.max_steps and trainer.max_steps > 0 else f"{trainer.current_epoch} epochs"
        line = f"  {self.label}: done ({done}, {seconds:.1f} s)"
        print(f"\r{line}\x1b[K" if self._is_tty() else line, file=self.stream, flush=True)
