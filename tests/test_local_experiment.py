"""Katib experiments run locally: real trial processes, real suggestion libraries, Katib's rules."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.backends.local import procs
from shared.backends.local.experiment import ExperimentRunner
from shared.backends.local.runner import RunContext
from shared.errors import SpecError
from shared.specs import ExperimentSpec, load_spec, parse_experiment
from shared.status import State, Status

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "dags" / "commodity" / "experiment.yaml"


@pytest.fixture(autouse=True)
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MLFLOW_"):
            monkeypatch.delenv(name)


class Recorder:
    """A RunContext whose reports and log lines are kept for the assertions."""

    def __init__(self, workdir: Path, mlflow: dict[str, str] | None = None):
        self.reports: list[Status] = []
        self.lines: list[str] = []
        self.ctx = RunContext(
            workdir=workdir, env={}, mlflow=mlflow or {}, report=self.reports.append, log=self.lines.append
        )


def experiment(
    code: str,
    tmp_path: Path,
    *,
    parameters: list[dict[str, Any]] | None = None,
    algorithm: str = "random",
    settings: dict[str, str] | None = None,
    goal: float | None = None,
    **spec: Any,
) -> ExperimentSpec:
    """A Job-trial Experiment whose trial is `python -c code <x>`, as a user would write it."""
    parameters = parameters or [
        {"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1"}}
    ]
    objective: dict[str, Any] = {"type": "minimize", "objectiveMetricName": "loss"}
    if goal is not None:
        objective["goal"] = goal
    manifest = {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": "exp"},
        "spec": {
            "objective": objective,
            "algorithm": {
                "algorithmName": algorithm,
                "algorithmSettings": [{"name": k, "value": v} for k, v in (settings or {}).items()],
            },
            "parameters": parameters,
            **spec,
            "trialTemplate": {
                "primaryContainerName": "main",
                "trialParameters": [
                    {"name": "x", "reference": parameters[0]["name"]},
                    {"name": "trialName", "reference": "${trialSpec.Name}"},
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "main",
                                        "image": "python:3.11",
                                        "command": ["python", "-c", textwrap.dedent(code)],
                                        "args": ["${trialParameters.x}", "${trialParameters.trialName}"],
                                        "env": [{"name": "SHARED_DIR", "value": str(tmp_path / "shared")}],
                                    }
                                ]
                            }
                        }
                    },
                },
            },
        },
    }
    (tmp_path / "shared").mkdir(exist_ok=True)
    return parse_experiment(manifest, str(tmp_path))


def run(spec: ExperimentSpec, tmp_path: Path) -> tuple[Status, Recorder]:
    recorder = Recorder(tmp_path / "run")
    status = ExperimentRunner(spec, recorder.ctx).run()
    return status, recorder


def trial_records(recorder: Recorder) -> list[dict[str, Any]]:
    folder = recorder.ctx.workdir / "trials"
    return [json.loads((d / "trial.json").read_text()) for d in sorted(folder.iterdir())]


def test_grid_finds_the_best_trial_and_records_every_trial(tmp_path: Path) -> None:
    code = """
        import sys
        x = int(sys.argv[1])
        print(f"epoch=1 loss={(x - 3) ** 2 + 1}")
        print(f"loss={(x - 3) ** 2}")
    """
    params = [{"name": "n", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "5"}}]
    spec = experiment(
        code, tmp_path, parameters=params, algorithm="grid", parallelTrialCount=2, maxTrialCount=5
    )
    status, recorder = run(spec, tmp_path)

    assert status.state is State.SUCCEEDED, status
    assert status.raw_state == "ExperimentMaxTrialsReached"
    out = status.outputs
    assert out["best_parameters"] == {"n": "3"}
    assert out["best_metrics"] == {"loss": 0.0}
    assert out["objective_metric"] == "loss"
    assert (out["trials"], out["trials_succeeded"]) == (5, 5)
    records = trial_records(recorder)
    assert sorted(r["assignments"][0]["value"] for r in records) == ["1", "2", "3", "4", "5"]
    best = next(r for r in records if r["name"] == out["best_trial"])
    assert best["state"] == "Succeeded"
    assert best["metrics"] == [{"name": "loss", "min": 0.0, "max": 1.0, "latest": 0.0}]
    assert out["best_trial"].startswith("exp-") and len(out["best_trial"]) == len("exp-") + 8
    log = (recorder.ctx.workdir / "trials" / out["best_trial"] / "log.txt").read_text()
    assert "loss=0" in log
    assert len(recorder.lines) == 5 and recorder.lines[-1].startswith("trial 5/5 exp-")
    assert f"(best loss=0, trial {out['best_trial']})" in recorder.lines[-1]
    # Every report carries the same keys as the final outputs.
    assert recorder.reports and all(set(r.outputs) == set(out) for r in recorder.reports)
    assert all(r.state is State.RUNNING for r in recorder.reports)


def test_trial_parameters_substitute_values_and_trial_metadata(tmp_path: Path) -> None:
    code = """
        import os, sys
        print(f"loss={sys.argv[1]}")
        print("name", sys.argv[2], os.environ["KATIB_TRIAL_NAME"], os.environ["SHARED_DIR"])
    """
    spec = experiment(code, tmp_path, maxTrialCount=2, parallelTrialCount=1, settings={"random_state": "1"})
    status, recorder = run(spec, tmp_path)
    assert status.outputs["trials_succeeded"] == 2
    for record in trial_records(recorder):
        log = (recorder.ctx.workdir / "trials" / record["name"] / "log.txt").read_text()
        value = record["assignments"][0]["value"]
        assert f"loss={value}" in log
        assert f"name {record['name']} {record['name']} {tmp_path / 'shared'}" in log


def test_goal_reached_stops_and_kills_running_trials(tmp_path: Path) -> None:
    code = """
        import sys, time
        x = int(sys.argv[1])
        print(f"loss={x}", flush=True)
        if x != 1:
            time.sleep(60)  # the workload of a slow trial: it must be killed, not waited for
    """
    params = [{"name": "n", "parameterType": "discrete", "feasibleSpace": {"list": ["1", "2", "3"]}}]
    spec = experiment(
        code, tmp_path, parameters=params, algorithm="grid", goal=1, parallelTrialCount=3, maxTrialCount=3
    )
    started = time.monotonic()
    status, recorder = run(spec, tmp_path)
    assert time.monotonic() - started < 30
    assert status.state is State.SUCCEEDED and status.raw_state == "ExperimentGoalReached"
    assert status.outputs["best_parameters"] == {"n": "1"}
    assert (status.outputs["trials_succeeded"], status.outputs["trials_killed"]) == (1, 2)
    assert sorted(r["state"] for r in trial_records(recorder)) == ["Killed", "Killed", "Succeeded"]


def test_max_failed_trial_count_fails_the_experiment(tmp_path: Path) -> None:
    code = """
        import sys
        print("loss=1")
        sys.exit(3)
    """
    spec = experiment(code, tmp_path, maxTrialCount=10, maxFailedTrialCount=2, parallelTrialCount=1)
    status, recorder = run(spec, tmp_path)
    assert status.state is State.FAILED and status.raw_state == "ExperimentFailed"
    assert (status.outputs["trials"], status.outputs["trials_failed"]) == (2, 2)
    assert status.outputs["best_trial"] == ""
    assert " Failed: " in recorder.lines[0]


def test_metrics_unavailable_counts_as_failed_and_leaves_no_optimal_trial(tmp_path: Path) -> None:
    spec = experiment("print('accuracy=1')", tmp_path, maxTrialCount=2, parallelTrialCount=2)
    status, recorder = run(spec, tmp_path)
    assert status.outputs["trials_metrics_unavailable"] == 2
    # Katib: Succeeded (max trials) without an optimal trial, which is a FAILED experiment.
    assert status.state is State.FAILED and status.raw_state == "ExperimentMaxTrialsReached"
    assert [r["state"] for r in trial_records(recorder)] == ["MetricsUnavailable"] * 2


def test_median_stop_early_stops_a_trial_worse_than_the_median(tmp_path: Path) -> None:
    code = """
        import os, sys, time
        shared = os.environ["SHARED_DIR"]
        ordinal = len(os.listdir(shared))
        open(os.path.join(shared, sys.argv[2]), "w").close()
        loss = 1.0 if ordinal < 2 else 100.0
        for step in range(4):
            print(f"loss={loss}", flush=True)
        if ordinal >= 2:
            time.sleep(60)  # only an early stop ends this trial in time
    """
    spec = experiment(
        code,
        tmp_path,
        maxTrialCount=3,
        parallelTrialCount=1,
        earlyStopping={
            "algorithmName": "medianstop",
            "algorithmSettings": [
                {"name": "min_trials_required", "value": "2"},
                {"name": "start_step", "value": "2"},
            ],
        },
    )
    status, recorder = run(spec, tmp_path)
    assert status.state is State.SUCCEEDED and status.raw_state == "ExperimentMaxTrialsReached"
    assert (status.outputs["trials_succeeded"], status.outputs["trials_early_stopped"]) == (2, 1)
    stopped = next(r for r in trial_records(recorder) if r["state"] == "EarlyStopped")
    assert stopped["metrics"][0]["latest"] == 100.0
    assert status.outputs["best_metrics"] == {"loss": 1.0}


def test_parallel_trial_count_runs_three_trials_at_once(tmp_path: Path) -> None:
    code = """
        import os, sys, time
        shared = os.environ["SHARED_DIR"]
        open(os.path.join(shared, sys.argv[2]), "w").close()
        deadline = time.monotonic() + 20
        while len(os.listdir(shared)) < 3:  # every trial waits until all three run together
            if time.monotonic() > deadline:
                sys.exit("never saw 3 trials at once")
            time.sleep(0.02)
        print(f"loss={sys.argv[1]}")
    """
    spec = experiment(code, tmp_path, maxTrialCount=3, parallelTrialCount=3)
    status, _ = run(spec, tmp_path)
    assert status.outputs["trials_succeeded"] == 3, status


def test_stop_kills_every_trial_process_group(tmp_path: Path) -> None:
    code = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(os.environ["SHARED_DIR"], sys.argv[2]), "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        print("loss=1", flush=True)
        time.sleep(60)
    """
    spec = experiment(code, tmp_path, maxTrialCount=5, parallelTrialCount=3)
    recorder = Recorder(tmp_path / "run")
    runner = ExperimentRunner(spec, recorder.ctx)
    result: list[Status] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()
    shared = tmp_path / "shared"
    deadline = time.monotonic() + 30
    while not (len(list(shared.iterdir())) == 3 and all(f.read_text() for f in shared.iterdir())):
        assert time.monotonic() < deadline, "trials did not start"
        time.sleep(0.02)
    pids = [int(p) for f in shared.iterdir() for p in f.read_text().split()]

    runner.stop()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert result[0].state is State.CANCELLED
    assert result[0].outputs["trials_killed"] == 3
    assert not [pid for pid in pids if procs.pid_alive(pid)]
    assert not list((recorder.ctx.workdir / "procs").iterdir())


