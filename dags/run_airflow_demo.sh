#!/usr/bin/env bash
# `make demo`: run the nightly retraining DAG once with `airflow dags test`, in an Airflow of its own.
#
# Airflow lives in $KUBEFLOW_TASKS_STATE_DIR/airflow (SQLite, no examples, DAGs from this folder);
# the database is created on the first run. Without a `kubeflow_default` connection the work runs
# on this machine (the local backend); MLflow logs to a SQLite file in the state directory unless
# MLFLOW_TRACKING_URI is set. The full Airflow output goes to a log file; progress and the summary
# table are printed here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
STATE="${KUBEFLOW_TASKS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/kubeflow-tasks}"
export KUBEFLOW_TASKS_STATE_DIR="$STATE"
export AIRFLOW_HOME="$STATE/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
    export MLFLOW_TRACKING_URI="sqlite:///$STATE/mlflow.db"
    LOCAL_MLFLOW=1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"  # pipelines named `dags.commodity.pipeline:...` import from here

mkdir -p "$AIRFLOW_HOME"
if [ ! -f "$AIRFLOW_HOME/airflow.db" ]; then
    echo "creating the Airflow database in $AIRFLOW_HOME" >&2
    "$PY" -m airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
fi

if [ -n "${LOCAL_MLFLOW:-}" ] && [ ! -f "$STATE/mlflow.db" ]; then
    # A SQLite store keeps artifacts (the registered models) in ./mlruns unless the experiment says
    # otherwise: keep them in the state directory, not in the checkout.
    mkdir -p "$STATE"
    "$PY" -c 'import sys; from mlflow.tracking import MlflowClient as C; c = C(sys.argv[1]); c.get_experiment_by_name("kubeflow-tasks") or c.create_experiment("kubeflow-tasks", artifact_location=sys.argv[2])' \
        "$MLFLOW_TRACKING_URI" "$STATE/mlflow-artifacts" >"$STATE/mlflow-init.log" 2>&1 || { tail -5 "$STATE/mlflow-init.log" >&2; exit 1; }
fi

LOG="$AIRFLOW_HOME/demo-$(date +%Y%m%d-%H%M%S).log"
echo "airflow dags test commodity_nightly_retraining (full log: $LOG)" >&2
set +e
"$PY" -m airflow dags test commodity_nightly_retraining 2>&1 | tee "$LOG" \
    | grep --line-buffered -E "\[DAG TEST\] (starting|end) task|submitted|adopted|\| trial|ended|DagRun Finished" \
    | sed -u -E 's/^[0-9TZ:.-]+ \[[a-z ]+\] //; s/ +\[airflow[^]]*\].*$//'
status=${PIPESTATUS[0]}
set -e

# The summary task's table, as it printed it.
awk '/^--------------------+$/ { inside = !inside; print; next } inside' "$LOG" | tail -n 40
exit "$status"
