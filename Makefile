# The README names two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run compare test test-unit install lint format bench cluster-test clean report serve lock

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3  # the Dockerfile's pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

## make lock: re-resolve requirements.lock from pyproject.toml (dependencies + the dev extra), with
## sha256 hashes of every file PyPI has for each pin, so `pip install --require-hashes` installs
## exactly the tested bytes. uv runs from a throwaway venv and keeps every existing pin it can;
## bump one with ARGS="--upgrade-package torch".
UV_VERSION := 0.13.9
lock:
	@test -x .venv-lock/bin/uv || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q uv==$(UV_VERSION); }
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --index-url https://pypi.org/simple --custom-compile-command "make lock" \
	  -o requirements.lock $(ARGS)

## make run: the full pipeline on the embedded default config (synthetic world, tiny models)
run: $(STAMP)
	$(BIN)/python pipelines/full.py --config conf/default.yaml $(ARGS)

## make compare: every method row trained and evaluated beside S-Seg in one run
## (conf/compare.yaml), then the comparison table from MLflow
compare: $(STAMP)
	$(BIN)/python pipelines/full.py --config conf/compare.yaml $(ARGS)
	$(BIN)/python -m tools.runs compare --experiment compare --limit 1

## make report: the newest pipeline run's HTML report (report.html; ARGS="RUN_ID --out F")
report: $(STAMP)
	$(BIN)/python -m tools.report $(ARGS)

## make serve ARGS="--checkpoint runs/default": the served model at http://127.0.0.1:8000/
serve: $(STAMP)
	$(BIN)/python -m tools.serve $(ARGS)

## make test: ruff (lint + format check), mypy over ovs/, pipelines/ and tools/, the whole pytest
## suite (tests/unit, tests/stage, tests/cluster)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## make test-unit: the library tests only (no Ray), a few minutes
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m tools.bench entities
	$(BIN)/python -m tools.bench pseudo_masks
	$(BIN)/python -m tools.bench train_step
	$(BIN)/python -m tools.bench evaluate

cluster-test: $(STAMP)
	$(BIN)/python -m pytest -q tests/cluster/test_cluster.py

clean:
	rm -rf runs mlflow.db mlartifacts
