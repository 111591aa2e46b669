# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-fast demo bench lint clean

install: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 are pinned in constraints.txt and install from this
# machine's local wheel cache with plain pip (uv/poetry would download gigabytes).
$(STAMP): pyproject.toml constraints.txt setup.py cld_lake/score/_ckernel.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[torch,hf,dask,remote,dev]'
	touch $(STAMP)

# The suite runs on TEST_WORKERS processes (pytest-xdist; 2 = this machine's cores): most tests
# wait on subprocesses, files and servers, so two workers halve the wall time.
TEST_WORKERS ?= 2

test: install
	$(VENV)/bin/ruff check cld_lake pipelines tests benchmarks
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m 'not slow'

demo: install
	$(PY) -m pipelines.demo

bench: install
	$(PY) -m benchmarks.bench_lake

lint: install
	$(VENV)/bin/ruff check cld_lake pipelines tests benchmarks
	$(VENV)/bin/ruff format --check cld_lake pipelines tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
