"""Checkpoint files on disk: read them safely, write them atomically.

Reading a damaged file with ``torch.load`` fails deep inside torch with messages that name neither the
file nor the problem (an empty file gives a bare ``EOFError``, a text file ``KeyError: 101``, random
bytes the advice to set ``weights_only=False``, a truncated file ``OSError: [Errno 22]``), and a
checkpoint of another module fails later still, in that module's ``__init__``. Here every such case
is a :class:`CheckpointError` (a ``ValueError``) that names the path, what is wrong and what was
expected:

- :func:`read_torch_file` checks the file (exists, is a file, is non-empty, is a PyTorch file, is
  complete: the zip archive's CRCs match) and loads it;
- :func:`read_checkpoint` also checks that it is a Lightning checkpoint (a dict with a
  ``state_dict``) of the expected module class;
- :class:`CheckpointedModule`, mixed into every LightningModule of this package, records its class
  in each checkpoint under :data:`MODULE_KEY` and runs :func:`read_checkpoint` before Lightning's
  ``load_from_checkpoint``;
- :func:`check_ckpt_path` is the same check for ``Trainer.fit(ckpt_path=...)`` (the CLI runs it);
- :func:`save_atomically` writes a file so that a reader sees the old or the new file, never half of
  one, and an interrupted write leaves no temporary file behind.

Checkpoints written before :data:`MODULE_KEY` existed still load: their class is then judged from
Lightning's own ``_class_path`` hyperparameter (checkpoints of modules built by LightningCLI) or,
failing that, from the saved hyperparameters' names against the class's ``__init__`` arguments.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod

from lightning_wass._validation import check_path

MODULE_KEY = "lightning_wass_module"
"""Checkpoint key holding the class path (``module.QualName``) of the module that wrote it."""

HPARAMS_KEY = "hyper_parameters"
VERSION_KEY = "pytorch-lightning_version"
RESUME_KEYWORDS = ("last", "best", "hpc")
"""``ckpt_path`` values that Lightning resolves itself (not file paths)."""

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2 = b"\x80\x02"  # torch.save's legacy (non-zip) format starts with this pickle header
_LOAD_ERRORS = (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


class CheckpointError(ValueError):
    """A file that cannot be used as the checkpoint (or cache) asked for; the message names the path."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (a ``ValueError`` and a ``FileNotFoundError``)."""


# ----------------------------------------------------------------------------- names of classes
def class_path(cls: type) -> str:
    """``module.QualName`` of ``cls``, as stored under :data:`MODULE_KEY`."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _short_name(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def resolve_class(path: str) -> type | None:
    """The class named by ``path`` if its module is already imported, else ``None``.

    Nothing is imported: a checkpoint must not be able to run code by naming a module.
    """
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        obj: Any = module
        for name in parts[split:]:
            obj = getattr(obj, name, None)
        return obj if isinstance(obj, type) else None
    return None


def describe_expected(expected: type | None) -> str:
    """What a caller expected, for messages: ``"a Lightning checkpoint of a VAE"``."""
    return "a Lightning checkpoint" if expected is None else f"a Lightning checkpoint of a {expected.__name__}"


# ----------------------------------------------------------------------------- the file itself
def _as_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser()


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\n\r\t" for ch in text)


def file_problem(path: str | os.PathLike[str], *, verify: bool = True) -> str | None:
    """Why ``path`` cannot be a PyTorch file, without unpickling it; ``None`` if it looks like one.

    Checks, in order: it exists, is a regular file, is non-empty, starts like a ``torch.save`` file
    (a zip archive, or the legacy pickle format), and for a zip archive that its end (the central
    directory) is there and, with ``verify``, that every member's CRC-32 matches (reads the whole file).
    """
    path = _as_path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a file"
    if not path.is_file():
        return "is not a regular file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        return _zip_problem(path, size, verify=verify)
    if head.startswith(_PICKLE_PROTOCOL_2):
        return None  # legacy format: only loading it tells
    if _is_text(head):
        return f"is not a PyTorch checkpoint (it starts with text: {head[:40].decode('utf-8')!r})"
    return f"is not a PyTorch checkpoint (its first bytes {head[:8].hex(' ')} are neither a zip archive nor a pickle)"


def _zip_problem(path: Path, size: int, *, verify: bool) -> str | None:
    if not zipfile.is_zipfile(path):
        return f"is truncated or damaged (a zip-format PyTorch file of {size} bytes whose end is missing)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(name.endswith("data.pkl") for name in names):
                return "is a zip archive but not a PyTorch checkpoint (it has no data.pkl)"
            bad = archive.testzip() if verify else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"is truncated or damaged ({type(error).__name__}: {error})"
    if bad is not None:
        return f"is truncated or damaged (member {bad!r} fails its CRC check)"
    return None


def read_torch_file(
    path: str | os.PathLike[str],
    *,
    expected: str = "a PyTorch checkpoint",
    what: str = "checkpoint",
    map_location: Any = "cpu",
    weights_only: bool | None = True,
    verify: bool = True,
    mmap: bool = False,
) -> Any:
    """``torch.load(path)`` after :func:`file_problem`, every failure a :class:`CheckpointError`.

    The message reads ``"<what> '<path>' <problem>; expected <expected>"``. ``weights_only`` is
    passed to ``torch.load`` (``None``: torch's default, ``True`` since torch 2.6, as Lightning
    uses); ``mmap=True`` maps tensor storages instead of reading them (zip-format files only).
    """
    file = _as_path(path)

    def error(problem: str, cls: type[CheckpointError] = CheckpointError) -> CheckpointError:
        return cls(f"{what} {str(file)!r} {problem}; expected {expected}")

    problem = file_problem(file, verify=verify)
    if problem == "does not exist":
        raise error(problem, MissingCheckpointError)
    if problem is not None:
        raise error(problem)
    mmap = mmap and zipfile.is_zipfile(file)
    try:
        with _legacy_patch():
            return torch.load(file, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if weights_only is not False and "weights_only" in str(exc):
            first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
            raise error(
                f"holds objects that weights_only loading refuses ({first[:200]}); if you trust the file, "
                "load it with weights_only=False"
            ) from exc
        raise error(f"is truncated or damaged ({type(exc).__name__}: {exc})") from exc
    except _LOAD_ERRORS as exc:
        raise error(f"is truncated or damaged ({type(exc).__name__}: {exc or 'no detail'})") from exc


@contextlib.contextmanager
def _legacy_patch() -> Iterator[None]:
    """Lightning's patch for unpickling checkpoints of old Lightning versions, as its loader uses."""
    try:
        from lightning.pytorch.utilities.migration import pl_legacy_patch
    except ImportError:  # pragma: no cover - a Lightning version without it
        yield
        return
    with pl_legacy_patch():
        yield


