# Two-command quickstart: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: demo test install docs docs-screenshots package-check gpu-check clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch 2.14.1 / torchvision 0.29.1 are pinned here so pip takes the builds on local disk
# (the project's own ranges admit them); users elsewhere may drop the pin.
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# the documentation and packaging tools (pyproject extras "docs" and "release")
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e ".[test,docs,release]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/lightning-wass demo --out $(OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests

# The site: docs/*.md and the docstrings -> site/ (offline; warnings are errors), then every link checked.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python .ci/check_links.py site

# Headless-Chromium screenshots of the home page and one API page (needs /usr/bin/chromium).
docs-screenshots: docs
	mkdir -p site-screenshots
	for page in index api/modules; do \
	  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
	    --disable-component-update --disable-sync --user-data-dir="$$(mktemp -d)" --hide-scrollbars \
	    --window-size=1280,1500 --screenshot="site-screenshots/$$(echo $$page | tr / _).png" "file://$(CURDIR)/site/$$page.html"; \
	done

# The GPU checks (SAM / OT-MDR step vs the per-parameter reference, fp16 + scaler, bf16, a 1-GPU fit of
# each module), one table; without CUDA it says so and exits 0.
gpu-check: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_check.py --quick

# sdist + wheel, twine check, py.typed in the wheel, the wheel in a fresh venv (see the script)
package-check: $(VENV)/.docs-installed
	PY=$(BIN)/python bash .ci/check_package.sh

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache site site-screenshots
