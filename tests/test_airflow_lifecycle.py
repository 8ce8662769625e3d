"""The provider's task life cycle in real Airflow processes, on the local backend.

- deferrable: the task defers, a separate `airflow triggerer` process runs the trigger (tasks run
  through `airflow dags test --use-executor`, i.e. LocalExecutor workers reporting to a real
  api-server), the task resumes and completes; a passing execution_timeout while deferred cancels;
- sync: SIGTERM to the task's process (what Airflow's supervisor sends on a kill) and a passing
  execution_timeout both cancel the remote work, and no replica process is left;
- a try whose worker dies mid-wait (SIGKILL, so no `on_kill`) is retried by Airflow, and the
  retry adopts the running work: no duplicate.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from airflow_env import ROOT, AirflowEnv, new_airflow, run_to_end, stop, triggerer_and_api_server, wait_until

from shared.backends.local import LocalBackend
from shared.status import State

pytestmark = pytest.mark.e2e

DAGS = '''
"""Test DAGs for the Kubeflow provider (written by tests/test_airflow_lifecycle.py)."""

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider.operators.kubeflow import PyTorchJobOperator
from airflow_provider.sensors.kubeflow import KubeflowRunSensor

REPLICA = %(replica)r
CONF = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False}


def sleeper(name):
    command = ["python", REPLICA, "--pid-dir", "${params.pid_dir}", "--sleep", "${params.sleep}"]
    container = {"name": "pytorch", "image": "python:3.11-slim", "command": command}
    master = {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {"containers": [container]}}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": master}},
    }


def job(task_id, sleep, **kwargs):
    params = {"pid_dir": "{{ dag_run.conf['pid_dir'] }}/" + task_id, "sleep": str(sleep)}
    return PyTorchJobOperator(task_id=task_id, spec=sleeper(task_id.replace("_", "-")), params=params, **kwargs)


with DAG("kft_deferred", **CONF):
    job("quick", 3, deferrable=True)
    job("overdue", 300, deferrable=True, execution_timeout=timedelta(seconds=8))
    # Waits on the work `quick` started, by its key (dag_id/task_id/run_id/map_index).
    KubeflowRunSensor(
        task_id="sensor", key="kft_deferred/quick/{{ run_id }}/-1", kind="training-job", poke_interval=1, deferrable=True
    )

with DAG("kft_mark_failed", **CONF):
    job("marked", 300, deferrable=True)

with DAG("kft_kill", **CONF):
    job("killed", 300, deferrable=False)

with DAG("kft_timeout", **CONF):
    job("overdue", 300, deferrable=False, execution_timeout=timedelta(seconds=8))

with DAG("kft_retry", **CONF):
    job("adopter", 20, deferrable=False, retries=1, retry_delay=timedelta(seconds=1))
'''


def make_airflow(root: Path) -> AirflowEnv:
    env = new_airflow(root)
    (env.dags_folder / "kft_lifecycle.py").write_text(DAGS % {"replica": str(ROOT / "tests/scripts/replica.py")})
    return env


def conf(root: Path) -> str:
    return json.dumps({"pid_dir": str(root / "pids")})


def pids(root: Path, task_id: str) -> list[int]:
    folder = root / "pids" / task_id
    return [int(p.name) for p in folder.iterdir()] if folder.is_dir() else []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def local_runs(env: AirflowEnv, name: str) -> list:
    backend = LocalBackend(env.state_dir)
    return [(h, backend.status(h)) for h in backend.list() if h.name == name]


def assert_cancelled_and_gone(env: AirflowEnv, root: Path, task_id: str, name: str) -> None:
    (handle, status), *others = local_runs(env, name)
    assert not others
    assert status.state is State.CANCELLED, status
    replicas = pids(root, task_id)
    assert replicas, "the replica never started"
    wait_until(lambda: not any(alive(p) for p in replicas), 10, "the cancelled replicas to exit")
    supervisor = int((env.state_dir / "runs" / handle.id / "supervisor.pid").read_text())
    wait_until(lambda: not alive(supervisor), 10, "the run's supervisor to exit")


@pytest.fixture(scope="module")
def executor_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowEnv, Path, str]]:
    """An Airflow whose tasks run in LocalExecutor workers, with a triggerer and an api-server."""
    root = tmp_path_factory.mktemp("executor-airflow")
    env = make_airflow(root)
    with triggerer_and_api_server(env) as api:
        yield env, root, api


def test_deferred_task_resumes_from_a_separate_triggerer(executor_airflow: tuple[AirflowEnv, Path, str]) -> None:
    env, tmp_path, _ = executor_airflow
    _, output = run_to_end(env, "dags", "test", "kft_deferred", "-c", conf(tmp_path), "--use-executor", log_name="deferred.log")
    assert "running trigger in line" not in output  # the in-process path of plain `dags test`
    assert env.task_states("kft_deferred") == {"quick": "success", "overdue": "failed", "sensor": "success"}, output[-4000:]

    logs = env.home / "logs" / "dag_id=kft_deferred"
    trigger_logs = {p.parent.name: p.read_text() for p in logs.rglob("attempt=1.log.trigger.*.log")}
    # Written by the triggerer process: our trigger followed the work there and fired the events.
    assert "PyTorchJob quick" in trigger_logs["task_id=quick"] and "'event': 'success'" in trigger_logs["task_id=quick"]
    assert "'event': 'timeout'" in trigger_logs["task_id=overdue"]

    quick = env.xcoms("kft_deferred", "quick")
    assert quick["state"] == "SUCCEEDED" and quick["remote_id"].startswith("quick-")
    sensed = env.xcoms("kft_deferred", "sensor")["return_value"]
    assert sensed["id"] == quick["remote_id"] and sensed["state"] == "SUCCEEDED"
    (_, status), = local_runs(env, "quick")
    assert status.state is State.SUCCEEDED
    # execution_timeout held while deferred: the trigger's deadline cancelled the work.
    assert_cancelled_and_gone(env, tmp_path, "overdue", "overdue")
    overdue_log = next(logs.rglob("task_id=overdue/attempt=1.log")).read_text()
    assert "execution_timeout" in overdue_log


def test_kill_and_execution_timeout_cancel_the_remote_work(tmp_path: Path) -> None:
    killed_root, timeout_root = tmp_path / "kill", tmp_path / "timeout"
    killed_env, timeout_env = make_airflow(killed_root), make_airflow(timeout_root)
    killed = killed_env.start("dags", "test", "kft_kill", "-c", conf(killed_root), log_name="dags-test.log")
    overdue = timeout_env.start("dags", "test", "kft_timeout", "-c", conf(timeout_root), log_name="dags-test.log")
    try:
        wait_until(lambda: pids(killed_root, "killed"), 120, "the job of the task to kill to start")
        # What Airflow's supervisor does to kill a task: SIGTERM to the task's process.
        os.kill(killed.pid, signal.SIGTERM)
        killed.wait(60)
        overdue.wait(120)
    finally:
        stop(killed)
        stop(overdue)
    assert_cancelled_and_gone(killed_env, killed_root, "killed", "killed")
    assert "cancelled PyTorchJob" in killed_env.log("dags-test.log")
    assert timeout_env.task_states("kft_timeout") == {"overdue": "failed"}
    assert_cancelled_and_gone(timeout_env, timeout_root, "overdue", "overdue")
    assert "cancelled PyTorchJob" in timeout_env.log("dags-test.log")


def test_marking_a_deferred_task_failed_cancels_its_work(executor_airflow: tuple[AirflowEnv, Path, str]) -> None:
    """The user's "mark failed" on a deferred task: the triggerer calls the trigger's on_kill (3.3+)."""
    env, tmp_path, api = executor_airflow
    run = env.start("dags", "test", "kft_mark_failed", "-c", conf(tmp_path), "--use-executor", log_name="marked.log")
    try:
        wait_until(lambda: env.task_states("kft_mark_failed") == {"marked": "deferred"}, 120, "the task to defer")
        # Only a trigger that a triggerer runs can get on_kill: wait until one has picked it up.
        wait_until(
            lambda: env.query(
                "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id"
                " WHERE ti.dag_id = 'kft_mark_failed' AND t.triggerer_id IS NOT NULL"
            ),
            120,
            "the triggerer to pick up the trigger",
        )
        (run_id,), = env.query("SELECT run_id FROM dag_run WHERE dag_id = 'kft_mark_failed'")
        url = f"{api}/api/v2/dags/kft_mark_failed/dagRuns/{quote(run_id, safe='')}/taskInstances/marked"
        request = urllib.request.Request(
            url, data=b'{"new_state": "failed"}', method="PATCH", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        wait_until(lambda: local_runs(env, "marked")[0][1].terminal, 60, "the marked task's work to end")
        run.wait(120)
    finally:
        stop(run)
    assert_cancelled_and_gone(env, tmp_path, "marked", "marked")
    trigger_log = next((env.home / "logs").rglob("task_id=marked/attempt=1.log.trigger.*.log")).read_text()
    assert "cancelled PyTorchJob marked" in trigger_log


def test_retry_adopts_the_work_of_a_try_whose_worker_died(executor_airflow: tuple[AirflowEnv, Path, str]) -> None:
    env, tmp_path, _ = executor_airflow
    run = env.start("dags", "test", "kft_retry", "-c", conf(tmp_path), "--use-executor", log_name="retry.log")
    try:
        wait_until(lambda: pids(tmp_path, "adopter"), 120, "the first try's job to start")
        (handle, status), = local_runs(env, "adopter")
        assert not status.terminal
        # The task's own process: the task runner titles it `airflow worker -- <ti id>` (the executor's
        # workers, which host the supervisors, are titled `airflow worker -- LocalExecutor: ...`).
        title = re.compile(r"airflow worker -- [0-9a-f-]{36}")
        worker = next(p for p in psutil.Process(run.pid).children(recursive=True) if title.fullmatch((p.cmdline() or [""])[0]))
        worker.kill()  # SIGKILL: no on_kill, nothing cancelled; Airflow fails the try and retries
        run.wait(240)
    finally:
        stop(run)
    output = env.log("retry.log")
    assert env.task_states("kft_retry") == {"adopter": "success"}, output[-4000:]
    assert env.query("SELECT try_number FROM task_instance WHERE dag_id = 'kft_retry'") == [(2,)]
    xcoms = env.xcoms("kft_retry", "adopter")  # the second try's XComs (Airflow clears them per try)
    assert xcoms["adopted"] is True and xcoms["remote_id"] == handle.id
    (_, status), = local_runs(env, "adopter")  # one run directory: nothing was submitted twice
    assert status.state is State.SUCCEEDED
    assert len(pids(tmp_path, "adopter")) == 1
