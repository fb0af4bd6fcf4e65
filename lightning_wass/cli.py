"""The ``lightning-wass`` command line.

``lightning-wass fit|validate|test|predict --config CONFIG.yaml`` is Lightning's own
:class:`~lightning.pytorch.cli.LightningCLI`: any LightningModule and LightningDataModule can be
chosen by class path (``--model lightning_wass.modules.VAE``) or, for ours, by bare class name
(``--model VAE``), and every constructor argument is a flag or a config key.
``lightning-wass demo [--out DIR]`` runs the newcomer's tour (:mod:`lightning_wass.demo`).

What this module adds to LightningCLI:

- ``lightning-wass --help`` and ``demo --help`` print without importing torch or Lightning (this
  module imports only the standard library at the top; Lightning is imported when a subcommand runs).
- A misspelled subcommand, or an unknown ``--model`` / ``--data`` name, is answered in one line with
  the close matches among the valid names (:func:`check_class_names`).
- A constructor's ``ValueError`` / ``TypeError`` raised while LightningCLI builds the objects is a
  :class:`ConfigError` naming the config key it came from (``--model.latent_dim``); the command
  line prints it as one line (set ``LIGHTNING_WASS_TRACEBACK=1`` for the full traceback).
- ``--ckpt_path`` is checked before Lightning reads it
  (:func:`~lightning_wass.checkpoints.check_ckpt_path`): an empty, truncated or foreign file, or
  another module's checkpoint, is a ``ValueError`` naming the path and what was expected.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

LIGHTNING_SUBCOMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")
SUBCOMMANDS: tuple[str, ...] = (*LIGHTNING_SUBCOMMANDS, "demo")

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

options:
  -h, --help  show this message
  --version   print the version

Each of fit/validate/test/predict takes --help for its full list of options
(Lightning's LightningCLI: --model and --data select any LightningModule / LightningDataModule
by class path or, for ours, by class name; --print_config shows the resolved configuration).
"""


class ConfigError(ValueError):
    """A value in the command line or config that a constructor (or a name lookup) refused.

    ``key`` is the config key it came from (``"model.latent_dim"``, ``"data"``, ``"trainer"``),
    ``None`` when it could not be told.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ----------------------------------------------------------------------------- name checks
def _import_ours() -> None:
    """Import our modules, DataModules, callbacks and optimizers (so they resolve by bare name)."""
    import lightning_wass.callbacks  # noqa: F401
    import lightning_wass.datamodules  # noqa: F401
    import lightning_wass.modules  # noqa: F401
    import lightning_wass.optim  # noqa: F401


def _public_classes(kind: str) -> dict[str, type]:
    """Our LightningModules (``kind="model"``) or LightningDataModules (``kind="data"``) by class name."""
    import lightning.pytorch as pl

    import lightning_wass.datamodules as datamodules
    import lightning_wass.modules as modules

    package, base = (modules, pl.LightningModule) if kind == "model" else (datamodules, pl.LightningDataModule)
    found = {}
    for name in package.__all__:
        obj = getattr(package, name)
        if isinstance(obj, type) and issubclass(obj, base):
            found[name] = obj
    # base classes others build on (InMemoryDataModule, TorchvisionImageDataModule) are not choices
    return {n: c for n, c in found.items() if not any(o is not c and issubclass(o, c) for o in found.values())}


def _importable_subclasses(kind: str) -> set[str]:
    """Names of every imported subclass of the kind's Lightning base class (bare names LightningCLI resolves)."""
    import lightning.pytorch as pl

    _import_ours()
    base = pl.LightningModule if kind == "model" else pl.LightningDataModule
    names: set[str] = set()
    todo = [base]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__name__ not in names:
                names.add(sub.__name__)
                todo.append(sub)
    return names


def _resolves(value: str, kind: str) -> bool:
    """Whether LightningCLI can resolve ``value`` as a class path or a bare class name."""
    if "." not in value:
        return value in _importable_subclasses(kind)
    module_name, _, attr = value.rpartition(".")
    import importlib

    try:
        return isinstance(getattr(importlib.import_module(module_name), attr, None), type)
    except ImportError:
        return False


