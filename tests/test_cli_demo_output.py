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
