# perf-labs: two commands for users (`make run`, `make test`), the rest for convenience.
# Everything installs into .venv from pyproject.toml; tools/install_stack.py picks the tier.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
STAMP_LAB := $(VENV)/.installed-lab
NOW    := $(shell date -u +%Y%m%dT%H%M%SZ)
# Quiet, fast CPU runs on small machines (see ../shared/notes/cpu-stack.md); harmless on GPU.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1
export PYTHONUNBUFFERED ?= 1

.PHONY: install run test test-unit test-notebooks test-wheel wheelhouse lab lint clean

$(STAMP): pyproject.toml tools/install_stack.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/install_stack.py
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the stack for this machine (CPU or GPU tier)

run: $(STAMP)  ## execute every notebook into runs/<UTC timestamp>/ and print a summary table
	$(PY) -m labs_lib.runner --out runs/$(NOW) $(if $(NOTEBOOKS),--only $(NOTEBOOKS))

# Tests that only check correctness run in UNIT_WORKERS processes (pytest-xdist): most of their
# time is waiting (on subprocesses, servers, deadlines), so 4 on 2 cores took 74 s instead of
# 147 s. Then, one at a time, what measures speed: the tests marked `timing` (latencies to a few
# milliseconds: two failed beside 3 other workers and a busy core) and every notebook cell.
UNIT_WORKERS ?= 4
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

test: $(STAMP)  ## lint, unit tests + every notebook with its DEFAULT parameters (what CI runs)
	$(VENV)/bin/ruff check conftest.py labs_lib tests tools notebooks
	$(PY) tools/check_wheel.py
	LABS_RUN_DIR=$(CURDIR)/runs/test-$(NOW) $(PYTEST) -n $(UNIT_WORKERS) -m "not timing" \
	  --doctest-modules labs_lib tests --durations=5
	LABS_RUN_DIR=$(CURDIR)/runs/test-$(NOW) $(PYTEST) -m timing tests --nbval-lax notebooks --durations=15

test-unit: $(STAMP)  ## unit tests and doctests only (seconds, no engine)
	$(PYTEST) -n $(UNIT_WORKERS) -m "not slow and not timing" --doctest-modules labs_lib tests
	$(PYTEST) -m "timing and not slow" tests

test-wheel: $(STAMP)  ## build the wheel, install it into a clean venv, resolve every model (~30 s)
	$(PY) tools/check_wheel.py

# Offline install on a host without network: wheels for its Python and platform -> wheelhouse/.
# PYVER: target Python (default: the one running); the GPU extra is several GB (CUDA torch).
PLATFORM ?= manylinux_2_28_x86_64
EXTRAS   ?= gpu,models,quant,smollm2,notebooks,dev
wheelhouse:  ## make wheelhouse PYVER=3.12 PLATFORM=manylinux_2_28_x86_64 [EXTRAS=...]
	$(PYTHON) tools/wheelhouse.py --out wheelhouse --platform $(PLATFORM) --extras "$(EXTRAS)" \
	  $(if $(PYVER),--python-version $(PYVER))

lab: $(STAMP)  ## JupyterLab on this venv
	@test -f $(STAMP_LAB) || ($(PY) tools/install_stack.py --with-lab && touch $(STAMP_LAB))
	$(VENV)/bin/jupyter lab notebooks

lint: $(STAMP)
	$(VENV)/bin/ruff check conftest.py labs_lib tests tools notebooks

clean:  ## remove the venv, run folders and caches (not ~/.cache/perf-labs)
	rm -rf $(VENV) runs .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