def test_unrunnable_templates_are_spec_errors(tmp_path: Path) -> None:
    spec = experiment("print('loss=1')", tmp_path, maxTrialCount=3)
    manifest = json.loads(json.dumps(spec.manifest))
    manifest["spec"]["metricsCollectorSpec"] = {"collector": {"kind": "PrometheusMetric"}}
    with pytest.raises(SpecError) as info:
        ExperimentRunner(parse_experiment(manifest, str(tmp_path)), Recorder(tmp_path).ctx)
    assert info.value.path == "spec.metricsCollectorSpec.collector.kind"


def write_prices(path: Path, days: int = 300) -> None:
    """A synthetic commodity: trend + yearly-ish seasonality + noise."""
    rng = np.random.default_rng(0)
    day = np.arange(days)
    price = 80 + 0.04 * day + 4 * np.sin(2 * np.pi * day / 45) + rng.normal(0, 0.6, days)
    lines = ["day,price", *(f"{d},{p:.4f}" for d, p in zip(day, price, strict=True))]
    path.write_text("\n".join(lines) + "\n")


def test_commodity_demo_experiment_runs_as_written(tmp_path: Path) -> None:
    data = tmp_path / "prices.csv"
    write_prices(data)
    spec = load_spec(DEMO, params={"data_path": str(data)})
    assert spec.base_dir == str(DEMO.parent)
    status, recorder = run(spec, tmp_path)
    assert status.state is State.SUCCEEDED, status
    assert status.raw_state == "ExperimentMaxTrialsReached"
    out = status.outputs
    assert (out["trials"], out["trials_succeeded"]) == (12, 12)
    assert set(out["best_parameters"]) == {"learning_rate", "num_estimators"}
    assert 0.01 <= float(out["best_parameters"]["learning_rate"]) <= 0.3
    assert 20 <= int(out["best_parameters"]["num_estimators"]) <= 200
    # The noise has sigma 0.6: a useful forecaster is close to it, a naive one (last price) is not.
    assert out["best_metrics"]["rmse"] < 1.0
    assert len(recorder.lines) == 12


