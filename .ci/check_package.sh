#!/usr/bin/env bash
# Packaging check (run by .ci/run and `make package-check`):
#   1. `python -m build` makes the sdist and the wheel; `twine check --strict` passes on both;
#   2. the wheel holds lightning_wass/py.typed and every subpackage, and no tests/docs/examples;
#   3. the wheel, installed into a fresh venv, runs `lightning-wass --help` (and --version) and
#      imports every public name.
# What "fresh" means in 3: a new `python -m venv` with only pip; our wheel installed there with
# --no-deps from the file (no index); the third-party dependencies (torch, lightning, POT, ...) are
# the CI venv's, reached read-only through a .pth file instead of being installed again (that would
# cost 2-3 minutes and several GB of torch). The .pth adds the CI venv's site-packages as a plain
# path, so its .pth files (among them the editable install of this checkout) are not run: the
# package imported is the wheel's, which the check asserts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== python -m build"
"$PY" -m build --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"

echo "== twine check --strict"
"$PY" -m twine check --strict "$WORK"/dist/*

WHEEL=$(ls "$WORK"/dist/*.whl)
echo "== wheel contents"
"$PY" - "$WHEEL" <<'PYEOF'
import sys
import zipfile
from pathlib import Path

names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "lightning_wass/py.typed" in names, "py.typed missing from the wheel"
packages = sorted(str(p.parent).replace("\\", "/") for p in Path("lightning_wass").rglob("__init__.py"))
missing = [p for p in packages if f"{p}/__init__.py" not in names]
assert not missing, f"subpackages missing from the wheel: {missing}"
stray = [n for n in names if n.split("/")[0] in ("tests", "docs", "examples", "benchmarks")]
assert not stray, f"files that do not belong in the wheel: {stray[:5]}"
entry = [n for n in names if n.endswith("entry_points.txt")]
assert entry and "lightning-wass = lightning_wass.cli:main" in zipfile.ZipFile(sys.argv[1]).read(entry[0]).decode()
print(f"{len(names)} files; py.typed, {len(packages)} packages, console script: ok")
PYEOF

echo "== fresh venv: the wheel with --no-deps, third-party deps shared read-only"
BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
"$BASE" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --no-deps --no-index "$WHEEL"
SHARED=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CLEAN=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SHARED" > "$CLEAN/zz_ci_shared_dependencies.pth"
cd "$WORK"  # not the checkout: nothing imports from the source tree
./venv/bin/lightning-wass --help > help.txt
grep -q "^  demo " help.txt && head -1 help.txt
./venv/bin/lightning-wass --version
./venv/bin/python - "$CLEAN" <<'PYEOF'
import importlib
import sys

import lightning_wass

assert lightning_wass.__file__.startswith(sys.argv[1]), f"imported {lightning_wass.__file__}, not the wheel's copy"
for name in lightning_wass.__all__:
    getattr(lightning_wass, name)
count = len(lightning_wass.__all__)
for sub in ("functional", "optim", "modules", "nn", "callbacks", "datamodules", "plugins", "ot", "metrics", "checkpoints", "guard", "cli", "demo"):
    module = importlib.import_module(f"lightning_wass.{sub}")
    for name in getattr(module, "__all__", []):
        getattr(module, name)
        count += 1
print(f"imported {count} public names from {lightning_wass.__file__}")
PYEOF
echo "== packaging check passed"
