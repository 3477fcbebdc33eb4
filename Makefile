# Two commands set up a fresh machine: `make run` (dashboard on the demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: install lock run demo test test-fast lint bench bench-memory browser clean

# requirements.lock pins every package, transitive ones included, so a fresh machine gets the
# versions CI tested; `make lock` regenerates it from the three requirements files.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

lock: install
	$(VENV)/bin/uv pip compile --universal --python-version 3.11 \
	  --prerelease-package tflite-micro=allow \
	  requirements.txt requirements-extras.txt requirements-dev.txt -o requirements.lock

# The dashboard builds the demo on first launch (with a progress message) and preselects it.
run: install
	$(PY) -m streamlit run app.py --server.port $(PORT)

demo: install
	$(PY) -m core demo

# Debian's chromium drives the browser tests; installing it needs root (CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "the browser tests need Debian's chromium: sudo apt-get install -y chromium"; exit 1; fi; }

# Three workers (pytest-xdist) on two cores: much of the suite waits on subprocesses, servers,
# chromium and Ray, so a third worker keeps both cores busy while the others wait (measured: 98 %
# busy against 93 % with two; docs/speed-and-memory.md). Whole files go to one worker, Ray tests
# to one worker together, and the demo is built once for all (tests/conftest.py). The slowest
# tests are listed at the end of every run.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: install browser
	$(PY) -m pytest -q $(XDIST) --durations=25

test-fast: install
	$(PY) -m pytest -q $(XDIST) -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/pipeline.py
	$(PY) bench/auto_fix.py

bench-memory: install
	$(PY) bench/memory.py

clean:
	rm -rf $(VENV) workspace .pytest_cache .mypy_cache .ruff_cache
