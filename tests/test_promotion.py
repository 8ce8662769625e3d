"""`kubeflow-tasks promote` against a real MLflow server with its model registry, on loopback.

The training runs log a "model" (an MLmodel file and the number `quality.txt`) as run artifacts;
the evaluation (tests/scripts/judge_model.py) downloads each model through the registry and prints
its quality as rmse, so which version should win is known in advance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from shared.promotion import decide

ROOT = Path(__file__).resolve().parents[1]
JUDGE = ROOT / "tests" / "scripts" / "judge_model.py"
TAGS = ("decision", "metric", "value", "champion_value", "baseline_value", "reason")


def training_run(client, tmp_path: Path, quality: float, *, upstream: str | None = None) -> str:
    """A finished run that logged a model of the given quality under `model`."""
    experiment = client.get_experiment_by_name("promotion-tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("promotion-tests")
    tags = {"kubeflow_tasks.kind": "training-job"}
    if upstream:
        tags["kubeflow_tasks.upstream_run_id"] = upstream
    run = client.create_run(experiment_id, tags=tags)
    model = tmp_path / f"model-{run.info.run_id}"
    model.mkdir()
    (model / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (model / "quality.txt").write_text(str(quality))
    client.log_artifacts(run.info.run_id, str(model), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def promote_cli(tracking_uri: str, model: str, run_id: str, key: str, log: Path, *extra: str, env=None, wait=True):
    command = [
        sys.executable, "-m", "shared.cli", "promote", "--model-name", model, "--run-id", run_id,
        "--evaluate", f"{sys.executable} {JUDGE} {{model_uri}} {log}", "--key", key,
        "--mlflow-tracking-uri", tracking_uri, "--output", "json", *extra,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def versions(client, model: str):
    return sorted(client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version))


def test_first_promotes_worse_is_rejected_better_by_the_margin_takes_over(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    log = tmp_path / "judged.log"
    # Lineage: pipeline run -> experiment run (best trial) -> training run.
    experiment_id = client.create_experiment("promotion-lineage")
    pipeline = client.create_run(experiment_id, tags={"kubeflow_tasks.kind": "pipeline", "kubeflow_tasks.remote_id": "kfp/abc"})
    hpo = client.create_run(
        experiment_id,
        tags={"kubeflow_tasks.kind": "experiment", "kubeflow_tasks.output.best_trial": "tpe-7",
              "kubeflow_tasks.upstream_run_id": pipeline.info.run_id},
    )
    first = training_run(client, tmp_path, 0.8, upstream=hpo.info.run_id)
    code, result, err = promote_cli(mlflow_server, "forecaster", first, "night/1", log, "--margin", "0.05")
    assert code == 0, err
    assert result["decision"] == "promoted" and result["model_version"] == "1" and result["champion_version"] == "1"
    assert "first champion" in result["reason"]
    v1 = client.get_model_version("forecaster", "1")
    assert {f"kubeflow_tasks.{t}" for t in TAGS} <= set(v1.tags)
    assert v1.tags["kubeflow_tasks.value"] == "0.8" and v1.tags["kubeflow_tasks.baseline_value"] == "1.0"
    assert v1.tags["kubeflow_tasks.champion_value"] == "none"
    assert v1.tags["kubeflow_tasks.source_run_id"] == first
    assert v1.tags["kubeflow_tasks.best_trial"] == "tpe-7"
    assert v1.tags["kubeflow_tasks.hpo_run_id"] == hpo.info.run_id
    assert v1.tags["kubeflow_tasks.pipeline_run_id"] == "kfp/abc"
    assert v1.run_id == first
    assert client.get_model_version_by_alias("forecaster", "champion").version == "1"

    # Better than the champion, but not by the margin: rejected, the alias stays.
    close = training_run(client, tmp_path, 0.77)
    code, result, err = promote_cli(mlflow_server, "forecaster", close, "night/2", log, "--margin", "0.05")
    assert code == 0, err
    assert (result["decision"], result["model_version"], result["champion_version"]) == ("rejected", "2", "1")
    v2 = client.get_model_version("forecaster", "2")
    assert v2.tags["kubeflow_tasks.decision"] == "rejected"
    assert v2.tags["kubeflow_tasks.champion_value"] == "0.8"
    assert "champion v1" in v2.tags["kubeflow_tasks.reason"]
    assert client.get_model_version_by_alias("forecaster", "champion").version == "1"

    # Better by more than the margin: promoted, the alias moves.
    better = training_run(client, tmp_path, 0.6)
    code, result, err = promote_cli(mlflow_server, "forecaster", better, "night/3", log, "--margin", "0.05")
    assert code == 0, err
    assert (result["decision"], result["previous_champion_version"], result["champion_version"]) == ("promoted", "1", "3")
    assert client.get_model_version_by_alias("forecaster", "champion").version == "3"
    judged = log.read_text().splitlines()
    assert judged[-3:] == ["models:/forecaster/3", "models:/forecaster/1", "naive"]  # challenger, champion, baseline


def test_a_model_no_better_than_the_baseline_is_registered_but_rejected(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = training_run(client, tmp_path, 1.3)
    code, result, err = promote_cli(mlflow_server, "weak", run_id, "k", tmp_path / "log")
    assert code == 0, err
    assert result["decision"] == "rejected" and result["champion_version"] is None
    assert "baseline" in result["reason"]
    (version,) = versions(client, "weak")
    assert version.tags["kubeflow_tasks.decision"] == "rejected"
    assert not client.get_registered_model("weak").aliases


def test_the_same_key_again_registers_nothing_and_decides_nothing(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    log = tmp_path / "judged.log"
    run_id = training_run(client, tmp_path, 0.5)
    first = promote_cli(mlflow_server, "again", run_id, "dag/promote/run1", log)
    calls = len(log.read_text().splitlines())
    second = promote_cli(mlflow_server, "again", run_id, "dag/promote/run1", log)
    assert first[0] == second[0] == 0, second[2]
    assert second[1]["decided_before"] and second[1]["registered_before"]
    assert {k: v for k, v in second[1].items() if not k.endswith("_before")} == {
        k: v for k, v in first[1].items() if not k.endswith("_before")
    }
    assert len(versions(client, "again")) == 1
    assert len(log.read_text().splitlines()) == calls  # nothing evaluated the second time


def test_a_promotion_killed_mid_evaluation_and_retried_leaves_one_version_and_one_decision(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    log = tmp_path / "judged.log"
    champion = training_run(client, tmp_path, 0.9)
    assert promote_cli(mlflow_server, "killed", champion, "night/1", log)[0] == 0
    challenger = training_run(client, tmp_path, 0.4)
    proc = promote_cli(mlflow_server, "killed", challenger, "night/2", log, env={"JUDGE_HANG": "naive"}, wait=False)
    hang = Path(f"{log}.hang")
    try:
        wait_until(hang.exists, timeout=120, what="the evaluation of the baseline to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if hang.exists():  # the evaluation has a session of its own; SIGKILL of the CLI leaves it
            os.kill(int(hang.read_text()), signal.SIGKILL)
        proc.kill()
    assert [v.tags.get("kubeflow_tasks.decision") for v in versions(client, "killed")] == ["promoted", None]

    code, result, err = promote_cli(mlflow_server, "killed", challenger, "night/2", log)
    assert code == 0, err
    assert result["registered_before"] and not result["decided_before"]
    assert (result["decision"], result["model_version"], result["champion_version"]) == ("promoted", "2", "2")
    assert len(versions(client, "killed")) == 2  # one per night, none for the retry
    assert client.get_model_version_by_alias("killed", "champion").version == "2"
    code, again, err = promote_cli(mlflow_server, "killed", challenger, "night/2", log)
    assert again["decided_before"] and again["decision"] == "promoted" and len(versions(client, "killed")) == 2


def test_a_failed_evaluation_exits_1_and_leaves_the_version_undecided(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = training_run(client, tmp_path, 0.5)
    code, _, err = promote_cli(mlflow_server, "failing", run_id, "k", tmp_path / "log", "--baseline", "models:/none/1")
    assert code == 1
    assert "evaluate: exited" in err and "Traceback" not in err
    (version,) = versions(client, "failing")
    assert "kubeflow_tasks.decision" not in version.tags


def test_setvalue_output_gives_the_dolphinscheduler_out_parameters(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = training_run(client, tmp_path, 0.5)
    command = [sys.executable, "-m", "shared.cli", "promote", "--model-name", "setvalue", "--run-id", run_id,
               "--evaluate", f"{sys.executable} {JUDGE} {{model_uri}} {tmp_path / 'log'}",
               "--mlflow-tracking-uri", mlflow_server, "--output", "setvalue", "--key", "ds/1/2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "${setValue(model_version=1)}" in lines
    assert "${setValue(decision=promoted)}" in lines
    assert "${setValue(champion_version=1)}" in lines


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--margin", "-1"], "margin"),
        (["--margin", "lots"], "margin"),
        (["--evaluate", "python judge.py"], "evaluate"),
        (["--model-name", "has space"], "model_name"),
        (["--alias", "v3"], "alias"),
        (["--evaluate-timeout", "soon"], "--evaluate-timeout"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_mlflow_is_contacted(args, field):
    base = {"--model-name": "m", "--run-id": "abc123", "--evaluate": "python judge.py {model_uri}"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [w for pair in base.items() for w in pair]
    # Port 9 (discard) on loopback: nothing answers, so reaching MLflow would fail differently.
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "promote", *argv, "--mlflow-tracking-uri", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"kubeflow-tasks: error: {field}")


def test_the_rule_needs_the_margin_over_the_champion_and_any_win_over_the_baseline():
    assert decide("rmse", 0.7, 1.0, None).decision == "promoted"
    assert decide("rmse", 1.0, 1.0, None).decision == "rejected"  # a tie with the baseline is no win
    assert decide("rmse", 0.7, 1.0, 0.75, margin=0.05).decision == "rejected"
    assert decide("rmse", 0.69, 1.0, 0.75, margin=0.05).decision == "promoted"
    assert decide("auc", 0.9, 0.5, 0.8, greater_is_better=True, margin=0.05).decision == "promoted"
    assert decide("auc", 0.84, 0.5, 0.8, greater_is_better=True, margin=0.05).decision == "rejected"


def test_a_retry_after_a_kill_between_decision_and_alias_only_moves_the_alias(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    log = tmp_path / "judged.log"
    run_id = training_run(client, tmp_path, 0.5)
    assert promote_cli(mlflow_server, "halfway", run_id, "night/1", log)[0] == 0
    # What a try killed right after writing its decision leaves: decided, alias not yet moved.
    client.delete_registered_model_alias("halfway", "champion")
    judged = len(log.read_text().splitlines())

    code, result, err = promote_cli(mlflow_server, "halfway", run_id, "night/1", log)
    assert code == 0, err
    assert result["decided_before"] and result["decision"] == "promoted" and result["champion_version"] == "1"
    assert client.get_model_version_by_alias("halfway", "champion").version == "1"
    assert len(log.read_text().splitlines()) == judged  # nothing judged again
