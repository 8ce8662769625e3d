"""Nightly commodity-price retraining: KFP pipeline -> Katib TPE -> PyTorchJob -> promotion -> summary.

Runs on this machine with no set-up (no `kubeflow_default` connection means the local backend) and
on a Kubeflow cluster by creating the `kubeflow_default` connection with backend `kubernetes`; the
specs are the manifests in `commodity/`. Each task opens an MLflow run (tracking URI from the
connection, else $MLFLOW_TRACKING_URI) naming the previous task's run, whose id comes through XCom.

The promotion registers the PyTorchJob's model as a version of `commodity-forecaster` and moves
its alias `champion` only when it beats the current champion by MARGIN and the naive baseline
("tomorrow's price is today's"), all judged on the night's holdout by commodity/evaluate.py; a new
champion is an event of the asset `champion_asset(MODEL_NAME)` that a deployment DAG can schedule on.

The night's data lives at `<data_root>/<logical date>/prices.csv`; `data_root` is a DAG param
(default: under the kubeflow-tasks state directory; on a cluster, a path every pod can read).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider.operators.kubeflow import (
    KatibExperimentOperator,
    KubeflowPipelineRunOperator,
    PyTorchJobOperator,
)
from airflow_provider.operators.registry import MlflowModelPromotionOperator
from shared.backends.local.store import default_state_root

SPECS = Path(__file__).resolve().parent / "commodity"
DATA_PATH = "{{ params.data_root }}/{{ ds }}/prices.csv"
MODEL_NAME = "commodity-forecaster"
MARGIN = 0.01  # rmse the challenger must gain over the champion


def _upstream(task_id: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "', key='mlflow_run_id') or '' }}"


def _best(name: str) -> str:
    return "{{ ti.xcom_pull(task_ids='hpo', key='best_parameters')['" + name + "'] }}"


def _mlflow_look_command() -> str:
    """How to see the registered model: the UI command for a local store, the page for a server."""
    from airflow_provider.hooks.kubeflow import KubeflowHook
    from shared.mlflow_client import display_uri
    from shared.mlflow_handoff import resolve_tracking_uri

    uri = resolve_tracking_uri(KubeflowHook().options.mlflow_tracking_uri) or ""
    if uri.startswith(("http://", "https://")):
        return f"open {display_uri(uri).rstrip('/')}/#/models/{MODEL_NAME}"
    return f"mlflow ui --backend-store-uri {uri}  (then Models > {MODEL_NAME})"


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

    promote = MlflowModelPromotionOperator(
        task_id="promote",
        model_name=MODEL_NAME,
        run_id=_upstream("train"),
        evaluate=[sys.executable, str(SPECS / "evaluate.py"), "--data", DATA_PATH, "--model-uri", "{model_uri}"],
        metric="rmse",
        margin=MARGIN,
    )

    @task
    def summary(ti=None) -> dict[str, str]:
        """Print the night's results: best parameters, metrics, the promotion and the MLflow lineage."""
        pull = ti.xcom_pull

        def promoted(key: str):
            return pull(task_ids="promote", key=key)

        previous = promoted("previous_champion_version")
        best = pull(task_ids="hpo", key="best_parameters") or {}
        metrics = pull(task_ids="hpo", key="best_metrics") or {}
        rows = {
            "baseline (pipeline) rmse": (pull(task_ids="baseline_pipeline", key="outputs") or {}).get("Output"),
            "best trial": pull(task_ids="hpo", key="best_trial"),
            **{f"best {name}": value for name, value in best.items()},
            **{f"best trial {name}": value for name, value in metrics.items()},
            "PyTorchJob": pull(task_ids="train", key="remote_id"),
            "PyTorchJob val_rmse (from MLflow)": _trained_metric(pull(task_ids="train", key="mlflow_run_id"), "val_rmse"),
            "challenger": f"{MODEL_NAME} v{promoted('model_version')}: rmse {promoted('value')}",
            "champion before": f"v{previous}: rmse {promoted('champion_value')}" if previous else "none (first night)",
            "naive baseline": f"rmse {promoted('baseline_value')}",
            "decision": f"{promoted('decision')}: {promoted('reason')}",
            "champion now": f"{MODEL_NAME} v{promoted('champion_version')}" if promoted("champion_version") else "none",
            "look at them": _mlflow_look_command(),
            **{f"MLflow run: {t}": pull(task_ids=t, key="mlflow_run_id") for t in ("baseline_pipeline", "hpo", "train")},
        }
        width = max(len(name) for name in rows)
        lines = ["-" * (width + 40), *(f"{name:<{width}}  {value}" for name, value in rows.items()), "-" * (width + 40)]
        print("\n".join(lines), flush=True)
        return {name: str(value) for name, value in rows.items()}

    baseline >> hpo >> train >> promote >> summary()