def unknown_name_message(value: str, kind: str) -> str | None:
    """``None`` if ``--<kind> <value>`` names a class LightningCLI can build, else a one-line message
    with the close matches among our classes and the list of all of them."""
    if _resolves(value, kind):
        return None
    ours = sorted(_public_classes(kind))
    bare = value.rpartition(".")[2]
    close = difflib.get_close_matches(bare, ours, n=3, cutoff=0.5)
    close += [n for n in ours if bare.lower() and bare.lower() in n.lower() and n not in close]
    what = "LightningModule" if kind == "model" else "LightningDataModule"
    hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
    return f"unknown --{kind} {value!r}: no {what} of that name{hint} (ours: {', '.join(ours)}; others by full class path, e.g. my_package.MyModule)"


def _flag_values(argv: Sequence[str], flag: str) -> list[str]:
    """Values given to ``--flag`` (``--flag X`` or ``--flag=X``; not ``--flag.sub``)."""
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1 :])
    return values


def _class_path_of(node: Any) -> str | None:
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and isinstance(node.get("class_path"), str):
        return node["class_path"]
    return None


def check_class_names(argv: Sequence[str]) -> None:
    """Raise :class:`ConfigError` if ``--model`` / ``--data`` (on the command line or in a
    ``--config`` file) names a class that does not exist, with the close matches among ours."""
    for kind in ("model", "data"):
        candidates: list[str] = []
        for config in _flag_values(argv, "--config") + _flag_values(argv, "-c"):
            path = Path(config)
            if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
                import yaml

                try:
                    loaded = yaml.safe_load(path.read_text())
                except yaml.YAMLError:
                    continue  # left to LightningCLI, which names the file and the line
                name = _class_path_of(loaded.get(kind)) if isinstance(loaded, dict) else None
                if name:
                    candidates.append(name)
        for value in _flag_values(argv, f"--{kind}"):
            if re.fullmatch(r"[A-Za-z_][\w.]*", value) and not value.endswith((".yaml", ".yml", ".json")):
                candidates.append(value)
        for name in candidates:
            message = unknown_name_message(name, kind)
            if message:
                raise ConfigError(message, key=kind)


# ----------------------------------------------------------------------------- constructor errors
def _config_key(error: BaseException, config: Any) -> str | None:
    """The config key whose object raised ``error`` while LightningCLI instantiated the classes."""
    import traceback

    key = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        dest = getattr(owner, "dest", None)
        if frame.f_code.co_name == "_instantiate_trainer":
            key = "trainer"
        elif isinstance(dest, str) and type(owner).__name__ == "ActionTypeHint":
            key = dest
    if key is None:
        return None
    # the argument: our constructors' messages start with the argument's name
    first = re.match(r"`?([A-Za-z_]\w*)", str(_root_cause(error)))
    node = _get(config, key)
    init_args = _get(node, "init_args") if node is not None and _get(node, "class_path") is not None else node
    if first and init_args is not None and _get(init_args, first.group(1)) is not None:
        return f"{key}.{first.group(1)}"
    return key


def _get(node: Any, key: str) -> Any:
    try:
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node
    except (KeyError, AttributeError, TypeError):
        return None


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception behind jsonargparse's wrapping (``Does not validate against ...``)."""
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or not isinstance(inner, (ValueError, TypeError)):
            return error
        error = inner


def _raising_class(error: BaseException) -> str | None:
    """The class whose ``__init__`` raised ``error`` (the outermost constructor frame of its traceback)."""
    import traceback

    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "__init__" and owner is not None and not type(owner).__module__.startswith("jsonargparse"):
            return type(owner).__name__
    return None


