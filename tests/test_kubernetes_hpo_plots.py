"""HPO plots on the Kubernetes backend: a Katib experiment's parent MLflow run gets the optimisation
history, parallel coordinates and parameter importances once the experiment ends, made from the
trials' MLflow runs nested under it (`shared.hpo_plots`, the same code as the local backend's).

Real parts: the CLI as a subprocess, a real MLflow server on loopback, and each trial's MLflow logging
done by a real process running `mlflow.start_run()` with the environment our manifest handed to the
trial's container (the double's Katib runs no containers, so `trial_workload` plays the container).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "tests" / "data" / "specs" / "katib-random.yaml"

# What a trial's code does: one run (nested through MLFLOW_RUN_CONTEXT), its arguments and its metric.
TRIAL_CODE = """
import json, sys, mlflow
with mlflow.start_run():
    mlflow.log_params(json.loads(sys.argv[1]))
    for name, value in json.loads(sys.argv[2]).items():
        mlflow.log_metric(name, float(value))
"""


def play_trial_container(trial: dict) -> None:
    """Run TRIAL_CODE with the primary container's environment (as the trial's pod would)."""
    primary = trial["spec"]["primaryContainerName"]
    containers = trial["spec"]["runSpec"]["spec"]["template"]["spec"]["containers"]
    container = next(c for c in containers if c["name"] == primary)
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    assert "MLFLOW_RUN_CONTEXT" in env and "MLFLOW_RUN_ID" not in env  # what manifests.trial_handoff_env hands over
    params = {a["name"]: a["value"] for a in trial["spec"]["parameterAssignments"]}
    metrics = {m["name"]: m["latest"] for m in trial["status"]["observation"]["metrics"]}
    subprocess.run([sys.executable, "-c", TRIAL_CODE, json.dumps(params), json.dumps(metrics)],
                   env={**os.environ, **env}, check=True, timeout=120, capture_output=True)


def experiment_file(tmp_path: Path) -> Path:
    manifest = yaml.safe_load(EXPERIMENT.read_text())
    manifest["spec"].update(maxTrialCount=4, parallelTrialCount=2)
    manifest["spec"]["objective"].pop("goal")  # all four trials run
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def run_experiment(k8s_double, tmp_path: Path, mlflow_server: str, key: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "run", "experiment", "--spec", str(experiment_file(tmp_path)),
         "--key", key, "--backend", "kubernetes", "--kubeconfig", str(k8s_double.write_kubeconfig(tmp_path / "kc")),
         "--mlflow-tracking-uri", mlflow_server, "--output", "json", "--quiet"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_parent_run_of_a_katib_experiment_gets_the_hpo_plots(k8s_double, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    k8s_double.controllers.trial_workload = play_trial_container
    out = run_experiment(k8s_double, tmp_path, mlflow_server, "hpo-plots/1")
    assert out["state"] == "SUCCEEDED"
    client = MlflowClient(mlflow_server)
    parent = client.get_run(out["mlflow_run_id"])
    trials = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 4  # the four trials' own runs, nested under ours
    plots = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "hpo"))
    assert plots == ["hpo/optimization_history.png", "hpo/parallel_coordinate.png", "hpo/param_importances.png"]
    image = Path(client.download_artifacts(parent.info.run_id, "hpo/parallel_coordinate.png", str(tmp_path)))
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert parent.info.status == "FINISHED"


def test_without_trial_runs_there_are_no_plots_and_the_outcome_stands(k8s_double, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    out = run_experiment(k8s_double, tmp_path, mlflow_server, "hpo-plots/none")  # trials that log nothing
    assert out["state"] == "SUCCEEDED"
    client = MlflowClient(mlflow_server)
    assert client.list_artifacts(out["mlflow_run_id"], "hpo") == []
    assert client.get_run(out["mlflow_run_id"]).info.status == "FINISHED"


def test_a_deferred_operator_logs_the_plots_when_it_resumes(k8s_double, tmp_path, mlflow_server, monkeypatch):
    """The deferrable path: the trigger waited, `execute_complete` resolves the spec again for the plots."""
    import asyncio
    import uuid

    from mlflow.tracking import MlflowClient

    from airflow_provider.operators.kubeflow import KatibExperimentOperator
    from shared.backends.kubernetes import KubernetesBackend
    from shared.operations import submit_or_adopt, wait_for
    from shared.specs import load_spec

    k8s_double.controllers.trial_workload = play_trial_container
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kc")
    conn_id = f"kf_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "kubeflow", "extra": {
        "backend": "kubernetes", "kubeconfig_path": str(kubeconfig), "mlflow_tracking_uri": mlflow_server}}))
    path = experiment_file(tmp_path)
    submission = submit_or_adopt(KubernetesBackend(kubeconfig=str(kubeconfig)), load_spec(path), "deferred/1",
                                 mlflow_tracking_uri=mlflow_server)
    status = asyncio.run(asyncio.wait_for(wait_for(KubernetesBackend(kubeconfig=str(kubeconfig)), submission.handle), 240))
    operator = KatibExperimentOperator(task_id="hpo", spec=str(path), kubeflow_conn_id=conn_id)

    class TaskInstance:
        def xcom_push(self, key, value):
            pass

    result = operator.execute_complete(
        {"ti": TaskInstance()}, {"event": "success", "message": "", "handle": submission.handle.to_dict(),
                                 "status": status.to_dict()},
        mlflow_run_id=submission.mlflow_run_id, mlflow_experiment_id=submission.mlflow["experiment_id"],
    )
    assert result["state"] == "SUCCEEDED"
    client = MlflowClient(mlflow_server)
    assert len(client.list_artifacts(submission.mlflow_run_id, "hpo")) == 3
    assert client.get_run(submission.mlflow_run_id).info.status == "FINISHED"
