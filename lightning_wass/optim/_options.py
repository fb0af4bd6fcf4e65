"""Validation of the SAM-family optimizers' arguments, parameter groups and loaded state dicts.

Every check raises ``ValueError`` / ``TypeError`` naming the argument (or the param group key) and
what is allowed, at construction or load time: nothing reaches a step with a value that would make
it silently wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from lightning_wass._validation import check_betas, check_positive

#: the keys a SAM-family param group must carry in a state dict (``rho_fractions`` is filled in for
#: state dicts saved before ``rho`` became one number per group)
GROUP_KEYS = ("rho", "adaptive", "adaptive_eta", "noise_std", "perturb")


def radii(rho: Any, ascent_steps: int | None, where: str = "rho") -> tuple[float, ...]:
    """The radius of each ascent step from a number (used for every step) or a sequence (one per step)."""
    if isinstance(rho, (int, float)) and not isinstance(rho, bool):
        steps = 1 if ascent_steps is None else ascent_steps
        return (check_positive(where, rho, allow_zero=True),) * steps
    if isinstance(rho, (str, bytes)) or not isinstance(rho, Iterable):
        raise TypeError(f"{where} must be a number or a sequence of numbers (one per ascent step), got {type(rho).__name__}")
    values = tuple(check_positive(f"{where}[{i}]", r, allow_zero=True) for i, r in enumerate(rho))
    if not values:
        raise ValueError(f"{where} must not be empty")
    if ascent_steps is not None and len(values) != ascent_steps:
        raise ValueError(f"{where} has {len(values)} radii but ascent_steps={ascent_steps}; give one radius per ascent step")
    return values


def split_radii(values: Sequence[float]) -> tuple[float, tuple[float, ...]]:
    """``(rho, rho_fractions)``: the largest radius and each step's radius as a fraction of it.

    ``group["rho"]`` is then one plain number that a schedule may set; step ``s`` uses
    ``group["rho"] * group["rho_fractions"][s]`` (all fractions are 1 for a single radius).
    """
    largest = max(values)
    if largest == 0:
        return 0.0, (1.0,) * len(values)
    return float(largest), tuple(v / largest for v in values)


def group_radius(group: dict[str, Any], index: int, ascent_step: int, ascent_steps: int) -> float:
    """The radius of ``ascent_step`` for a param group, after checking what a schedule may have set."""
    rho = group["rho"]
    if not (isinstance(rho, (int, float)) and not isinstance(rho, bool)):
        group["rho"], group["rho_fractions"] = split_radii(radii(rho, ascent_steps, f"param group {index} rho"))
        rho = group["rho"]
    if not (math.isfinite(rho) and rho >= 0):
        raise ValueError(f"param group {index} rho must be a finite number >= 0, got {rho!r} (was it set by a schedule?)")
    fractions = group["rho_fractions"]
    if len(fractions) != ascent_steps:
        raise ValueError(f"param group {index} rho_fractions has {len(fractions)} entries but ascent_steps={ascent_steps}")
    return float(rho) * fractions[ascent_step]


def check_base_kwargs(kwargs: dict[str, Any]) -> None:
    """The base optimizer's hyperparameters that torch accepts but that make every step non-finite."""
    if "lr" in kwargs and not _is_tensor(kwargs["lr"]):
        check_positive("lr", kwargs["lr"], allow_zero=True)
    if "momentum" in kwargs:
        _check_unit_interval("momentum", kwargs["momentum"])
    if "weight_decay" in kwargs:
        check_positive("weight_decay", kwargs["weight_decay"], allow_zero=True)
    if "betas" in kwargs:
        check_betas("betas", kwargs["betas"])
    if "eps" in kwargs:
        check_positive("eps", kwargs["eps"], allow_zero=True)


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _check_unit_interval(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} ({value!r})")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def check_loaded_groups(state_dict: dict[str, Any], owner: str) -> None:
    """Refuse a state dict that is not a SAM-family one (a plain SGD / Adam or davda54/sam dict)."""
    groups = state_dict.get("param_groups")
    if not isinstance(groups, list) or "state" not in state_dict:
        raise ValueError(f"{owner}.load_state_dict needs an optimizer state dict with 'state' and 'param_groups'")
    for i, group in enumerate(groups):
        missing = [key for key in GROUP_KEYS if key not in group]
        if missing:
            raise ValueError(
                f"{owner}.load_state_dict: param group {i} lacks the keys {missing}, so this state dict was not saved "
                f"by a lightning_wass SAM-family optimizer (a plain torch.optim or davda54/sam optimizer saves no "
                f"{missing[0]!r}). To start from a base optimizer's momentum or Adam moments, load its state into a "
                f"fresh base optimizer and build {owner} anew; nothing was loaded."
            )
