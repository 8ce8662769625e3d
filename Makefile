# Two commands for a new user on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs; reinstalls when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= all
STAMP := $(VENV)/.installed

.PHONY: demo test testenv lint bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	PYTHON=$(abspath $(PY)) ./dags/run_airflow_demo.sh

# The real test stack (tests/realstack): built once from the Go module proxy and Maven Central into
# $${KUBEFLOW_TASKS_TESTENV:-~/.cache/kubeflow-tasks/testenv}; later calls reuse it.
testenv:
	$(PYTHON) -m tests.realstack build

test: $(STAMP) testenv
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/local_backend.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
