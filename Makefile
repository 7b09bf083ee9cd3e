# seqae: `make demo` runs the product end to end on a fresh machine, `make test` runs the tests.
SHELL := /bin/bash
SEQAE_CACHE ?= $(HOME)/.cache/seqae
VENV ?= $(SEQAE_CACHE)/venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)
export SEQAE_CACHE

.PHONY: install demo test lint services-up services-down deploy-check bench clean

# The virtual environment lives outside the clone so that torch is downloaded once per machine.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'tsb-ad==1.5'
	@touch $@

install: $(VENV)/.installed
	@$(PY) -m pip install -q --no-deps -e . >/dev/null

demo: install
	$(PY) deploy/local/devstack.py up
	$(PY) -m daemon.demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy seqae daemon

services-up: install
	$(PY) deploy/local/devstack.py up

services-down:
	$(PY) deploy/local/devstack.py down

# Build and run the CPU image, the compose stack and the systemd unit for real, and the CUDA
# image when its recipe changed (root; needs `services-up`).
deploy-check: install
	$(PY) deploy/local/devstack.py up
	$(PY) deploy/live_check.py all

clean:
	rm -rf out models .pytest_cache .mypy_cache .ruff_cache
