"""`make demo`'s main job, end to end: pipeline, experiment and distributed training, with MLflow lineage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_nightly_retraining_and_prints_its_table(state_dir, mlflow_server):
    proc = subprocess.run(
        [sys.executable, "-m", "dags.commodity.demo"],
        cwd=REPO,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = dict(
        line.split("  ", 1) for line in proc.stdout.splitlines() if "  " in line and not line.startswith("-")
    )
    table = {name.strip(): value.strip() for name, value in table.items()}
    assert float(table["best trial rmse"]) > 0
    assert float(table["PyTorchJob val_rmse (from MLflow)"]) > 0
    assert table["trials (succeeded / early-stopped / failed)"].startswith("12 ")

    client = MlflowClient(mlflow_server)
    pipeline, experiment, training = (
        client.get_run(table[f"MLflow run: {step}"]) for step in ("pipeline", "experiment", "training")
    )
    assert {run.info.status for run in (pipeline, experiment, training)} == {"FINISHED"}
    # One lineage: each task's run names the run of the task before it.
    assert experiment.data.tags["kubeflow_tasks.upstream_run_id"] == pipeline.info.run_id
    assert training.data.tags["kubeflow_tasks.upstream_run_id"] == experiment.info.run_id
    assert "baseline_rmse" in pipeline.data.metrics
    trials = client.search_runs(
        [experiment.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{experiment.info.run_id}'"
    )
    assert len(trials) == 12
    assert all({"learning_rate", "num_estimators"} <= set(t.data.params) and "rmse" in t.data.metrics for t in trials)
    assert training.data.params["learning_rate"] == table["best learning_rate"]
