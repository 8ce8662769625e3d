"""Generated DolphinScheduler tasks run the way a worker runs them (tests/ds_harness.py), end to end on
the local backend: real bash, the real CLI, real replica processes, a real MLflow server, real signals,
and the worker's own way to stop a task (`kill -9` of its process tree, found with pstree)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from waiting import wait_until

from dolphinscheduler_tasks import PyTorchJob, offline
from shared.backends.local import procs
from tests.ds_harness import FAILURE, HOST_MARKER, KILL, SUCCESS, Worker

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)

# A replica that records its argv and its start, then waits for `release` (its content is the exit code).
RECORDER = """
import json, os, sys, time
from pathlib import Path
here = Path(sys.argv[1])
with open(here / "starts", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
(here / f"argv-{os.getpid()}.json").write_text(json.dumps(sys.argv[2:]))
print("replica argv", sys.argv[2:], flush=True)
deadline = time.monotonic() + 60
while not (here / "release").exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
sys.exit(int((here / "release").read_text() or 0))
"""


@pytest.fixture
def worker(tmp_path: Path, state_dir: Path) -> Worker:
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    return Worker(tmp_path / "worker", env)


def recorder_job(tmp_path: Path, args: list[str], workers: int = 0, **task_kwargs) -> dict:
    """A PyTorchJob task (definition JSON) whose replicas run RECORDER with `args`."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    container = {"name": "pytorch", "image": "python:3.11-slim",
                 "command": ["python", str(tmp_path / "recorder.py"), str(tmp_path), *args]}
    replica = {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {"containers": [container]}}}
    specs = {"Master": replica, **({"Worker": {**replica, "replicas": workers}} if workers else {})}
    manifest = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "recorder"},
                "spec": {"pytorchReplicaSpecs": specs}}
    with offline():
        return PyTorchJob(name="record", spec=manifest, **task_kwargs).get_define()


def starts(tmp_path: Path) -> list[int]:
    path = tmp_path / "starts"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def cli_status(run_id: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "status", run_id, "--output", "json"],
                          capture_output=True, text=True, check=True, timeout=60)
    return json.loads(proc.stdout)


@pytest.mark.timeout(1500)  # the whole night, promotion included, on two shared cores
def test_nightly_workflow_runs_with_the_mlflow_run_id_flowing_task_to_task(worker, tmp_path, mlflow_server):
    from dags.dolphinscheduler.commodity_nightly import build_workflow

    with offline():
        workflow = build_workflow(data_root=str(tmp_path / "data"))
    worker.env = {**worker.env, "MLFLOW_TRACKING_URI": mlflow_server}
    worker.global_params = {p["prop"]: p["value"] for p in workflow.param_json}
    results = worker.run_workflow(workflow.task_definition_json, workflow.task_relation_json)

    assert {name: r.state for name, r in results.items()} == dict.fromkeys(
        ["prepare", "tune", "train", "promote", "summary"], SUCCESS
    ), {name: r.log[-3000:] for name, r in results.items()}
    prepare, tune, train = (results[n].var_pool for n in ("prepare", "tune", "train"))
    assert prepare["state"] == tune["state"] == train["state"] == "SUCCEEDED"
    client = MlflowClient(mlflow_server)
    runs = {n: client.get_run(results[n].var_pool["mlflow_run_id"]) for n in ("prepare", "tune", "train")}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["tune"].data.tags["kubeflow_tasks.upstream_run_id"] == prepare["mlflow_run_id"]
    assert runs["train"].data.tags["kubeflow_tasks.upstream_run_id"] == tune["mlflow_run_id"]
    assert "baseline_rmse" in runs["prepare"].data.metrics
    # The tuned values reached the training job through ${best_learning_rate} and ${best_num_estimators}.
    assert runs["train"].data.params["learning_rate"] == tune["best_learning_rate"]
    assert json.loads(tune["best_parameters"])["num_estimators"] == tune["best_num_estimators"]
    summary = results["summary"].log
    assert f"MLflow run of the training (its upstream tags lead back to the pipeline): {train['mlflow_run_id']}" in summary
    assert f"training job: {train['name']} SUCCEEDED" in summary
    # The night ends with the promotion: the trained model beats the naive baseline on the holdout,
    # and its registered version carries the decision (OUT parameters, tags, the summary).
    promote = results["promote"].var_pool
    assert promote["decision"] in ("promoted", "rejected") and promote["model_version"]
    assert float(promote["value"]) < float(promote["baseline_value"])
    version = client.get_model_version("commodity-forecaster", promote["model_version"])
    assert version.run_id == train["mlflow_run_id"]
    assert version.tags["kubeflow_tasks.decision"] == promote["decision"]
    assert version.tags["kubeflow_tasks.best_trial"] and version.tags["kubeflow_tasks.pipeline_run_id"] == prepare["id"]
    champion = client.get_model_version_by_alias("commodity-forecaster", "champion").version
    assert promote["champion_version"] == champion
    assert f"decision: {promote['decision']}: {promote['reason']}" in summary
    # The key is the workflow instance and the task code: running the task again adopts the success.
    again = worker.run(next(t for t in workflow.task_definition_json if t["name"] == "train"), tune)
    assert again.state == SUCCESS and again.var_pool["id"] == train["id"] and "adopted" in again.log


