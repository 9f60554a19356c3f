# `make run` and `make test` each set themselves up: a .venv made with the machine's python3,
# the package installed in it with the dev extra. Nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jaxnotes-installed
# Python 3.12 venv for `make test-compat` (Colab and the GPU machines run 3.12 with the newest jax).
# It leaves out the long accuracy runs (marker `accuracy`), which `make test` already ran, and
# runs the notebooks (marker `notebooks`), which `make test` leaves to it.
COMPAT_VENV ?= .venv312
# pytest-xdist workers: 2 suits the 2-core CI machine (1.4x the serial suite there).
TEST_WORKERS ?= 2
COMPAT_PYTHON ?= $(shell PYENV_VERSION=3.12.1 python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null)

.PHONY: setup run test lint test-compat test-wheel dist lab notebooks bench clean mutants

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/python -m train

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15 -m "not notebooks"

test-compat:
	@if [ -z "$(COMPAT_PYTHON)" ]; then \
	  if [ "$$CI" = "true" ]; then \
	    echo "test-compat: no python3.12 interpreter, and CI=true: this leg must run"; exit 1; fi; \
	  echo "test-compat: no python3.12 interpreter on this machine; skipped"; exit 0; fi; \
	set -e; \
	test -x $(COMPAT_VENV)/bin/python || PYENV_VERSION=3.12.1 $(COMPAT_PYTHON) -m venv $(COMPAT_VENV); \
	$(COMPAT_VENV)/bin/python -m pip install -q --disable-pip-version-check -U -e '.[dev]' jax flax optax chex; \
	$(COMPAT_VENV)/bin/python -c "import sys, jax, flax, optax; print('compat:', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"; \
	$(COMPAT_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --durations=15 -m "not accuracy"

# The sdist and the wheel (python -m build), checked (twine check --strict).
dist: setup
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/python -m twine check --strict dist/*

# What a user installs: the wheel in a fresh venv outside the repository (no source tree on the
# path); every module imports, no top-level `train` comes with it, jaxnotes-train trains.
test-wheel: dist
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	started=$$(date +%s); \
	"$$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check dist/*.whl; \
	echo "test-wheel: pip install of $$(ls dist/*.whl) ($$(du -k dist/*.whl | cut -f1) KB) took $$(( $$(date +%s) - started )) s"; \
	cd "$$tmp"; \
	if "$$tmp/venv/bin/python" -c "import train" 2>/dev/null; then echo "test-wheel: the wheel installs a top-level train"; exit 1; fi; \
	"$$tmp/venv/bin/python" -c "import importlib, pkgutil, jaxnotes; names = [m.name for m in pkgutil.walk_packages(jaxnotes.__path__, 'jaxnotes.')]; [importlib.import_module(n) for n in names]; print('test-wheel: imported', len(names), 'modules from', jaxnotes.__file__)"; \
	"$$tmp/venv/bin/jaxnotes-train" --epochs 1 --no-progress --workdir "$$tmp/run" > "$$tmp/out.txt"; \
	tail -1 "$$tmp/out.txt" | "$$tmp/venv/bin/python" -c "import json, sys; line = json.loads(sys.stdin.read()); assert line['model'] == 'lenet' and line['epochs'] == 1, line; print('test-wheel: jaxnotes-train printed its JSON line, test acc', line['test_acc'])"

# JupyterLab on the notebooks: the `notebooks` extra (jupyterlab) into .venv, then colab/ opened.
LAB_STAMP := $(VENV)/.jaxnotes-lab-installed
lab: setup $(LAB_STAMP)
	$(BIN)/python -m jupyter lab colab/

$(LAB_STAMP): pyproject.toml
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,notebooks]'
	touch $(LAB_STAMP)

# Rebuild the notebooks from colab/src and execute them at the small size (the stored outputs).
# Runs on the 3.12 venv when there is one (Colab's Python), else on .venv. NB=07_lenet: just one.
notebooks: setup
	$(if $(wildcard $(COMPAT_VENV)/bin/python),$(COMPAT_VENV),$(VENV))/bin/python colab/build.py $(NB)

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache .ruff_cache *.egg-info

# Plant the realistic bugs of tools/mutants.py one at a time in a scratch copy and check that the
# tests meant to catch each one fail (tens of minutes; not part of CI). Result: TESTING.md.
mutants: setup
	$(BIN)/python tools/mutants.py
