# Set-up and everyday commands. `make repro` and `make test` each work on a fresh clone.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Stage commands in dvc.yaml call `python`: put the virtual environment first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test lint clean bench-budget bench-data bench-train bench-quality bench-eval bench-optimize

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Install ganforge and run the whole pipeline on the embedded default (offline).
repro: install
	dvc repro

## Install the test tools and run the linter and the test suite.
test: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; exit 1; fi; \
	exit $$status

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src stages tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

## Measure the budgets (default repro time and memory, test-suite time) into docs/benchmarks.md.
bench-budget: $(VENV)/.installed-test
	$(BIN)/python benchmarks/pipeline_budget.py --tests

## Measure the data stage (CIFAR-10 JPEG preparation, training data path) into docs/benchmarks.md.
bench-data: $(VENV)/.installed-test
	$(BIN)/python benchmarks/data_path.py

## Measure training images/s of seed, dcgan and lite, and 2-process DDP against 1 process.
bench-train: $(VENV)/.installed-test
	$(BIN)/python benchmarks/train_throughput.py

## Train seed and lite on CIFAR-10 (../shared/datasets) for 30 minutes each, side by side, and score both.
bench-quality: $(VENV)/.installed-test
	$(BIN)/python benchmarks/time_to_quality.py

## Measure the evaluate stage, the domain extractor's images/s and FID of 10k samples on cached CIFAR-10 statistics.
bench-eval: $(VENV)/.installed-test
	$(BIN)/python benchmarks/evaluation_speed.py

## Measure every optimize variant side by side (incl. torch.compile) against the speed and GEMM-ceiling targets.
bench-optimize: $(VENV)/.installed-test
	$(BIN)/python benchmarks/optimize_speed.py
