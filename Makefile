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

.PHONY: all venv demo test test-loaded test-unit bench docs docs-check services services-down clean gpu-check gpu-check-wheels

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	LLMCTL=$(abspath $(BIN))/llmctl PY=$(abspath $(BIN))/python DEMO_DIR=$(DEMO) bash scripts/demo.sh

# Two workers (pytest-xdist): each test file stays on one worker, and the files that submit
# to the local SLURM cluster run one after another on one of them (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP) services
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

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
	LLMCTL_TEST_LOAD=$$(nproc) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

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

# One run that measures a GPU node against reference implementations (docs/performance.md):
# JSON report + text summary in $OUT or ./gpu-check-out. ARGS=--cpu: tiny shapes on a CPU.
# No venv dependency: a device machine runs it with its own torch (scripts/gpu-check.sh).
gpu-check:
	bash scripts/gpu-check.sh $(ARGS)

# Wheels of what gpu-check needs beyond a device machine's packages (torch, numpy,
# nvidia-ml-py, h5py, jinja2, mpi4py), for that machine's Python; carry the folder along.
GPU_CHECK_PYTHON ?= 3.11
gpu-check-wheels: $(STAMP)
	$(BIN)/python -m pip download -q --only-binary=:all: --python-version $(GPU_CHECK_PYTHON) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 -d gpu-check-wheels pydantic tomli-w tomli pulp highspy "transformers>=4.44"
	rm -f gpu-check-wheels/numpy-*.whl
	du -sh gpu-check-wheels
