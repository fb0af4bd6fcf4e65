"""Package-level invariants: the public API imports, and the package follows its own rules."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import lightning_wass

PACKAGE_DIR = Path(lightning_wass.__file__).parent


def test_every_public_name_resolves() -> None:
    missing = [name for name in lightning_wass.__all__ if not hasattr(lightning_wass, name)]
    assert missing == []
    assert len(set(lightning_wass.__all__)) == len(lightning_wass.__all__)


def test_subpackages_export_what_they_list() -> None:
    for sub in ("optim", "nn", "modules", "callbacks", "datamodules"):
        module = importlib.import_module(f"lightning_wass.{sub}")
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"lightning_wass.{sub}.__all__ lists {name} but it is not defined"


def test_no_hard_coded_devices_and_no_mixed_lightning_imports() -> None:
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        text = path.read_text()
        if re.search(r"\.cuda\(", text):
            offenders.append(f"{path}: .cuda()")
        if re.search(r"^\s*(import|from)\s+pytorch_lightning", text, flags=re.M):
            offenders.append(f"{path}: imports pytorch_lightning")
    assert offenders == []


def _lightning_wass_file(module: str) -> Path | None:
    """The source file of ``lightning_wass.<...>`` (a module or a package's ``__init__``), if it exists."""
    base = PACKAGE_DIR.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> list[str]:
    """Module names imported by the file at ``path`` (relative imports resolved against ``package``)."""
    import ast

    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [node.module])
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]  # ``from pkg import submodule``
    return names


def test_optimizers_and_functional_math_import_no_lightning() -> None:
    # The optimizers are plain torch.optim classes that users drop into any loop, and the functional
    # math is read and tested without a Trainer: no module under lightning_wass/optim or
    # lightning_wass/functional may import Lightning, directly or through any lightning_wass module
    # it imports (followed transitively, parents' __init__ included).
    offenders = []
    files = [p for sub in ("optim", "functional") for p in (PACKAGE_DIR / sub).rglob("*.py")]
    todo = [".".join(p.relative_to(PACKAGE_DIR.parent).with_suffix("").parts).removesuffix(".__init__") for p in files]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        path = _lightning_wass_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # importing a.b.c runs a.b's __init__
        package = module if path.name == "__init__.py" else ".".join(parts[:-1])
        for name in _imports(path, package):
            if name.split(".")[0] in ("lightning", "pytorch_lightning"):
                offenders.append(f"{module}: {name}")
            elif name.startswith("lightning_wass."):
                todo.append(name)
    assert "lightning_wass.functional.proximal_flow.rollout" in seen and "lightning_wass.optim.otmdr" in seen
    assert offenders == []


def test_no_bare_top_level_callbacks_or_datamodules_package() -> None:
    # DESIGN.md: callbacks and datamodules live inside the package so installing it never puts
    # bare top-level modules named `callbacks` / `datamodules` on a user's path.
    root = PACKAGE_DIR.parent
    assert not (root / "callbacks").exists()
    assert not (root / "datamodules").exists()
