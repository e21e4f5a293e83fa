# llmctl — the two commands: `make demo` (set up, run the main job end to end on
# the local site) and `make test` (set up, pass the tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras the environment installs. torch is pinned to the CPU build on this disk
# (see pyproject.toml); the MPI extra brings mpi4py and MPICH from PyPI.
EXTRAS ?= dev,train,mpi,serve
STAMP  := $(VENV)/.installed-$(subst /,_,$(EXTRAS))
DEMO   ?= demo

.PHONY: all venv demo test test-loaded test-unit bench docs docs-check services services-down clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	LLMCTL=$(abspath $(BIN))/llmctl PY=$(abspath $(BIN))/python DEMO_DIR=$(DEMO) bash scripts/demo.sh

test: $(STAMP) services
	$(BIN)/python -m pytest -q

# The local SLURM cluster the integration tests submit to (Debian packages; needs
# root). Without root the SLURM tests skip, unless LLMCTL_REQUIRE_SLURM=1.
services:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  bash scripts/slurm-local.sh up; \
	else echo "not root: not starting the local SLURM cluster (its tests will skip)"; fi

services-down:
	bash scripts/slurm-local.sh down

# The whole suite with every core kept busy by spinning processes (tests/conftest.py):
# no test may depend on how fast the machine is.
test-loaded: $(STAMP) services
	LLMCTL_TEST_LOAD=$$(nproc) $(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m pytest -q tests/bench --benchmark-enable --benchmark-only

docs: $(STAMP)
	$(BIN)/python -m llmctl.docgen write

docs-check: $(STAMP)
	$(BIN)/python -m llmctl.docgen check

clean:
	rm -rf $(VENV) $(DEMO) dist build .pytest_cache .benchmarks
