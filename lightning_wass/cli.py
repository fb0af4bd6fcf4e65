"""The ``lightning-wass`` command line.

``lightning-wass fit|validate|test|predict --config CONFIG.yaml`` is Lightning's own
:class:`~lightning.pytorch.cli.LightningCLI`: any LightningModule and LightningDataModule can be
chosen by class path (``--model lightning_wass.modules.VAE`` or, since the package is imported,
the bare class name ``--model VAE``), and every constructor argument is a flag or a config key.
``lightning-wass demo [--out DIR]`` runs the newcomer's tour (:mod:`lightning_wass.demo`).

``--ckpt_path`` is checked before Lightning reads it
(:func:`~lightning_wass.checkpoints.check_ckpt_path`): an empty, truncated or foreign file, or
another module's checkpoint, is a ``ValueError`` naming the path and what was expected.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

TOP_LEVEL_HELP = """\
usage: lightning-wass {fit,validate,test,predict,demo} ...

Wasserstein and optimal-transport training methods for PyTorch Lightning.

subcommands:
  fit        train a model:      lightning-wass fit --config examples/vae_digits.yaml
  validate   run validation:     lightning-wass validate --config CONFIG --ckpt_path CKPT
  test       run the test split: lightning-wass test --config CONFIG --ckpt_path CKPT
  predict    run prediction:     lightning-wass predict --config CONFIG --ckpt_path CKPT
  demo       the newcomer's tour on embedded data (no download):
                                 lightning-wass demo --out runs/demo

Each of fit/validate/test/predict takes --help for its full list of options
(Lightning's LightningCLI: --model and --data select any LightningModule / LightningDataModule
by class path; --print_config shows the resolved configuration).
"""


class WassCLI(LightningCLI):
    """Lightning's CLI, with ``--ckpt_path`` checked before anything reads it.

    LightningCLI itself reads the checkpoint's hyperparameters into the model's config right after
    parsing, so the file is checked there first (against the configured model class), and again
    before the subcommand runs if the instantiated model's class differs or the strategy is known.
    """

    _checked_ckpt: tuple[str, type | None] | None = None

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            ckpt_path = config.get("ckpt_path")
            if ckpt_path is not None and not Path(str(ckpt_path)).is_dir():  # a directory: left to the strategy
                self._check_ckpt_path(config, _configured_class(config.get("model")))
        super()._parse_ckpt_path()

    def _check_ckpt_path(self, config: Any, expected: type | None, allow_directory: bool = False) -> None:
        """:func:`~lightning_wass.checkpoints.check_ckpt_path` on ``config.ckpt_path``, once per (path, class)."""
        from lightning_wass.checkpoints import check_ckpt_path

        key = (str(config.get("ckpt_path")), expected)
        if key == self._checked_ckpt:
            return
        if check_ckpt_path(config.get("ckpt_path"), expected, weights_only=config.get("weights_only"), allow_directory=allow_directory):
            self._checked_ckpt = key

    def _before_subcommand(self) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        sharded = isinstance(self.trainer.strategy, (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy))
        self._check_ckpt_path(self.config_init[self.subcommand], type(self.model), allow_directory=sharded)

    def before_fit(self) -> None:
        self._before_subcommand()

    def before_validate(self) -> None:
        self._before_subcommand()

    def before_test(self) -> None:
        self._before_subcommand()

    def before_predict(self) -> None:
        self._before_subcommand()


def _configured_class(model: Any) -> type | None:
    """The class a parsed ``model`` config names (``class_path``), if it is already imported."""
    from lightning_wass.checkpoints import resolve_class

    class_path = model.get("class_path") if hasattr(model, "get") else None
    return resolve_class(class_path) if isinstance(class_path, str) else None


def build_cli(args: Sequence[str] | None = None, *, run: bool = True, **kwargs: Any) -> LightningCLI:
    """Build Lightning's CLI over every LightningModule / LightningDataModule that is importable.

    ``lightning_wass`` is imported first so its classes resolve by bare name.
    """
    import lightning_wass  # noqa: F401  (registers our modules and DataModules for class-path lookup)

    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return WassCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        run=run,
        **kwargs,
    )


def demo_main(argv: Sequence[str]) -> int:
    """``lightning-wass demo``: parse its options and run :func:`lightning_wass.demo.run_demo`."""
    from lightning_wass.demo import PARTS, run_demo

    parser = argparse.ArgumentParser(
        prog="lightning-wass demo",
        description="The newcomer's tour on embedded data (no download): trains each method briefly, "
        "writes PNG figures, report.md and TensorBoard logs under --out, and prints a summary.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=None, help=f"run only these parts (default: all of {PARTS})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (seconds), for smoke tests")
    options = parser.parse_args(list(argv))
    run_demo(options.out, options.parts, seed=options.seed, quick=options.quick)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point of ``lightning-wass``."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(TOP_LEVEL_HELP)
        return 0
    if argv[0] == "demo":
        return demo_main(argv[1:])
    # LightningCLI reads sys.argv itself (and warns when it is given both sys.argv and args)
    build_cli(None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
