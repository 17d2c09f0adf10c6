# Two entry points: `make demo` and `make test`. Each creates .venv in the repo root and installs
# what it needs into it, so both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (pyproject.toml only declares ranges) so the environment is
# reproducible; these releases install from the machine's local wheel cache.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m patchcontrast demo

test: $(VENV)/.test
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

bench: $(VENV)/.base
	$(PY) benchmarks/losses.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
