# Two commands: `make demo` and `make test`. Each creates .venv if missing.
# Python 3.12 where the machine has one, on PATH or in pyenv (ArviZ 1.x needs >= 3.12);
# else python3 (>= 3.11, on ArviZ 0.x). `make test-py311` covers that line.
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell sh scripts/pick_python.sh)
endif
PYTHON311 ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV311 := .venv311
# One thread per process for XLA's CPU Cholesky (docs/design.md section 2: stable on 2 cores).
export XLA_FLAGS ?= --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1
export PYTHONUNBUFFERED := 1
# One LAPACK thread per process: JAX's CPU Cholesky calls OpenBLAS, whose per-core
# threads fight the one-chain-per-core NUTS chains.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-py311 lint setup clean

setup: $(STAMP)

# A .venv of another Python than $(PYTHON) (made before a 3.12 was found) is rebuilt.
PYVERSION := import sys; print(*sys.version_info[:2])
$(STAMP): pyproject.toml
	if [ -x $(PY) ] && [ "$$($(PY) -c '$(PYVERSION)')" != "$$($(PYTHON) -c '$(PYVERSION)')" ]; \
	then rm -rf $(VENV); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The ArviZ 0.x line on Python 3.11: the tests of the one module that talks to ArviZ
# and of saved fits, in their own .venv311.
$(VENV311)/.installed: pyproject.toml
	test -x $(VENV311)/bin/python || $(PYTHON311) -m venv $(VENV311)
	$(VENV311)/bin/python -m pip install --quiet --upgrade pip
	$(VENV311)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

test-py311: $(VENV311)/.installed
	$(VENV311)/bin/python -m pytest -q tests/test_diagnostics.py tests/test_saved_fits.py \
		tests/test_bad_input.py tests/test_run_dir.py

demo: $(STAMP)
	$(VENV)/bin/aniso-gp demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check aniso_gp tests benchmarks

clean:
	rm -rf $(VENV) $(VENV311) *.egg-info .pytest_cache
