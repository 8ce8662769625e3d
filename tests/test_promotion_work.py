"""`kubeflow-tasks promote --evaluate-spec`: the evaluation run as work like the rest, on the local backend.

Real parts: the CLI as a subprocess, a real MLflow server with its registry on loopback, the local
backend's supervisor and replica processes. The evaluation is a PyTorchJob whose replica
(tests/scripts/judge_model_work.py) reads the model through the registry and logs `rmse` to the run
handed to it; the promotion reads the metric from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_promotion import training_run, versions
from waiting import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
JUDGE = ROOT / "tests" / "scripts" / "judge_model_work.py"


def evaluation_job(tmp_path: Path, *, with_model_uri: bool = True) -> Path:
    args = ["python", str(JUDGE), "${params.model_uri}" if with_model_uri else "naive", "${params.log}", "${params.hang}"]
    manifest = {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "judge"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never", "template": {
            "spec": {"containers": [{"name": "pytorch", "image": "python:3.11-slim", "command": args}]}}}}},
    }
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def promote(tracking_uri: str, run_id: str, key: str, tmp_path: Path, *extra: str, hang: str = "", wait: bool = True):
    log = tmp_path / "judged.log"
    command = [
        sys.executable, "-m", "shared.cli", "promote", "--model-name", "forecaster", "--run-id", run_id,
        "--evaluate-spec", str(evaluation_job(tmp_path)), "--evaluate-param", f"log={log}",
        "--evaluate-param", f"hang={hang}", "--key", key, "--mlflow-tracking-uri", tracking_uri, "--output", "json", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def evaluation_runs(client, key: str) -> dict[str, object]:
    """The evaluations' MLflow runs by role (their key is the promotion's key plus the role)."""
    found = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], filter_string="tags.`kubeflow_tasks.kind` = 'training-job'"):
            run_key = run.data.tags.get("kubeflow_tasks.key", "")
            if run_key.startswith(f"{key}/evaluate/"):
                found[run_key.rsplit("/", 1)[1]] = run
    return found


def test_each_model_is_judged_by_work_whose_mlflow_run_holds_the_metric(tmp_path, mlflow_server, state_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    first = training_run(client, tmp_path, 0.8)
    code, result, err = promote(mlflow_server, first, "night/1", tmp_path)
    assert code == 0, err
    assert (result["decision"], result["model_version"], result["value"], result["baseline_value"]) == ("promoted", "1", 0.8, 1.0)
    judged = evaluation_runs(client, "night/1")
    assert set(judged) == {"challenger", "baseline"}  # no champion yet
    assert judged["challenger"].data.metrics["rmse"] == 0.8
    assert judged["challenger"].data.tags["kubeflow_tasks.upstream_run_id"] == first  # lineage: the training run
    assert {r.info.status for r in judged.values()} == {"FINISHED"}

    worse = training_run(client, tmp_path, 0.9)
    code, result, err = promote(mlflow_server, worse, "night/2", tmp_path)
    assert code == 0, err
    assert (result["decision"], result["champion_value"], result["champion_version"]) == ("rejected", 0.8, "1")
    assert set(evaluation_runs(client, "night/2")) == {"challenger", "champion-v1", "baseline"}
    v2 = client.get_model_version("forecaster", "2")
    assert v2.tags["kubeflow_tasks.decision"] == "rejected" and v2.tags["kubeflow_tasks.value"] == "0.9"
    log = (tmp_path / "judged.log").read_text().splitlines()
    assert log == ["models:/forecaster/1", "naive", "models:/forecaster/2", "models:/forecaster/1", "naive"]


def test_a_promotion_killed_during_its_evaluation_adopts_that_work_on_retry(tmp_path, mlflow_server, state_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = training_run(client, tmp_path, 0.7)
    log = tmp_path / "judged.log"
    first_try = promote(mlflow_server, run_id, "night/kill", tmp_path, hang="forecaster/1", wait=False)
    wait_until(lambda: Path(f"{log}.hang").exists(), timeout=180, what="the challenger's evaluation to start")
    os.killpg(first_try.pid, signal.SIGKILL)  # no chance to cancel anything: the evaluation keeps running
    first_try.wait(30)

    retry = promote(mlflow_server, run_id, "night/kill", tmp_path, hang="forecaster/1", wait=False)
    wait_until(lambda: "challenger: adopted the evaluation" in _stderr_so_far(retry, tmp_path), timeout=120, what="the retry to adopt the evaluation")
    Path(f"{log}.release").write_text("")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err
    result = json.loads(out)
    assert result["decision"] == "promoted" and result["registered_before"] and not result["decided_before"]
    assert log.read_text().splitlines().count("models:/forecaster/1") == 1  # one evaluation of the challenger
    assert len(versions(client, "forecaster")) == 1


def _stderr_so_far(proc: subprocess.Popen, tmp_path: Path) -> str:
    """Progress lines the retry printed so far (read without blocking: the evaluation logs an adoption)."""
    import fcntl

    fd = proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    seen = tmp_path / "retry.stderr"
    try:
        chunk = os.read(fd, 65536).decode(errors="replace")
    except BlockingIOError:
        chunk = ""
    with seen.open("a") as f:
        f.write(chunk)
    return seen.read_text()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--evaluate", "python judge.py {model_uri}"], "evaluate: give the evaluation"),
        (["--evaluate-param", "model_uri=x"], "evaluate_params: 'model_uri' is set for each model"),
        (["--kubeconfig", "/nowhere"], "--kubeconfig: only applies with --backend kubernetes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(tmp_path, state_dir, extra, expected):
    code, _, err = promote("http://127.0.0.1:9", "abc123", "k", tmp_path, *extra)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"kubeflow-tasks: error: {expected}"), line
    assert not state_dir.exists() or not any(state_dir.rglob("spec.json"))


def test_an_evaluation_that_does_not_take_the_model_is_refused(tmp_path, state_dir):
    spec = evaluation_job(tmp_path, with_model_uri=False)
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "promote", "--model-name", "m", "--run-id", "abc123",
         "--evaluate-spec", str(spec), "--evaluate-param", "log=x", "--evaluate-param", "hang=",
         "--mlflow-tracking-uri", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "kubeflow-tasks: error: evaluate_spec: must take the model to judge: put ${params.model_uri} in the manifest")


def test_the_dolphinscheduler_task_runs_the_evaluation_as_work(tmp_path, mlflow_server, state_dir):
    from mlflow.tracking import MlflowClient

    from dolphinscheduler_tasks import ModelPromotion, offline
    from tests.ds_harness import SUCCESS, Worker

    client = MlflowClient(mlflow_server)
    run_id = training_run(client, tmp_path, 0.5)
    log = tmp_path / "judged.log"
    with offline():
        task = ModelPromotion(
            name="promote", model_name="ds-forecaster", run_id="${mlflow_run_id}", evaluate_spec=evaluation_job(tmp_path),
            evaluate_params={"log": str(log), "hang": "${no_hang}"}, mlflow_tracking_uri=mlflow_server,
        ).get_define()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    worker = Worker(tmp_path / "worker", env, global_params={"no_hang": ""})
    result = worker.run(task, {"mlflow_run_id": run_id})
    assert result.state == SUCCESS, result.log[-3000:]
    assert (result.var_pool["decision"], result.var_pool["model_version"], result.var_pool["value"]) == ("promoted", "1", "0.5")
    assert log.read_text().splitlines() == ["models:/ds-forecaster/1", "naive"]
    key = f"dolphinscheduler/{worker.workflow_instance_id}/{task['code']}"
    assert set(evaluation_runs(client, key)) == {"challenger", "baseline"}


DAG = '''
import pendulum
from airflow.sdk import DAG
from airflow_provider.operators.registry import MlflowModelPromotionOperator

with DAG("kft_promote_work", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
    MlflowModelPromotionOperator(task_id="promote", model_name="af-forecaster", run_id="%(run_id)s",
                                 evaluate_spec="evaluate.yaml", evaluate_params={"log": "%(log)s", "hang": ""})
'''


def test_the_airflow_operator_runs_the_evaluation_as_work(tmp_path, mlflow_server):
    from airflow_env import new_airflow, run_to_end
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run_id = training_run(client, tmp_path, 0.4)
    env = new_airflow(tmp_path)
    evaluation_job(env.dags_folder)  # beside the DAG file, named relative to it
    log = tmp_path / "judged.log"
    (env.dags_folder / "kft_promote_work.py").write_text(DAG % {"run_id": run_id, "log": log})
    env.set_connection("kubeflow_default", "kubeflow", {"mlflow_tracking_uri": mlflow_server, "state_dir": str(env.state_dir)})
    code, output = run_to_end(env, "dags", "test", "kft_promote_work", log_name="dags-test.log")
    assert code == 0, output[-3000:]
    assert env.task_states("kft_promote_work") == {"promote": "success"}
    xcoms = env.xcoms("kft_promote_work", "promote")
    assert (xcoms["decision"], xcoms["model_version"], xcoms["value"]) == ("promoted", "1", 0.4)
    assert log.read_text().splitlines() == ["models:/af-forecaster/1", "naive"]
