# Set-up and everyday commands. `make repro` and `make test` each work on a fresh clone.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Stage commands in dvc.yaml call `python`: put the virtual environment first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test reliability lint browser clean bench-budget bench-data bench-quality bench-eval \
	bench-optimize bench-optimize-cifar bench-serve bench bench-quick bench-inception \
	bench-real-data bench-featurizer bench-direct

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install -e '.[test,inception]'
	touch $@

install: $(VENV)/.installed

## Install ganforge and run the whole pipeline on the embedded default (offline).
repro: install
	dvc repro

## Install the test tools (and Chromium, for the page test) and run the linter and the test suite.
test: $(VENV)/.installed-test browser lint
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; exit 1; fi; \
	exit $$status

## The reliability suite alone (bad input, faults, tampering); rewrites the counts in docs/reliability.md.
reliability: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m reliability --reliability-doc docs/reliability.md

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src stages tests benchmarks

## Debian's Chromium for the headless page test of `ganforge serve` (CI requires it; elsewhere the test skips).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the browser test of ganforge serve will be skipped" >&2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

## One command for the headline figures: ceilings, generation, training, data, pipeline; rewrites the tables of
## docs/benchmarks.md from bench/results.json (bench-quick: under 3 minutes, no full `dvc repro`).
bench: repro
	$(BIN)/ganforge bench

bench-quick: $(VENV)/.installed-test
	$(BIN)/ganforge bench --quick

## Measure the budgets (default repro time and memory, test-suite time) into docs/benchmarks.md.
bench-budget: $(VENV)/.installed-test
	$(BIN)/python benchmarks/pipeline_budget.py --tests

## The featurizer on CIFAR-10 (needs ../shared/datasets): params.yaml's bounded run against 15 epochs.
bench-featurizer: $(VENV)/.installed-test
	$(BIN)/python benchmarks/featurizer_budget.py

## Measure the direct kernel built for this machine and for x86-64-v3, alone and beside a busy process.
bench-direct: $(VENV)/.installed-test
	$(BIN)/python benchmarks/direct_kernel.py

## Measure the data stage (CIFAR-10 JPEG preparation, training data path) into docs/benchmarks.md.
bench-data: $(VENV)/.installed-test
	$(BIN)/python benchmarks/data_path.py

## Real-vs-real Inception FIDs of CIFAR-10 (../shared/datasets) and the Inception extractor's speed.
bench-inception: $(VENV)/.installed-test
	$(BIN)/python benchmarks/inception_reference.py

## The pipeline from scratch on CIFAR-10 with Inception on: every stage's wall time, peak memory, Inception cost.
bench-real-data: $(VENV)/.installed-test
	$(BIN)/python benchmarks/real_data_pipeline.py

## Train seed and lite on CIFAR-10 (../shared/datasets) for 30 minutes each, side by side, and score both.
bench-quality: $(VENV)/.installed-test
	$(BIN)/python benchmarks/time_to_quality.py

## Measure the evaluate stage and FID of 10k samples on cached CIFAR-10 statistics.
bench-eval: $(VENV)/.installed-test
	$(BIN)/python benchmarks/evaluation_speed.py

## Measure every optimize variant side by side (incl. torch.compile) against the speed and GEMM-ceiling targets.
bench-optimize: $(VENV)/.installed-test
	$(BIN)/python benchmarks/optimize_speed.py

## The optimize stage on CIFAR-10 from a 30-minute lite generator (needs ../shared/datasets) into docs/benchmarks.md.
bench-optimize-cifar: $(VENV)/.installed-test
	$(BIN)/python benchmarks/optimize_cifar.py

## Load test of ganforge serve on loopback (n=16 grids and n=256 arrays; alone and beside a busy process).
bench-serve: $(VENV)/.installed-test
	$(BIN)/python benchmarks/serve_load.py