@pytest.mark.e2e
def test_trials_become_nested_mlflow_runs(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"katib-{tmp_path.name}")
    parent = client.create_run(experiment_id).info.run_id
    data = tmp_path / "prices.csv"
    write_prices(data)
    manifest = load_spec(DEMO, params={"data_path": str(data)}).manifest
    manifest = json.loads(json.dumps(manifest))
    manifest["spec"].update(maxTrialCount=2, parallelTrialCount=2, maxFailedTrialCount=1)
    spec = parse_experiment(manifest, str(DEMO.parent))
    mlflow_ctx = {"tracking_uri": mlflow_server, "run_id": parent, "experiment_id": experiment_id}
    recorder = Recorder(tmp_path / "run", mlflow=mlflow_ctx)
    status = ExperimentRunner(spec, recorder.ctx).run()
    assert status.state is State.SUCCEEDED

    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 2
    for mlflow_run in runs:
        assert mlflow_run.info.status == "FINISHED"
        assert set(mlflow_run.data.params) >= {"learning_rate", "num_estimators"}
        assert mlflow_run.data.metrics["rmse"] > 0
        # trial.py logged its rmse curve into the same run through MLFLOW_RUN_ID.
        assert len(client.get_metric_history(mlflow_run.info.run_id, "rmse")) > 1
    assert parent not in {r.info.run_id for r in runs}

    # The parent run got the HPO plots, made from those trial runs.
    plots = sorted(a.path for a in client.list_artifacts(parent, "hpo"))
    assert plots == ["hpo/optimization_history.png", "hpo/parallel_coordinate.png", "hpo/param_importances.png"]
    local = client.download_artifacts(parent, "hpo/optimization_history.png", str(tmp_path))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_local_experiment_modules_stays_light() -> None:
    import subprocess

    code = (
        "import sys, shared.backends.local.experiment, shared.backends.local.suggestions;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('optuna', 'hyperopt', 'skopt', 'mlflow', 'torch', 'kfp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_pytorchjob_trials_read_metrics_from_the_master(tmp_path: Path) -> None:
    code = "import os, sys; print('loss=' + (sys.argv[1] if os.environ['RANK'] == '0' else '-99'))"
    container = {"name": "pytorch", "image": "x", "command": ["python", "-c", code, "${trialParameters.x}"]}
    replica = {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {"containers": [container]}}}
    spec = experiment("", tmp_path, maxTrialCount=2, parallelTrialCount=1)
    manifest = json.loads(json.dumps(spec.manifest))
    manifest["spec"]["trialTemplate"] = {
        "primaryContainerName": "pytorch",
        "trialParameters": [{"name": "x", "reference": "x"}],
        "trialSpec": {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "spec": {"pytorchReplicaSpecs": {"Master": replica, "Worker": replica}},
        },
    }
    status, recorder = run(parse_experiment(manifest, str(tmp_path)), tmp_path)
    assert status.state is State.SUCCEEDED, status
    assert status.outputs["trials_succeeded"] == 2
    for record in trial_records(recorder):
        # The worker's loss=-99 is not the primary container's and must not count.
        assert record["metrics"][0]["min"] == float(record["assignments"][0]["value"])
