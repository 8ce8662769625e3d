"""Nightly commodity-price retraining: KFP pipeline -> Katib TPE -> PyTorchJob -> summary.

Runs on this machine with no set-up (no `kubeflow_default` connection means the local backend) and
on a Kubeflow cluster by creating the `kubeflow_default` connection with backend `kubernetes`; the
specs are the manifests in `commodity/`. Each task opens an MLflow run (tracking URI from the
connection, else $MLFLOW_TRACKING_URI) naming the previous task's run, whose id comes through XCom.

The night's data lives at `<data_root>/<logical date>/prices.csv`; `data_root` is a DAG param
(default: under the kubeflow-tasks state directory; on a cluster, a path every pod can read).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider.operators.kubeflow import (
    KatibExperimentOperator,
    KubeflowPipelineRunOperator,
    PyTorchJobOperator,
)
from shared.backends.local.store import default_state_root

SPECS = Path(__file__).resolve().parent / "commodity"
DATA_PATH = "{{ params.data_root }}/{{ ds }}/prices.csv"


def _upstream(task_id: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "', key='mlflow_run_id') or '' }}"


def _best(name: str) -> str:
    return "{{ ti.xcom_pull(task_ids='hpo', key='best_parameters')['" + name + "'] }}"


def _trained_metric(run_id: str | None, name: str) -> float | None:
    """A metric the PyTorchJob logged into the MLflow run handed to it: proof the hand-off reached it."""
    from airflow_provider.hooks.kubeflow import KubeflowHook
    from shared.mlflow_handoff import resolve_tracking_uri

    uri = resolve_tracking_uri(KubeflowHook().options.mlflow_tracking_uri)
    if not (uri and run_id):
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id).data.metrics.get(name)


with DAG(
    dag_id="commodity_nightly_retraining",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"data_root": Param(str(default_state_root() / "airflow-data"), type="string")},
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(hours=2)},
    tags=["kubeflow", "mlflow"],
    doc_md=__doc__,
) as dag:
    baseline = KubeflowPipelineRunOperator(
        task_id="baseline_pipeline",
        spec=str(SPECS / "pipeline_run.yaml"),
        spec_params={"data_path": DATA_PATH},
    )
    hpo = KatibExperimentOperator(
        task_id="hpo",
        spec=str(SPECS / "experiment.yaml"),
        spec_params={"data_path": DATA_PATH},
        upstream_mlflow_run_id=_upstream("baseline_pipeline"),
    )
    train = PyTorchJobOperator(
        task_id="train",
        spec=str(SPECS / "pytorchjob.yaml"),
        spec_params={
            "data_path": DATA_PATH,
            "learning_rate": _best("learning_rate"),
            "num_estimators": _best("num_estimators"),
        },
        upstream_mlflow_run_id=_upstream("hpo"),
    )

    @task
    def summary(ti=None) -> dict[str, str]:
        """Print the night's results: best parameters, metrics and the MLflow lineage."""
        pull = ti.xcom_pull
        best = pull(task_ids="hpo", key="best_parameters") or {}
        metrics = pull(task_ids="hpo", key="best_metrics") or {}
        rows = {
            "baseline (pipeline) rmse": (pull(task_ids="baseline_pipeline", key="outputs") or {}).get("Output"),
            "best trial": pull(task_ids="hpo", key="best_trial"),
            **{f"best {name}": value for name, value in best.items()},
            **{f"best trial {name}": value for name, value in metrics.items()},
            "PyTorchJob": pull(task_ids="train", key="remote_id"),
            "PyTorchJob val_rmse (from MLflow)": _trained_metric(pull(task_ids="train", key="mlflow_run_id"), "val_rmse"),
            **{f"MLflow run: {t}": pull(task_ids=t, key="mlflow_run_id") for t in ("baseline_pipeline", "hpo", "train")},
        }
        width = max(len(name) for name in rows)
        lines = ["-" * (width + 40), *(f"{name:<{width}}  {value}" for name, value in rows.items()), "-" * (width + 40)]
        print("\n".join(lines), flush=True)
        return {name: str(value) for name, value in rows.items()}

    baseline >> hpo >> train >> summary()
