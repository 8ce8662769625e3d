# Two commands for a new user on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs; reinstalls when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= all
STAMP := $(VENV)/.installed

# The oldest Airflow the provider supports gets its own venv; `make test` covers the newest.
AIRFLOW_OLDEST ?= 3.0.*
OLDEST_VENV ?= .venv-airflow-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
AIRFLOW_TESTS := tests/test_airflow_provider.py tests/test_airflow_lifecycle.py tests/test_airflow_dag.py

.PHONY: demo test testenv test-airflow-oldest lint bench install clean

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

# The extras the three test files need; `torch` is for the nightly DAG's training job, which the
# local backend runs with the worker's own Python. Reinstalls when the pins or this recipe change.
$(OLDEST_STAMP): pyproject.toml .ci/airflow-oldest-constraints.txt Makefile
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[airflow,openlineage,dev,local,kubernetes,torch]' \
		'apache-airflow==$(AIRFLOW_OLDEST)' -c .ci/airflow-oldest-constraints.txt
	touch $@

# The MLflow server of the tests runs from $(VENV): Airflow 3.0 pins SQLAlchemy 1.4, MLflow's server needs 2.
# .ci/run calls this after `make test`, never beside it: both start Airflow processes on two cores.
test-airflow-oldest: $(OLDEST_STAMP) $(STAMP)
	KUBEFLOW_TASKS_MLFLOW_SERVER_PYTHON=$(abspath $(PY)) $(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		$(AIRFLOW_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/local_backend.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .ruff_cache
