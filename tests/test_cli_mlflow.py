"""The CLI's MLflow hand-off end to end, against a real MLflow server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from shared.specs.builders import katib_experiment

TRIAL = (
    "import os, sys; x = float(sys.argv[1]);"
    "open(os.path.join(sys.argv[2], os.environ['KATIB_TRIAL_NAME']), 'w').write(os.environ['MLFLOW_RUN_ID']);"
    "print(f'loss={(x - 0.3) ** 2}')"
)

REPLICA_ENDS_OUR_RUN_THEN_FAILS = (
    "import mlflow, sys\n"
    "with mlflow.start_run():\n"
    "    mlflow.log_metric('epoch_loss', 0.5)\n"
    "sys.exit(1)\n"
)


def run_cli(*args: str) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def test_experiment_gets_a_parent_run_with_one_nested_run_per_trial(tmp_path: Path, state_dir, mlflow_server):
    seen = tmp_path / "seen"
    seen.mkdir()
    manifest = katib_experiment(
        "mlflow-e2e",
        objective_metric="loss",
        parameters={"x": ("double", 0, 1)},
        trial_command=["python", "-c", TRIAL, "${trialParameters.x}", str(seen)],
        algorithm_settings={"random_state": "3"},
        parallel_trial_count=2,
        max_trial_count=4,
        max_failed_trial_count=1,
    ).manifest
    spec = tmp_path / "experiment.yaml"
    spec.write_text(yaml.safe_dump(manifest))

    code, result, err = run_cli(
        "run", "experiment", "--spec", str(spec), "--key", "dag/hpo/run1/-1",
        "--mlflow-tracking-uri", mlflow_server, "--output", "json",
    )
    assert code == 0, err
    client = MlflowClient(mlflow_server)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kubeflow_tasks.key"] == "dag/hpo/run1/-1"
    assert parent.data.tags["kubeflow_tasks.remote_id"] == result["id"]
    best = result["outputs"]["best_parameters"]
    assert parent.data.params["best.x"] == best["x"]

    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(trials) == 4
    for trial in trials:
        assert trial.info.status == "FINISHED"
        x = float(trial.data.params["x"])
        assert abs(trial.data.metrics["loss"] - (x - 0.3) ** 2) < 1e-9
        # The trial process logged into its own nested run: it was handed that run's id.
        assert (seen / trial.data.tags["mlflow.runName"]).read_text() == trial.info.run_id


def test_the_remote_outcome_wins_over_the_work_ending_our_run(tmp_path: Path, state_dir, mlflow_server):
    script = tmp_path / "replica.py"
    script.write_text(REPLICA_ENDS_OUR_RUN_THEN_FAILS)
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "ends-run"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never", "template": {
            "spec": {"containers": [{"name": "pytorch", "image": "python:3.11-slim", "command": ["python", str(script)]}]}
        }}}},
    }
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    code, result, err = run_cli(
        "run", "training-job", "--spec", str(spec), "--mlflow-tracking-uri", mlflow_server, "--output", "json"
    )
    assert code == 1 and result["state"] == "FAILED", err
    run = MlflowClient(mlflow_server).get_run(result["mlflow_run_id"])
    assert run.data.metrics["epoch_loss"] == 0.5  # the work logged into our run ...
    assert run.info.status == "FAILED"  # ... and ended it FINISHED, but the job failed
