"""`airflow dags test commodity_nightly_retraining` on the local backend against a real MLflow server.

The connection `kubeflow_default` (an AIRFLOW_CONN_ variable) names the MLflow server and the state
directory; the DAG file is the one `make demo` runs. Checked: every task succeeds, the ids are in
XCom, one MLflow run per Kubeflow task with the upstream run recorded, the trials nested under the
experiment's run, and the training job got the experiment's best parameters through XCom.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow_env import ROOT, new_airflow, run_to_end

pytestmark = pytest.mark.e2e
DAG_ID = "commodity_nightly_retraining"
TASKS = ("baseline_pipeline", "hpo", "train")


@pytest.mark.timeout(1500)  # five tasks with real training on two shared cores; the promotion loads torch thrice
def test_nightly_dag_runs_with_lineage_in_mlflow_and_xcom(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    env = new_airflow(tmp_path, dags_folder=ROOT / "dags")
    env.set_connection("kubeflow_default", "kubeflow", {"mlflow_tracking_uri": mlflow_server, "state_dir": str(env.state_dir)})
    code, output = run_to_end(env, "dags", "test", DAG_ID, "2026-11-20", log_name="dags-test.log", timeout=1200)
    assert code == 0, output[-6000:]
    assert env.task_states(DAG_ID) == {**{t: "success" for t in TASKS}, "promote": "success", "summary": "success"}

    xcoms = {task: env.xcoms(DAG_ID, task) for task in TASKS}
    for task in TASKS:
        assert xcoms[task]["state"] == "SUCCEEDED" and xcoms[task]["remote_id"]
        assert xcoms[task]["mlflow_run_url"].startswith(f"{mlflow_server}/#/experiments/")
    best = xcoms["hpo"]["best_parameters"]
    assert set(best) == {"learning_rate", "num_estimators"} and xcoms["hpo"]["best_metrics"]["rmse"]

    client = MlflowClient(mlflow_server)
    runs = {task: client.get_run(xcoms[task]["mlflow_run_id"]) for task in TASKS}
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert "kubeflow_tasks.upstream_run_id" not in runs["baseline_pipeline"].data.tags
    assert runs["hpo"].data.tags["kubeflow_tasks.upstream_run_id"] == runs["baseline_pipeline"].info.run_id
    assert runs["train"].data.tags["kubeflow_tasks.upstream_run_id"] == runs["hpo"].info.run_id
    assert runs["train"].data.tags["airflow.task_id"] == "train"
    experiment_id = runs["hpo"].info.experiment_id
    every = client.search_runs([experiment_id], max_results=1000)
    trials = [r for r in every if r.data.tags.get("mlflow.parentRunId") == runs["hpo"].info.run_id]
    assert len(trials) == 12  # the experiment's maxTrialCount, every trial a nested run
    keyed = [r for r in every if r.data.tags.get("kubeflow_tasks.key", "").startswith(f"{DAG_ID}/")]
    assert sorted(r.data.tags["airflow.task_id"] for r in keyed) == sorted(TASKS)  # one run per task
    assert "val_rmse" in runs["train"].data.metrics  # the PyTorchJob logged into the run handed to it

    # The PyTorchJob ran with the experiment's best parameters, templated from XCom.
    spec = json.loads((env.state_dir / "runs" / xcoms["train"]["remote_id"] / "spec.json").read_text())
    command = spec["manifest"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--learning-rate") + 1] == str(best["learning_rate"])
    assert command[command.index("--data") + 1].endswith("/2026-11-20/prices.csv")
    assert "| trial 12/12 " in output  # the experiment's progress in the task log
    assert "best learning_rate" in output  # the summary table
    assert f"PyTorchJob val_rmse (from MLflow)  {runs['train'].data.metrics['val_rmse']}" in output

    # The night ends with the promotion: the model beats the naive baseline on the holdout and is
    # registered with its lineage; the first champion of a fresh registry is this one.
    promoted = env.xcoms(DAG_ID, "promote")
    assert float(promoted["value"]) < float(promoted["baseline_value"])
    version = client.get_model_version("commodity-forecaster", promoted["model_version"])
    assert version.run_id == runs["train"].info.run_id
    assert version.tags["kubeflow_tasks.decision"] == promoted["decision"]
    assert version.tags["kubeflow_tasks.best_trial"] == xcoms["hpo"]["best_trial"]
    assert version.tags["kubeflow_tasks.pipeline_run_id"] == xcoms["baseline_pipeline"]["remote_id"]
    assert client.get_model_version_by_alias("commodity-forecaster", "champion").version == promoted["champion_version"]
    assert f"{promoted['decision']}: {promoted['reason']}" in output  # the summary table
    if promoted["decision"] == "promoted":  # a new champion is an event of the model's asset
        events = env.asset_events("x-mlflow-model://commodity-forecaster/champion")
        assert [e["extra"]["model_version"] for e in events][-1:] == [promoted["model_version"]]
