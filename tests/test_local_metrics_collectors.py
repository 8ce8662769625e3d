"""Katib's File and TensorFlowEvent collectors on the local backend, from the upstream examples.

Each test takes the Katib example as published, swaps only the trial's command for a small script
of ours that writes the same kind of file (`tests/scripts/katib_metrics_trial.py`), and runs it end
to end: trials, best trial, and (with MLflow) one nested run per trial, as with StdOut.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.backends.local.experiment import ExperimentRunner
from shared.backends.local.metrics import MetricsCollector
from shared.backends.local.metrics_collectors import FileSource, collect, localize
from shared.backends.local.runner import RunContext
from shared.specs import parse_experiment
from shared.status import State, Status

SCRIPT = Path(__file__).parent / "scripts" / "katib_metrics_trial.py"
EXAMPLES = "katib@v0.19.0/examples/v1beta1"


@pytest.fixture(autouse=True)
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MLFLOW_"):
            monkeypatch.delenv(name)


def example(conformance: Path, name: str, logger: str) -> dict[str, Any]:
    """The upstream example with our script as the trial's command (its own flags kept)."""
    doc = yaml.safe_load((conformance / EXAMPLES / name).read_text())
    spec = doc["spec"]
    spec.update(maxTrialCount=3, parallelTrialCount=3, maxFailedTrialCount=1)
    trial = spec["trialTemplate"]["trialSpec"]
    pods = [r["template"]["spec"] for r in trial["spec"].get("tfReplicaSpecs", {}).values()] or [
        trial["spec"]["template"]["spec"]
    ]
    for pod in pods:
        container = pod["containers"][0]
        flags = [a for a in container["command"][2:] if a.startswith(("--log-path", "--lr", "--learning-rate", "--momentum", "--batch-size"))]
        flags = [a.replace("--learning-rate", "--lr") for a in flags]
        container["command"] = [sys.executable, str(SCRIPT), *flags, f"--logger={logger}"]
    return doc


def run(doc: dict[str, Any], workdir: Path, mlflow: dict[str, str] | None = None) -> tuple[Status, list[str]]:
    lines: list[str] = []
    ctx = RunContext(workdir=workdir, env={}, mlflow=mlflow or {}, report=lambda s: None, log=lines.append)
    return ExperimentRunner(parse_experiment(doc, str(workdir)), ctx).run(), lines


def trial_records(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads((d / "trial.json").read_text()) for d in sorted((workdir / "trials").iterdir())]


def best_lr(status: Status) -> float:
    params = status.outputs["best_parameters"]
    return float(params.get("lr") or params.get("learning_rate"))


