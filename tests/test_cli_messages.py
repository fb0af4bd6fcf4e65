"""What the command line says to a new user: a fast, torch-free top-level help, complete choices,
close matches for misspelled names, and constructor errors as one line naming their config key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_wass.cli import ConfigError, build_cli, main

HEAVY = ("torch", "lightning", "lightning.pytorch", "pytorch_lightning", "torchvision", "ot", "matplotlib")


def _modules_after(code: str) -> list[str]:
    """The heavy modules imported by running ``code`` in a fresh interpreter (``sys.modules`` inspected)."""
    probe = f"{code}\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(HEAVY)!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("MODULES=")][-1]
    return json.loads(line.removeprefix("MODULES="))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["demo", "--help"], ["--version"]],
    ids=["top-level-help", "demo-help", "version"],
)
def test_help_paths_import_neither_torch_nor_lightning(argv: list[str]) -> None:
    code = f"import sys\nfrom lightning_wass.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _modules_after(code) == []


def test_importing_the_package_is_lazy_and_names_still_resolve() -> None:
    assert _modules_after("import lightning_wass; lightning_wass.__version__; dir(lightning_wass)") == []
    assert "torch" in _modules_after("from lightning_wass import VAE")


def test_version_is_written_once_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    import lightning_wass

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lightning-wass {lightning_wass.__version__}"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "dynamic = [\"version\"]" in pyproject and "\nversion = \"" not in pyproject


@pytest.mark.parametrize("typo, suggestion", [("fitt", "fit"), ("dmo", "demo"), ("predcit", "predict")])
def test_misspelled_subcommand_lists_every_choice(typo: str, suggestion: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([typo]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert f"did you mean {suggestion}" in err or f"or {suggestion}" in err
    assert "fit, validate, test, predict, demo" in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fit", "--model", "VAEE", "--data", "DigitsDataModule"], "did you mean VAE"),
        (["fit", "--model=WGNA", "--data=DigitsDataModule"], "WGAN"),
        (["fit", "--model=VAE", "--data=DigitModule"], "did you mean DigitsDataModule"),
        (["fit", "--model=lightning_wass.modules.VAEX", "--data=DigitsDataModule"], "did you mean VAE"),
    ],
)
def test_unknown_model_or_data_name_lists_close_matches(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    kind = "--data" if "Digit" in str(argv) and "DigitModule" in str(argv) else "--model"
    assert f"unknown {kind}" in err and expected in err


def test_unknown_name_without_close_match_lists_ours(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--model", "FooNet", "--data", "DigitsDataModule"]) == 2
    err = capsys.readouterr().err
    assert "unknown --model 'FooNet'" in err
    for name in ("VAE", "WGAN", "WorstCaseGenerator", "W1W2ProximalFlow", "OTMDRClassifier", "W2GradientFlow"):
        assert name in err


def test_unknown_name_in_a_config_file_is_caught_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  class_path: lightning_wass.modules.VAES\ndata:\n  class_path: DigitsDataModule\n")
    assert main(["fit", "--config", str(config)]) == 2
    assert "did you mean VAE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, key, cls",
    [
        ("--model.latent_dim=-1", "--model.latent_dim", "VAE"),
        ("--data.batch_size=0", "--data.batch_size", "DigitsDataModule"),
        ("--trainer.max_epochs=-3", "--trainer", None),
        ("--trainer.callbacks+=WassersteinMonitor --trainer.callbacks.every_n_steps=-1", "--trainer.callbacks", "WassersteinMonitor"),
    ],
)
def test_constructor_error_is_one_line_naming_the_config_key(
    flag: str, key: str, cls: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit", "--model=VAE", "--data=DigitsDataModule", f"--trainer.default_root_dir={tmp_path}", *flag.split()]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lightning-wass")]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"lightning-wass: error: {key}")
    if cls:
        assert f"({cls})" in err[0]


def test_build_cli_raises_config_error_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="latent_dim must be >= 1") as excinfo:
        build_cli(["--model=VAE", "--model.latent_dim=0", "--data=DigitsDataModule", f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert excinfo.value.key == "model.latent_dim"
    assert isinstance(excinfo.value, ValueError)


def test_python_dash_m_runs_the_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "lightning_wass", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