@functools.cache
def _wass_cli_class() -> type[LightningCLI]:
    """:class:`WassCLI`, defined on first use so that importing this module imports no Lightning."""
    from lightning.pytorch.cli import LightningCLI

    class WassCLI(LightningCLI):
        """Lightning's CLI, with ``--ckpt_path`` checked before anything reads it, and constructor
        errors re-raised as :class:`ConfigError` naming their config key.

        LightningCLI itself reads the checkpoint's hyperparameters into the model's config right after
        parsing, so the file is checked there first (against the configured model class), and again
        before the subcommand runs if the instantiated model's class differs or the strategy is known.
        """

        _checked_ckpt: tuple[str, type | None] | None = None

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as error:
                config = self.config[self.subcommand] if self.subcommand else self.config
                key = _config_key(error, config)
                cause = _root_cause(error)
                if "Does not validate against any of the Union subtypes" in str(cause):
                    raise  # not a constructor's own error
                where = f"--{key}" if key else "the configuration"
                cls = _raising_class(cause)
                message = f"{where}{f' ({cls})' if cls else ''}: {type(cause).__name__}: {str(cause).strip()}"
                raise ConfigError(message, key=key) from cause
            except Exception as error:  # Lightning's MisconfigurationException and friends
                if self.subcommand is None or type(error).__name__ != "MisconfigurationException":
                    raise
                config = self.config[self.subcommand]
                key = _config_key(error, config) or "trainer"
                raise ConfigError(f"--{key}: {str(error).strip()}", key=key) from error

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

    WassCLI.__module__ = __name__
    WassCLI.__qualname__ = "WassCLI"
    return WassCLI


def __getattr__(name: str) -> Any:
    if name == "WassCLI":  # ``from lightning_wass.cli import WassCLI`` imports Lightning then
        return _wass_cli_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _configured_class(model: Any) -> type | None:
    """The class a parsed ``model`` config names (``class_path``), if it is already imported."""
    from lightning_wass.checkpoints import resolve_class

    class_path = model.get("class_path") if hasattr(model, "get") else None
    return resolve_class(class_path) if isinstance(class_path, str) else None


def build_cli(args: Sequence[str] | None = None, *, run: bool = True, **kwargs: Any) -> LightningCLI:
    """Build Lightning's CLI over every LightningModule / LightningDataModule that is importable.

    Our modules, DataModules, callbacks and optimizers are imported first so they resolve by bare
    name. A constructor's ``ValueError`` / ``TypeError`` is raised as :class:`ConfigError`.
    """
    import lightning.pytorch as pl

    _import_ours()
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return _wass_cli_class()(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        run=run,
        **kwargs,
    )


# ----------------------------------------------------------------------------- demo and main
def demo_parser() -> argparse.ArgumentParser:
    """The options of ``lightning-wass demo`` (building it imports neither torch nor Lightning)."""
    from lightning_wass.demo import PARTS

    parser = argparse.ArgumentParser(
        prog="lightning-wass demo",
        description="The newcomer's tour on embedded data (no download): trains each method briefly, "
        "writes PNG figures, report.md and TensorBoard logs under --out, and prints a summary.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=None, metavar="PART", help=f"run only these parts (default: all of {', '.join(PARTS)})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (seconds), for smoke tests")
    parser.add_argument(
        "--verbose", action="store_true", help="show Lightning's own banners, progress bars and warnings (hidden by default)"
    )
    return parser


def demo_main(argv: Sequence[str]) -> int:
    """``lightning-wass demo``: parse its options and run :func:`lightning_wass.demo.run_demo`."""
    options = demo_parser().parse_args(list(argv))
    from lightning_wass.demo import run_demo

    run_demo(options.out, options.parts, seed=options.seed, quick=options.quick, quiet=not options.verbose)
    return 0


def _error(message: str) -> int:
    print(f"lightning-wass: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point of ``lightning-wass``; returns the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        try:
            print(TOP_LEVEL_HELP, flush=True)
        except BrokenPipeError:  # `lightning-wass --help | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv[0] == "--version":
        from lightning_wass import __version__

        print(f"lightning-wass {__version__}")
        return 0
    if argv[0] == "demo":
        return demo_main(argv[1:])
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_SUBCOMMANDS:
        close = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return _error(f"unknown subcommand {argv[0]!r}{hint}; choose from {', '.join(SUBCOMMANDS)} (lightning-wass --help)")
    traceback_wanted = os.environ.get("LIGHTNING_WASS_TRACEBACK", "") not in ("", "0")
    try:
        if "-h" not in argv and "--help" not in argv:
            check_class_names(argv)
        # LightningCLI reads sys.argv itself (and warns when it is given both sys.argv and args)
        build_cli(None if from_command_line else argv)
    except ConfigError as error:
        if traceback_wanted:
            raise
        return _error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