def assert_best_is_closest_to_peak(status: Status, workdir: Path, parameter: str) -> None:
    records = trial_records(workdir)
    assert len(records) == 3 and {r["state"] for r in records} == {"Succeeded"}
    lrs = [float(next(a["value"] for a in r["assignments"] if a["name"] == parameter)) for r in records]
    assert best_lr(status) == min(lrs, key=lambda lr: abs(lr - 0.03))
    accuracy = 0.9 - abs(best_lr(status) - 0.03) * 5 + 0.03  # the last (and best) of three epochs
    assert status.outputs["best_metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-3)


@pytest.mark.e2e
def test_file_collector_text_example_runs_locally(conformance: Path, tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"file-{tmp_path.name}")
    parent = client.create_run(experiment_id).info.run_id
    doc = example(conformance, "metrics-collector/file-metrics-collector.yaml", "text")
    mlflow = {"tracking_uri": mlflow_server, "run_id": parent, "experiment_id": experiment_id}
    status, _ = run(doc, tmp_path / "run", mlflow)
    assert status.state is State.SUCCEEDED, status
    assert status.raw_state == "ExperimentMaxTrialsReached"
    assert_best_is_closest_to_peak(status, tmp_path / "run", "lr")
    assert set(status.outputs["best_metrics"]) == {"accuracy", "loss"}
    # The example's /katib/mnist.log is the trial's own file, under its folder.
    trial = status.outputs["best_trial"]
    assert (tmp_path / "run" / "trials" / trial / "root" / "katib" / "mnist.log").is_file()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 3
    assert all(r.info.status == "FINISHED" and {"accuracy", "loss"} <= set(r.data.metrics) for r in runs)


def test_file_collector_json_example_runs_locally(conformance: Path, tmp_path: Path) -> None:
    doc = example(conformance, "metrics-collector/file-metrics-collector-with-json-format.yaml", "json")
    status, _ = run(doc, tmp_path / "run")
    assert status.state is State.SUCCEEDED, status
    assert_best_is_closest_to_peak(status, tmp_path / "run", "lr")
    assert status.outputs["best_metrics"]["loss"] == pytest.approx(1 - status.outputs["best_metrics"]["accuracy"], abs=1e-3)


@pytest.mark.e2e
def test_tensorflow_event_example_runs_locally(conformance: Path, tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"tfevent-{tmp_path.name}")
    parent = client.create_run(experiment_id).info.run_id
    doc = example(conformance, "kubeflow-training-operator/tfjob-mnist-with-summaries.yaml", "tfevents")
    mlflow = {"tracking_uri": mlflow_server, "run_id": parent, "experiment_id": experiment_id}
    status, _ = run(doc, tmp_path / "run", mlflow)
    assert status.state is State.SUCCEEDED, status
    assert_best_is_closest_to_peak(status, tmp_path / "run", "learning_rate")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 3 and all("accuracy" in r.data.metrics for r in runs)


def test_a_trial_that_writes_no_metrics_file_is_metrics_unavailable(conformance: Path, tmp_path: Path) -> None:
    doc = example(conformance, "metrics-collector/file-metrics-collector.yaml", "text")
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [sys.executable, "-c", "print('accuracy=0.5')", "${trialParameters.learningRate}", "${trialParameters.momentum}"]
    doc["spec"].update(maxTrialCount=1, parallelTrialCount=1)
    status, lines = run(doc, tmp_path / "run")
    # stdout is not what a File collector reads
    assert status.state is State.FAILED and status.outputs["trials_metrics_unavailable"] == 1
    assert any("mnist.log" in line for line in lines)


def test_json_values_count_only_as_strings_and_a_bad_line_fails_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"loss": "0.5"}\n{"loss": 0.1}\n\n{"loss": "0.01", "timestamp": 1.5}\n')
    collector = MetricsCollector(["loss"])
    collect(FileSource("File", "/x/m.json", "JSON"), path, collector, print)
    assert collector.objective_values == [0.5, 0.01]  # a number is not taken, as in Katib
    path.write_text('{"loss": "0.5"}\nnot json\n')
    collector, lines = MetricsCollector(["loss"]), []
    collect(FileSource("File", "/x/m.json", "JSON"), path, collector, lines.append)
    assert collector.objective_values == [] and "line 2 is not a JSON object" in lines[0]


def test_tf_event_metric_with_a_folder_reads_only_that_folder(tmp_path: Path) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for folder, value in (("train", 0.1), ("test", 0.7)):
        writer = EventFileWriter(str(tmp_path / folder))
        writer.add_event(event_pb2.Event(step=1, summary=summary_v2.scalar_pb("accuracy", value)))
        writer.close()
    both, test_only = MetricsCollector(["accuracy"]), MetricsCollector(["test/accuracy"])
    source = FileSource("TensorFlowEvent", "/logs")
    collect(source, tmp_path, both, print)
    collect(source, tmp_path, test_only, print)
    assert sorted(both.objective_values) == pytest.approx([0.1, 0.7])
    assert test_only.objective_values == pytest.approx([0.7])


def test_localize_moves_the_collector_path_and_the_paths_around_it(tmp_path: Path) -> None:
    trial = {"args": ["--log-path=/logs", "--out=/logs/test/x", "--data=/data", "plain /logsmore"]}
    moved, local = localize(FileSource("TensorFlowEvent", "/logs/test"), copy.deepcopy(trial), tmp_path)
    assert moved["args"] == [f"--log-path={tmp_path}/logs", f"--out={tmp_path}/logs/test/x", "--data=/data", "plain /logsmore"]
    assert local == Path(f"{tmp_path}/logs/test") and local.is_dir()
