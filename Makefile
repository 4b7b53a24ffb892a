# The two commands that matter: `make run` (the appliance on embedded defaults) and `make test`
# (everything CI checks). Both work on a fresh Debian machine with Python 3.11+; `make test`
# installs what it needs (a venv in .venv, and Debian's coturn for its turnutils_* clients).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test check lint typecheck system-deps bench bench-relay fuzz soak clean dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/secureconnect run

system-deps:
	bash scripts/install-system-deps.sh
	bash scripts/install-browser.sh

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.test
	$(BIN)/mypy

test: $(VENV)/.test system-deps lint typecheck
	$(BIN)/pytest

# Side-by-side with coturn: writes bench/results/latest.md and latest.json (bench/README.md).
# Not part of `make test`.
bench: $(VENV)/.test
	bash scripts/install-system-deps.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-relay: $(VENV)/.test
	bash scripts/install-system-deps.sh
	$(BIN)/python bench/turn_relay.py $(BENCH_ARGS)

# Fuzzing campaign against the appliance on loopback, about 10 minutes (FUZZ_ARGS=--quick: under
# one): writes bench/results/fuzz-latest.md and exits 1 when it found anything. Not part of
# `make test`.
fuzz: $(VENV)/.test
	$(BIN)/python bench/fuzz.py $(FUZZ_ARGS)

# Resource soak: 200,000 TURN allocations and 20,000 WSS connections against one appliance, its
# descriptors and RSS at start, peak and after; writes bench/results/soak-latest.md (bench/soak.py).
# Not part of `make test`. `make soak SOAK_ARGS=--quick` is the 1-2 minute version.
soak: $(VENV)/.test
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# One executable file (shiv zipapp) for a machine with Python 3.11 but without the project.
dist:
	PYTHON=$(PYTHON) bash scripts/build-dist.sh

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
