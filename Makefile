# `make demo` and `make test` each set themselves up on a fresh machine:
# a virtual env in .venv with clipkit installed editable (reinstalled only
# when pyproject.toml changes), then they run.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep caches out of $HOME (matplotlib, HF, inductor) and quiet the
# registry mirrors' "Location ... is ignored" warnings.
export MPLCONFIGDIR ?= $(CURDIR)/.venv/cache/matplotlib
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demo-quick check test test-fast docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -c "import clipkit, torch, torchvision, open_clip, faiss, webdataset"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/clipkit demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/clipkit demo --out runs/demo-quick --quick

# The house rules first (lint, format, types; the layering is tests/test_layout.py), then the tests
# (tests/test_docs.py builds the documentation site strictly).
check: $(STAMP)
	$(BIN)/ruff check clipkit tests benchmarks training retrieval decoder
	$(BIN)/ruff format --check clipkit tests benchmarks training retrieval decoder
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site (mkdocs.yml, docs/) built strictly into site/: a broken link, a
# missing page or an unrendered docstring fails it. Open site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs .pytest_cache site
