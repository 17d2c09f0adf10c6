# Two entry points: `make demo` and `make test`. Each creates .venv in the repo root and installs
# what it needs into it, so both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (pyproject.toml only declares ranges) so the environment is
# reproducible; these releases install from the machine's local wheel cache.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint format bench clean browser

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

# The browser test of `patchcontrast serve` drives Debian's Chromium through its chromedriver
# (browser downloads do not work offline). Without root, sudo; where apt cannot install it the
# test skips, except under CI=true, where it fails.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	  >/dev/null; } || \
	echo "warning: could not install chromium and chromium-driver: the browser test will skip"

# ruff format is the one code style: `make format` applies it, `make test` checks it.
test: $(VENV)/.test browser
	$(PY) -m ruff check src tests benchmarks hubconf.py
	$(PY) -m ruff format --check src tests benchmarks hubconf.py
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(PY) -m ruff check src tests benchmarks hubconf.py
	$(PY) -m ruff format --check src tests benchmarks hubconf.py

format: $(VENV)/.test
	$(PY) -m ruff format src tests benchmarks hubconf.py

bench: $(VENV)/.base
	$(PY) benchmarks/losses.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