# ----------------------------------------------------------------------------- Lightning checkpoints
def _holding(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a Tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        keys = sorted(map(str, obj))
        shown = ", ".join(repr(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"a dict with keys [{shown}]" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def check_lightning_checkpoint(checkpoint: Any, path: str | os.PathLike[str], expected: type | None = None) -> dict[str, Any]:
    """``checkpoint`` if it is a Lightning checkpoint, else :class:`CheckpointError`.

    A Lightning checkpoint is a dict with a ``state_dict`` dict and the ``pytorch-lightning_version``
    that Lightning's loader reads first.
    """
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        if VERSION_KEY in checkpoint:
            return dict(checkpoint)
        raise CheckpointError(
            f"checkpoint {str(_as_path(path))!r} holds a 'state_dict' but no {VERSION_KEY!r}, so it was not written "
            f"by Lightning (Trainer.fit / trainer.save_checkpoint); expected {describe_expected(expected)}"
        )
    hint = ""
    if isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        hint = " (it looks like a bare state_dict: build the module and call module.load_state_dict(torch.load(path)))"
    raise CheckpointError(
        f"checkpoint {str(_as_path(path))!r} is a PyTorch file holding {_holding(checkpoint)}, not a Lightning "
        f"checkpoint (no 'state_dict'){hint}; expected {describe_expected(expected)}"
    )


def saved_class_path(checkpoint: Mapping[str, Any]) -> str | None:
    """Class path of the module that wrote ``checkpoint``: :data:`MODULE_KEY`, else LightningCLI's ``_class_path``."""
    saved = checkpoint.get(MODULE_KEY)
    if isinstance(saved, str):
        return saved
    hparams = checkpoint.get(HPARAMS_KEY)
    if isinstance(hparams, Mapping) and isinstance(hparams.get("_class_path"), str):
        return hparams["_class_path"]
    return None


def _related(saved: str, expected: type) -> bool:
    """The saved class is ``expected``, a subclass or a parent of it, or has the same name as one of them."""
    names = {cls.__name__ for cls in expected.__mro__}
    saved_cls = resolve_class(saved)
    if saved_cls is not None and (issubclass(saved_cls, expected) or issubclass(expected, saved_cls)):
        return True
    if _short_name(saved) == expected.__name__:
        return True
    return saved_cls is None and _short_name(saved) in names


def unexpected_hparams(checkpoint: Mapping[str, Any], expected: type, overrides: Mapping[str, Any] = ()) -> list[str]:
    """Saved hyperparameter names that ``expected.__init__`` does not take (empty when it cannot tell).

    Used for checkpoints that do not record their class: a VAE cannot have written ``lipschitz``.
    Keys Lightning adds itself (``_class_path``, ``_instantiator``) and ``overrides`` are ignored.
    """
    hparams = checkpoint.get(HPARAMS_KEY)
    if not isinstance(hparams, Mapping) or not hparams:
        return []
    try:
        parameters = inspect.signature(expected.__init__).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    accepted = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    if checkpoint.get("hparams_name") in accepted:  # all hparams go to one argument
        return []
    return sorted(str(k) for k in hparams if not str(k).startswith("_") and k not in accepted and k not in overrides)


def check_module_class(
    checkpoint: Mapping[str, Any],
    path: str | os.PathLike[str],
    expected: type,
    overrides: Mapping[str, Any] = (),
    *,
    check_hparams: bool = True,
) -> None:
    """:class:`CheckpointError` unless ``checkpoint`` was written by ``expected`` (or a subclass or parent of it).

    With the class recorded (:func:`saved_class_path`), the classes are compared; without it (a
    checkpoint older than :data:`MODULE_KEY`, or a module outside this package) and with
    ``check_hparams``, the saved hyperparameter names are compared with ``expected.__init__``'s
    arguments (:func:`unexpected_hparams`); when neither tells, the checkpoint is accepted.
    """
    shown = str(_as_path(path))
    saved = saved_class_path(checkpoint)
    if saved is not None:
        if _related(saved, expected):
            return
        if resolve_class(saved) is not None:
            raise CheckpointError(
                f"checkpoint {shown!r} holds a {_short_name(saved)} checkpoint ({saved}), not a {expected.__name__} "
                f"(or a subclass); load it with {_short_name(saved)}.load_from_checkpoint"
            )
    if not check_hparams:
        return
    extra = unexpected_hparams(checkpoint, expected, overrides)
    if extra:
        writer = f"a {_short_name(saved)}" if saved else "another module"
        raise CheckpointError(
            f"checkpoint {shown!r} looks like {writer}'s checkpoint, not a {expected.__name__}'s: its hyperparameters "
            f"{extra} are not arguments of {expected.__name__}.__init__; expected {describe_expected(expected)}"
        )


def read_checkpoint(
    path: str | os.PathLike[str],
    expected: type | None = None,
    *,
    overrides: Mapping[str, Any] = (),
    check_hparams: bool = True,
    weights_only: bool | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """The Lightning checkpoint at ``path``, checked; any problem is a :class:`CheckpointError`.

    Checks the file (:func:`read_torch_file`: exists, non-empty, a complete PyTorch file), that it is a
    Lightning checkpoint (:func:`check_lightning_checkpoint`) and, given ``expected``, that it was
    written by that class (:func:`check_module_class`). Tensors are memory-mapped, not read (zip
    files), so the check costs little more than the CRC pass of ``verify``. ``weights_only`` as in
    Lightning's loader (``None``: torch's default, ``True``).
    """
    check_path("path", path)
    if expected is not None and not isinstance(expected, type):
        raise TypeError(f"expected must be a LightningModule class or None, got {type(expected).__name__} ({expected!r})")
    checkpoint = read_torch_file(
        path, expected=describe_expected(expected), weights_only=weights_only, verify=verify, mmap=True
    )
    checkpoint = check_lightning_checkpoint(checkpoint, path, expected)
    if expected is not None:
        check_module_class(checkpoint, path, expected, overrides, check_hparams=check_hparams)
    return checkpoint


def _is_local_path(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and "://" not in str(path)


def check_ckpt_path(
    ckpt_path: Any, expected: type | None = None, *, weights_only: bool | None = None, allow_directory: bool = False
) -> bool:
    """Check a ``Trainer.fit/validate/test/predict(ckpt_path=...)`` file before Lightning reads it.

    ``expected`` is the class of the module it must belong to (``type(model)``). Skipped for
    ``None``, Lightning's keywords (``"last"``, ``"best"``, ``"hpc"``, ``"registry..."``), URLs and,
    with ``allow_directory`` (sharded strategies such as FSDP or DeepSpeed), directories. Returns
    whether the file was checked; a problem is a :class:`CheckpointError`.
    """
    if ckpt_path is None or not _is_local_path(ckpt_path):
        return False
    text = str(ckpt_path)
    if text in RESUME_KEYWORDS or text.startswith("registry"):
        return False
    if allow_directory and _as_path(text).is_dir():
        return False
    read_checkpoint(text, expected, weights_only=weights_only)
    return True


@contextlib.contextmanager
def _outside_cli_instantiation() -> Iterator[None]:
    """Let a module built here save its own hyperparameters even inside LightningCLI's instantiation.

    LightningCLI instantiates each class inside a context that makes every ``save_hyperparameters``
    call record *that* class's config; a module loaded while it is active (the VAE of a
    LatentDataModule) would record (and be built
    from) the DataModule's arguments. This clears the context for the duration of the load.
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning version without the context: nothing to clear
        yield
        return
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def _class_that_wrote(checkpoint: Mapping[str, Any], shown: str) -> type:
    saved = saved_class_path(checkpoint)
    if saved is None:
        raise CheckpointError(
            f"checkpoint {shown!r} does not say which module wrote it (no {MODULE_KEY!r} and no _class_path); "
            "load it with YourModule.load_from_checkpoint(path) and pass the module instead of the path"
        )
    cls = resolve_class(saved)
    if cls is None and saved.startswith(f"{__package__}."):
        # Our own package: importing one of its modules by name runs no foreign code.
        importlib.import_module(saved.rsplit(".", 1)[0])
        cls = resolve_class(saved)
    if cls is None or not callable(getattr(cls, "load_from_checkpoint", None)):
        raise CheckpointError(
            f"checkpoint {shown!r} was written by {saved}, which is not imported here; import the module "
            "that defines it first (a checkpoint never imports code by itself)"
        )
    return cls


def load_module(path: str | os.PathLike[str], *, map_location: Any = None) -> Any:
    """The LightningModule saved at ``path``, built by the class recorded in it (:data:`MODULE_KEY`).

    For code that takes "a module or its checkpoint" without knowing the class (``LatentDataModule(vae=...)``).
    The file is checked with :func:`read_checkpoint` first; classes of this package are imported on
    demand, any other class must already be imported. Safe inside LightningCLI's instantiation.
    """
    checkpoint = read_checkpoint(path)
    cls = _class_that_wrote(checkpoint, str(_as_path(path)))
    with _outside_cli_instantiation():
        return cls.load_from_checkpoint(str(path), map_location=map_location)


# ----------------------------------------------------------------------------- the mixin
def record_module_class(module: Any, checkpoint: dict[str, Any]) -> None:
    """Store ``type(module)``'s class path in ``checkpoint`` under :data:`MODULE_KEY`."""
    checkpoint[MODULE_KEY] = class_path(type(module))


def _recording(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` (an ``on_save_checkpoint``) that also records the module's class."""

    @functools.wraps(hook)
    def on_save_checkpoint(self: Any, checkpoint: dict[str, Any]) -> None:
        hook(self, checkpoint)
        record_module_class(self, checkpoint)

    on_save_checkpoint._records_module_class = True  # type: ignore[attr-defined]
    return on_save_checkpoint


class CheckpointedModule:
    """Mixin for LightningModules (put it before ``pl.LightningModule``): checkpoints that say who wrote them.

    Every checkpoint records the module's class path under :data:`MODULE_KEY` (also when a subclass
    overrides ``on_save_checkpoint`` without calling ``super()``: the override is wrapped), and
    :meth:`load_from_checkpoint` runs :func:`read_checkpoint` first, so a damaged file or another
    module's checkpoint is a :class:`CheckpointError` naming the path, not a traceback from torch or
    from ``__init__``. A checkpoint loads into its own class, a subclass or a parent of it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hook = cls.__dict__.get("on_save_checkpoint")
        if hook is not None and callable(hook) and not getattr(hook, "_records_module_class", False):
            cls.on_save_checkpoint = _recording(hook)  # type: ignore[method-assign]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        record_module_class(self, checkpoint)

    on_save_checkpoint._records_module_class = True  # type: ignore[attr-defined]

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike[str] | IO[bytes],
        map_location: Any = None,
        hparams_file: str | os.PathLike[str] | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint`` after :func:`read_checkpoint` (local paths; file objects and URLs go straight through)."""
        if _is_local_path(checkpoint_path):
            read_checkpoint(
                checkpoint_path, cls, overrides=kwargs, check_hparams=hparams_file is None, weights_only=weights_only
            )
        parent = super(CheckpointedModule, cls).load_from_checkpoint  # type: ignore[misc]
        return parent(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
            weights_only=weights_only, **kwargs,
        )


# ----------------------------------------------------------------------------- atomic writes
def save_atomically(obj: Any, path: str | os.PathLike[str], save: Callable[[Any, IO[bytes]], None] | None = None) -> Path:
    """Write ``obj`` to ``path`` so that ``path`` is always the old file or the complete new one.

    ``save(obj, file)`` (default ``torch.save``) writes into a temporary file in ``path``'s folder,
    which is flushed, ``fsync``-ed and renamed over ``path`` (``os.replace``, atomic on POSIX and
    Windows). If anything interrupts the write (an exception, ``KeyboardInterrupt``), the temporary
    file is removed and ``path`` is untouched. Returns ``path``.
    """
    path = _as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            (save or torch.save)(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
