"""Argument and value checks shared by every module.

Each check raises ``ValueError`` (or ``TypeError``) whose message names the argument and what is
allowed, so that bad input fails at construction time and never deep inside torch.
"""

from __future__ import annotations

import math
import os
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch


class DivergenceError(FloatingPointError):
    """Training produced a non-finite value. The message says what diverged and what to change."""


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if it is a finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    bound_ok = value >= 0 if allow_zero else value > 0
    if not math.isfinite(value) or not bound_ok:
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_fraction(name: str, value: Any, *, allow_zero: bool = True, allow_one: bool = False) -> float:
    """Return ``float(value)`` if it lies in ``[0, 1)`` (bounds configurable)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    high_ok = value <= 1 if allow_one else value < 1
    if not (math.isfinite(value) and low_ok and high_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``tensor`` holds NaN or Inf (used on data before training starts)."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            count = int(bad.sum())
            raise ValueError(f"{name} contains {count} non-finite value(s) (NaN or Inf); clean the data first")
    return tensor


def raise_if_diverged(what: str, value: torch.Tensor, *, where: str, hint: str = "") -> None:
    """Raise :class:`DivergenceError` if ``value`` is not finite.

    ``what`` names the quantity (``"critic loss"``), ``where`` the module and step, ``hint`` what to change.
    """
    if not bool(torch.isfinite(value).all()):
        message = f"{what} became non-finite (NaN or Inf) in {where}"
        if hint:
            message += f"; {hint}"
        raise DivergenceError(message)


def check_data_batch(who: str, x: Any, data_shape: Any, module: torch.nn.Module | None = None) -> None:
    """A training batch must be what ``who`` was built for: a float tensor of samples shaped
    ``data_shape`` (when known) in the dtype of ``module``'s parameters. Costs no host sync."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{who}: training batches must be float tensors, got {getattr(x, 'dtype', type(x).__name__)}")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(
            f"{who} was built for data_shape={tuple(data_shape)} but a training batch has shape {tuple(x.shape)} "
            f"(samples of shape {tuple(x.shape[1:])}); give the DataModule's data_shape (or networks that match the data)"
        )
    dtype = next((p.dtype for p in module.parameters()), x.dtype) if module is not None else x.dtype
    if x.dtype != dtype:
        raise TypeError(
            f"{who}: the training batch is {x.dtype} but the module's parameters are {dtype}; use "
            "Trainer(precision=...) to match them (e.g. '64-true' for float64 data) or convert the data"
        )


def check_tensor(
    name: str,
    value: Any,
    *,
    shape: str | None = None,
    ndim: int | tuple[int, ...] | None = None,
    allow_integer: bool = True,
    allow_empty: bool = False,
    item: str = "value",
    finite: bool = True,
    hint: str = "",
) -> torch.Tensor:
    """Return ``value`` if it is a real-valued tensor fit for arithmetic; raise naming ``name`` otherwise.

    ``TypeError``: not a ``torch.Tensor``; ``bool`` or complex dtype; an integer dtype unless
    ``allow_integer``. ``ValueError``: ``value.ndim`` not in ``ndim`` (when given; ``shape``
    describes the expected shape in the message, e.g. ``"(n, d)"``); no element (unless
    ``allow_empty``; ``item`` names what one element is, e.g. ``"point"``); NaN or Inf (when
    ``finite``, one host sync; ``hint`` is appended to that message).
    """
    expected = f" of shape {shape}" if shape else ""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{expected}, got {type(value).__name__}")
    if value.dtype == torch.bool:
        raise TypeError(f"{name} must hold numbers, got a bool tensor (convert it with .float() or .long() if that is meant)")
    if value.is_complex():
        raise TypeError(f"{name} must be real, got dtype {value.dtype}")
    if not allow_integer and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None and value.ndim not in ((ndim,) if isinstance(ndim, int) else tuple(ndim)):
        raise ValueError(f"{name} must have shape {shape or f'with {ndim} dimensions'}, got shape {tuple(value.shape)}")
    if not allow_empty and value.numel() == 0:
        raise ValueError(f"{name} must hold at least one {item}, got shape {tuple(value.shape)}")
    if finite and value.is_floating_point():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            message = f"{name} contains NaN or Inf ({int(bad.sum())} non-finite value(s))"
            raise ValueError(f"{message}; {hint}" if hint else message)
    return value


def check_shape(name: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ints ``>= 1`` (a shape, or layer widths with ``allow_empty``).

    ``TypeError``: not a sequence (a string, a number, a tensor), or an entry that is not an integer
    (a float, a bool, a string; numpy and 0-dim integer tensor entries are integers). ``ValueError``:
    an entry ``< 1``, or no entry unless ``allow_empty``.
    """
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of positive ints (e.g. [2] or [1, 28, 28]), got {type(value).__name__} ({value!r})")
    entries: list[int] = []
    for i, entry in enumerate(value):
        if isinstance(entry, bool) or (isinstance(entry, torch.Tensor) and entry.dtype == torch.bool):
            raise TypeError(f"{name} must hold ints, got {list(value)!r} (entry {i} is a bool)")
        try:
            entries.append(operator.index(entry))
        except TypeError:
            raise TypeError(f"{name} must hold ints, got {list(value)!r} (entry {i} is {type(entry).__name__})") from None
    if not entries and not allow_empty:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {list(value)!r}")
    if any(e < 1 for e in entries):
        raise ValueError(f"{name} must hold positive ints (every entry >= 1), got {entries!r}")
    return tuple(entries)


def check_number(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number (any sign); ``TypeError`` for a bool or a
    non-number, ``ValueError`` for NaN or Inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_betas(name: str, value: Any) -> tuple[float, float]:
    """Return Adam's ``(beta1, beta2)`` as floats, each in ``[0, 1)``."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) of numbers in [0, 1), got {value!r}")
    for i, beta in enumerate(value):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"{name} must be a pair of numbers in [0, 1), got {value!r} (a {type(beta).__name__})")
        if not (math.isfinite(beta) and 0 <= beta < 1):
            raise ValueError(f"{name} must lie in [0, 1) entry by entry, got {tuple(value)!r}: {name}[{i}] must lie in [0, 1), got {beta!r}")
    return (float(value[0]), float(value[1]))


def check_module(name: str, value: Any, *, optional: bool = False) -> Any:
    """Return ``value`` if it is a ``torch.nn.Module`` (or ``None`` with ``optional``); else ``TypeError``."""
    if (value is None and optional) or isinstance(value, torch.nn.Module):
        return value
    allowed = "a torch.nn.Module or None" if optional else "a torch.nn.Module"
    raise TypeError(f"{name} must be {allowed}, got {type(value).__name__}")


def check_callable(name: str, value: Any) -> Any:
    """Return ``value`` if it can be called (a network or a function); else ``TypeError``."""
    if not callable(value):
        raise TypeError(f"{name} must be callable (a network or a function), got {type(value).__name__} ({value!r})")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool`` (``True`` / ``False``); else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} ({value!r})")
    return value


def check_path(name: str, value: Any, *, optional: bool = False) -> Any:
    """Return ``value`` if it is a path (``str`` or ``os.PathLike``; ``None`` with ``optional``); else ``TypeError``."""
    if (value is None and optional) or isinstance(value, (str, os.PathLike)):
        return value
    allowed = "a path (str or os.PathLike) or None" if optional else "a path (str or os.PathLike)"
    raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} ({value!r})")
