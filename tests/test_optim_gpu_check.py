"""benchmarks/gpu_check.py without a GPU: the no-CUDA exit, the table, and its checks' logic on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_and_exits_0(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu.json")]) == 0
    assert "CUDA is not available" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()


def test_table_aligns_columns_and_counts_passes_failures_and_information() -> None:
    rows = [
        gpu_check.row("narrow: SAM / reference SAM step", 0.8123, "<= 0.95", True, "SAM 1.00 ms"),
        gpu_check.row("fit VAE", None, "runs", False, "RuntimeError: boom"),
        gpu_check.row("memory", "12 MiB", "-", None),
    ]
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0].split() == ["check", "value", "target", "status", "note"]
    assert set(lines[1]) <= {"-", " "}
    assert "0.812" in lines[2] and " ok " in lines[2] and "FAIL" in lines[3] and "info" in lines[4]
    starts = [line.index(word) for line, word in zip(lines[2:5], ("0.812", "-", "12 MiB"))]
    assert len(set(starts)) == 1  # the value column starts at one offset on every row
    assert lines[-1] == "1 passed, 1 failed, 1 informational"


def test_a_check_that_raises_becomes_a_failed_row_and_the_others_run() -> None:
    rows: list[dict] = []
    gpu_check.guarded("broken", rows, lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    gpu_check.guarded("fine", rows, lambda: [gpu_check.row("fine", 1.0, "-", True)])
    assert [(r["check"], r["ok"]) for r in rows] == [("broken", False), ("fine", True)]
    assert "ZeroDivisionError" in rows[0]["note"]


def test_fit_check_runs_a_module_on_the_given_device() -> None:
    result = gpu_check.fit_module("WorstCaseGenerator", torch.device("cpu"), max_steps=2)
    assert result["global_step"] == 2 and result["finite"] and result["on_device"]
