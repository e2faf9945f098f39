# The README names two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run compare test test-unit install lint format bench cluster-test clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

## make run: the full pipeline on the embedded default config (synthetic world, tiny models)
run: $(STAMP)
	$(BIN)/python pipelines/full.py --config conf/default.yaml $(ARGS)

## make compare: every method row trained and evaluated beside S-Seg in one run
## (conf/compare.yaml), then the comparison table from MLflow
compare: $(STAMP)
	$(BIN)/python pipelines/full.py --config conf/compare.yaml $(ARGS)
	$(BIN)/python -m tools.runs compare --experiment compare --limit 1

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
