"""What a demo part receives and returns.

A demo part is a module ``lightning_wass.demo.<name>`` with a function
``run(ctx: DemoContext) -> DemoSection``. It trains on embedded data (no download), writes its PNG
figures under ``ctx.figure_dir``, logs to TensorBoard through ``ctx.logger(name)``, and returns
the figures it measured for the printed summary and ``report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a part runs, so that ``lightning-wass demo --help`` imports no Lightning
    from lightning.pytorch.loggers import TensorBoardLogger


@dataclass
class DemoContext:
    """Where a demo part writes, and the Trainer settings every part shares."""

    out_dir: Path
    seed: int = 0
    quick: bool = False  # a much shorter run (for tests); figures are still written
    quiet: bool = True  # our progress lines instead of Lightning's progress bar (see demo/progress.py)

    @property
    def figure_dir(self) -> Path:
        path = self.out_dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def logger(self, name: str) -> TensorBoardLogger:
        """A TensorBoard logger writing to ``<out>/tensorboard/<name>/version_<k>`` (a new version per run)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(self.out_dir / "tensorboard"), name=name)

    def trainer_kwargs(self, name: str, *, label: str | None = None, callbacks: list[Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``lightning.pytorch.Trainer`` in a demo part: CPU, TensorBoard logging,
        no checkpoints written into the working directory, and progress shown.

        Progress: with ``quiet`` (the default) a :class:`~lightning_wass.demo.progress.DemoProgress`
        line named ``label`` (default ``name``) is added to ``callbacks`` and Lightning's own bar is
        off; otherwise Lightning's bar is on. ``overrides`` go to the Trainer as they are.
        """
        callbacks = list(callbacks or [])
        if self.quiet:
            from lightning_wass.demo.progress import DemoProgress

            callbacks.append(DemoProgress(label or name))
        kwargs: dict[str, Any] = dict(
            accelerator="cpu",
            devices=1,
            logger=self.logger(name),
            enable_checkpointing=False,
            enable_progress_bar=not self.quiet,
            enable_model_summary=False,
            default_root_dir=str(self.out_dir),
            callbacks=callbacks,
        )
        if self.quiet:
            overrides.pop("enable_progress_bar", None)  # our progress line replaces Lightning's bar
        kwargs.update(overrides)
        return kwargs


@dataclass
class DemoSection:
    """One part's results: a title, lines for the printed summary, Markdown for ``report.md``."""

    title: str
    summary: list[str]
    report_markdown: str
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
