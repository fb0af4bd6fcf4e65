"""README's DataModule argument table is true: each row lists exactly the constructor's arguments."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning_wass.datamodules as datamodules

README = Path(__file__).resolve().parents[1] / "README.md"


def constructor_arguments(cls: type) -> list[str]:
    """Names a user can pass to ``cls(...)``: its ``__init__`` parameters, ``**kwargs`` followed into
    the next class up the MRO with an ``__init__`` of its own."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return names


def readme_table() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    section = README.read_text().split("Constructor arguments of each DataModule", 1)[1].split("\n\n", 2)[1]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            rows[name] = re.findall(r"`(\w+)`", cells[1])
    return rows


def test_readme_lists_every_public_datamodule() -> None:
    public = {
        n for n in datamodules.__all__
        if n.endswith("DataModule") and n not in ("InMemoryDataModule", "TorchvisionImageDataModule")
    }
    assert set(readme_table()) == public


def test_readme_argument_lists_match_the_constructors() -> None:
    wrong = {}
    for name, listed in readme_table().items():
        actual = constructor_arguments(getattr(datamodules, name))
        if sorted(listed) != sorted(actual):
            wrong[name] = {"README only": sorted(set(listed) - set(actual)), "missing from README": sorted(set(actual) - set(listed))}
    assert wrong == {}
