"""``lightning-wass demo`` shows its own lines and progress, with Lightning's banners, tips and the
known-harmless warnings silenced inside the demo only."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from lightning_wass.cli import main
from lightning_wass.demo.progress import HARMLESS_WARNINGS, LIGHTNING_LOGGERS, quiet_lightning

LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."
NOISE = ("GPU available", "TPU available", "Tip:", "LeafSpec", "does not have many workers", "smaller than the logging interval")


def test_demo_output_is_its_own_lines_and_progress(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    filters = list(warnings.filters)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--parts", "vae", "--quick"]) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    for noise in NOISE:
        assert noise not in text, f"{noise!r} shown by the demo"
    lines = captured.out.splitlines()
    assert "=== lightning-wass demo [1/1]: vae ===" in lines
    assert any(line.startswith("  vae: training (") for line in lines)
    assert any(line.startswith("  vae: done (4 epochs") for line in lines)
    assert "lightning-wass demo finished" in captured.out
    assert "━" not in text  # Lightning's own progress bar is replaced by the progress line
    # restored afterwards: users' own runs see Lightning's messages and warnings as usual
    assert {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS} == levels
    assert list(warnings.filters) == filters


def test_quiet_lightning_hides_info_and_harmless_warnings_only_inside() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with quiet_lightning():
        assert not logger.isEnabledFor(logging.INFO)
        assert logger.isEnabledFor(logging.WARNING)
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn(LEAFSPEC, FutureWarning)  # not among pytest's own ignores (pyproject.toml)
            warnings.warn("something the user must see", UserWarning)
        assert [str(w.message) for w in seen] == ["something the user must see"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn(LEAFSPEC, FutureWarning)
    assert len(seen) == 1  # outside the demo the warning is shown again


def test_quiet_lightning_disabled_changes_nothing() -> None:
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    with quiet_lightning(enabled=False):
        assert {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS} == levels


def _fit_with_progress(tty: bool, steps: int) -> str:
    import io

    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_wass.demo.progress import DemoProgress

    stream = io.StringIO()
    trainer = pl.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", callbacks=[DemoProgress("run", stream=stream, tty=tty)],
    )
    with quiet_lightning():
        trainer.fit(BoringModel())
    return stream.getvalue()


def test_progress_line_on_a_terminal_is_updated_in_place() -> None:
    text = _fit_with_progress(tty=True, steps=3)
    assert text.startswith("\r  run: ") or text.startswith("\r  run: done")
    assert "\n" not in text.rstrip("\n")  # one line, rewritten with carriage returns
    assert "  run: done (3 steps" in text


def test_progress_off_a_terminal_is_a_start_and_an_end_line() -> None:
    lines = _fit_with_progress(tty=False, steps=3).splitlines()
    assert lines[0] == "  run: training (3 steps) ..."
    assert lines[-1].startswith("  run: done (3 steps, ")
    assert len(lines) == 2  # a short run prints no quarter lines
