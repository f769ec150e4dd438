# intent-stream developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The CPU build of torch (PyPI's plain "torch" on Linux is the multi-GB CUDA build).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?= --extra-index-url $(TORCH_INDEX_URL) torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup model demo test test-unit test-integration test-faults k8s lint typecheck fmt bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first: a bare "torch" requirement would pull multi-GB CUDA wheels.
	# Set TORCH_INDEX_URL / TORCH_PIP_ARGS (README: "Installing torch") for a CUDA build.
	$(PY) -m pip install -q $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[dev]"   # dev = demo + train + tools: everything but [gpu]
	touch $@

setup: $(VENV)/.installed model  ## create .venv, install everything, build the model

model: $(VENV)/.installed  ## build (or reuse the cached) serving model directory
	$(BIN)/intent-stream build-model

demo: setup  ## run the whole pipeline locally on the bundled sample
	$(BIN)/intent-stream demo

lint:  ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:  ## mypy on the packages
	$(BIN)/mypy

test: setup lint typecheck  ## everything CI runs: lint, types, unit + integration + fault tests
	$(BIN)/pytest -q -p no:cacheprovider

test-unit:  ## fast tests, no servers
	$(BIN)/pytest -q -m "not integration and not faults"

test-integration:  ## real broker + real Redis
	$(BIN)/pytest -q -m integration

test-faults:  ## fault-injection tests only
	$(BIN)/pytest -q -m faults

k8s: $(VENV)/.installed  ## render the Kubernetes overlays and validate them (schemas + checks)
	$(BIN)/kubectl kustomize deploy/k8s/overlays/cpu > /dev/null
	$(BIN)/kubectl kustomize deploy/k8s/overlays/gpu > /dev/null
	$(BIN)/pytest -q tests/unit/test_k8s.py

fmt:  ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench:  ## performance benchmark (about 10 minutes)
	$(PY) bench/run.py --report-json artifacts/bench.json

clean:  ## remove caches and build outputs (keeps .venv and the model cache)
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache artifacts
