# The two commands that matter: `make run` (the appliance on embedded defaults) and `make test`
# (everything CI checks). Both work on a fresh Debian machine with Python 3.11+; `make test`
# installs what it needs (a venv in .venv, and Debian's coturn for its turnutils_* clients).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The compiled UDP fast path (docs/fastpath.md): `pip install -e` builds it into the source tree
# (an optional extension: without a compiler the install goes on without it); a changed source
# reinstalls, which rebuilds it.
FASTPATH := src/secureconnect/turn/_fastpath.c src/secureconnect/turn/fastpath_tables.c \
	src/secureconnect/turn/fastpath_wire.c src/secureconnect/turn/fastpath_loop.c \
	src/secureconnect/turn/fastpath.h
# What runs twice, with the extension and without (issue #14: the fallback stays honest).
TURN_TESTS := tests/turn tests/adversarial/test_turn_state_attacks.py \
	tests/adversarial/test_turn_auth_attacks.py tests/adversarial/test_turn_sequences.py

.PHONY: run test check lint typecheck system-deps bench bench-relay fuzz soak clean dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml $(FASTPATH) | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(FASTPATH) | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/secureconnect run

system-deps:
	PYTHON=$(PYTHON) bash scripts/install-system-deps.sh
	bash scripts/install-browser.sh

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench examples scripts
	$(BIN)/ruff format --check src tests bench examples scripts
	$(BIN)/lint-imports

typecheck: $(VENV)/.test
	$(BIN)/mypy

# system-deps first: the compiler and the Python headers must be there when pip builds the
# fast path (tests/turn/test_fastpath_compiled.py fails without it).
test: system-deps $(VENV)/.test lint typecheck
	$(BIN)/pytest
	@echo "== the TURN tests again on the pure-Python fast path (SECURECONNECT_NO_EXTENSIONS=1;"
	@echo "   tests/support/fastpath_selection.py leaves out the differential test, run above)"
	SECURECONNECT_NO_EXTENSIONS=1 $(BIN)/pytest -q $(TURN_TESTS)

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
	rm -f src/secureconnect/turn/_fastpath.*.so