def test_hostile_parameter_values_reach_the_work_literally(worker, tmp_path):
    victim = tmp_path / "executed"
    hostile = f"it's \"quoted\" `touch {victim}` $(touch {victim})\n${{setValue(x=y)}} #{{setValue(state=OWNED)}}"
    task = recorder_job(tmp_path, ["${params.upstream}", "${params.literal}"],
                        params={"upstream": "${payload}", "literal": hostile})
    (tmp_path / "release").write_text("0")
    result = worker.run(task, {"payload": hostile})

    assert result.state == SUCCESS, result.log
    (argv_file,) = tmp_path.glob("argv-*.json")
    assert json.loads(argv_file.read_text()) == [hostile, hostile]
    assert not victim.exists()
    declared = {p["prop"] for p in task["taskParams"]["localParams"] if p["direct"] == "OUT"}
    seen = result.attempts[-1].outputs  # every setValue the worker parsed, declared or not
    assert set(seen) <= declared and "x" not in seen and seen["state"] == "SUCCEEDED"
    assert "replica argv" in result.log  # the replica's own log line was shown, defused


def test_sigterm_cancels_the_remote_work_within_5s_and_fails_the_task(worker, tmp_path, state_dir):
    task = recorder_job(tmp_path, [], workers=1)
    run = worker.start(task)
    run_id = run.wait_for_output("id")  # printed right after submission
    replicas = wait_until(lambda: len(starts(tmp_path)) == 2 and starts(tmp_path), what="2 replicas")
    supervisor = int(next((state_dir / "runs").iterdir()).joinpath("supervisor.pid").read_text())

    sent = time.monotonic()
    run.signal(signal.SIGTERM)
    pids = [*replicas, supervisor, run.proc.pid]
    wait_until(lambda: not any(procs.pid_alive(p) for p in pids), timeout=5, what="every process gone")
    assert time.monotonic() - sent < 5
    attempt = run.wait(30)
    assert attempt.exit_code == 1 and attempt.state == FAILURE, attempt.log
    assert attempt.outputs["state"] == "CANCELLED"
    assert cli_status(run_id)["state"] == "CANCELLED"


def test_after_a_lost_worker_the_task_adopts_the_running_work(worker, tmp_path):
    task = recorder_job(tmp_path, [])
    first = worker.start(task)
    run_id = first.wait_for_output("id")
    wait_until(lambda: starts(tmp_path), what="the replica to start")
    first.lose_worker()  # SIGKILL: the CLI cannot clean up; the work goes on
    first.wait(30)
    assert cli_status(run_id)["state"] == "RUNNING"

    def release_once_adopted(run) -> None:
        wait_until(lambda: any("adopted" in line for line in run.lines), what="adoption")
        (tmp_path / "release").write_text("0")

    result = worker.run(task, on_start=release_once_adopted)  # the same task instance, dispatched again
    assert result.state == SUCCESS, result.log
    assert result.var_pool["id"] == run_id and len(starts(tmp_path)) == 1


def test_failure_is_retried_failretrytimes_with_a_new_attempt_under_the_same_key(worker, tmp_path):
    task = recorder_job(tmp_path, [], fail_retry_times=1, fail_retry_interval=1)
    (tmp_path / "release").write_text("1")  # the replica fails ...

    def succeed_on_retry(run) -> None:
        if starts(tmp_path):  # ... and succeeds when DolphinScheduler retries
            (tmp_path / "release").write_text("0")

    result = worker.run(task, on_start=succeed_on_retry)
    assert [a.state for a in result.attempts] == [FAILURE, SUCCESS]
    assert [a.exit_code for a in result.attempts] == [1, 0]
    first, second = (a.outputs["id"] for a in result.attempts)
    assert first != second and cli_status(first)["key"] == cli_status(second)["key"]
    assert cli_status(second)["attempt"] == 2


def guards_of(worker) -> list[psutil.Process]:
    """The guards this worker's tasks started (outside the tasks' process trees, by design)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "shared.guard" in (proc.info["cmdline"] or []) and proc.environ().get(HOST_MARKER) == str(
                worker.workflow_instance_id
            ):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_a_stop_kills_the_process_tree_and_the_guard_deletes_the_job_within_10s(worker, tmp_path, k8s_double):
    """On a cluster (the wire-level double), where the work lives outside the worker's process tree."""
    manifest = yaml.safe_load((REPO / "tests/data/specs/pytorch-mnist.yaml").read_text())
    manifest["metadata"] = {"name": "stopped", "annotations": {"double.kubeflow-tasks.dev/outcome": "Hang"}}
    kubeconfig = str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig"))
    with offline():
        task = PyTorchJob(name="stopped", spec=manifest, backend="kubernetes", kubeconfig=kubeconfig).get_define()
    run = worker.start(task)
    run.wait_for_output("id")
    assert len(k8s_double.objects("pytorchjobs")) == 1
    (guard,) = guards_of(worker)
    tree = subprocess.run(["pstree", "-p", str(run.proc.pid)], capture_output=True, text=True).stdout
    assert f"({guard.pid})" not in tree  # what the worker's stop kills cannot include the guard

    sent = time.monotonic()
    run.stop()  # kill -9 of the whole tree: the CLI cannot do anything
    attempt = run.wait(30)
    assert attempt.state == KILL and attempt.exit_code == 137
    wait_until(lambda: not k8s_double.objects("pytorchjobs"), timeout=10, what="the guard to delete the job")
    assert time.monotonic() - sent < 10
    wait_until(lambda: not guard.is_running(), timeout=10, what="the guard to exit")
    assert "cancelled" in next(tmp_path.rglob("kubeflow-tasks-guard.log")).read_text()


def test_a_task_that_ends_on_its_own_leaves_no_guard_and_nothing_cancelled(worker, tmp_path):
    task = recorder_job(tmp_path, [])
    (tmp_path / "release").write_text("0")
    result = worker.run(task)
    assert result.state == SUCCESS, result.log
    assert cli_status(result.var_pool["id"])["state"] == "SUCCEEDED"
    wait_until(lambda: not guards_of(worker), timeout=10, what="the guard to exit")
    log = next(tmp_path.rglob("kubeflow-tasks-guard.log")).read_text()
    assert "guarding" in log and "cancel" not in log
