"""The provider's task life cycle in real Airflow processes, on the local backend.

- deferrable: the task defers, a separate `airflow triggerer` process runs the trigger (DAG runs are
  triggered through the REST API and run by a real `airflow scheduler`, its LocalExecutor workers
  reporting to a real api-server), the task resumes and completes; a passing execution_timeout while
  deferred cancels;
- a user's stop cancels: marking a running task failed through the REST API (sync: the supervisor's
  SIGTERM, and the server says the task instance is no longer running; deferred: the trigger's
  `on_kill`, Airflow 3.3+ — before, the work is left running, as the task log says), and a passing
  execution_timeout cancels the remote work too, and no replica process is left;
- a worker going away is not a stop: a try whose worker dies mid-wait (SIGKILL, so no `on_kill`) or
  whose process gets SIGTERM while the server still has it running (a worker shutdown) fails, and
  the retry adopts the running work: no duplicate (Airflow 3.0 retries no try killed by a signal:
  that work is left running, never cancelled);
- a clear reruns: after a run, the REST call of the UI's Clear: the first try after it submits a
  new attempt of a succeeded task, unless `rerun_on_clear=False`; a retry within that new sequence
  still adopts.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from airflow_env import ROOT, AirflowEnv, Deployment, deployment, new_airflow, run_to_end, wait_until
from packaging.version import Version

from airflow_provider.compat import AIRFLOW_VERSION, TRIGGER_ON_KILL
from shared.backends.local import LocalBackend
from shared.status import State

pytestmark = pytest.mark.e2e
CANARY = "CANARY-pw-4be1d2"  # the password of the `kft_masked` connection

DAGS = '''
"""Test DAGs for the Kubeflow provider (written by tests/test_airflow_lifecycle.py)."""

from datetime import datetime, timedelta
from pathlib import Path

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


def job(task_id, sleep, operator=PyTorchJobOperator, **kwargs):
    values = {"pid_dir": "{{ dag_run.conf['pid_dir'] }}/" + task_id, "sleep": str(sleep)}
    return operator(task_id=task_id, spec=sleeper(task_id.replace("_", "-")), spec_params=values, **kwargs)


class CrashAfterSubmit(PyTorchJobOperator):
    """Fault injection: the first try that sees an attempt fails right after submitting or adopting
    it, as if its worker were lost there: nothing is cancelled."""

    def _submitted(self, context, options, submission):
        status = super()._submitted(context, options, submission)
        marker = Path(context["dag_run"].conf["pid_dir"]) / f"crashed-{self.task_id}-{submission.handle.attempt}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError("injected: the worker was lost right after submitting")
        return status


with DAG("kft_deferred", **CONF):
    # Its connection holds a secret (an MLflow password), which the trigger masks as it reads it.
    job("quick", 3, deferrable=True, kubeflow_conn_id="kft_masked")
    job("overdue", 300, deferrable=True, execution_timeout=timedelta(seconds=8))
    # Waits on the work `quick` started, by its key (dag_id/task_id/run_id/map_index).
    KubeflowRunSensor(
        task_id="sensor", key="kft_deferred/quick/{{ run_id }}/-1", kind="training-job", poke_interval=1, deferrable=True
    )

with DAG("kft_mark_failed", **CONF):
    job("marked", 300, deferrable=True)
    job("marked_sync", 300, deferrable=False)

with DAG("kft_timeout", **CONF):
    job("overdue", 300, deferrable=False, execution_timeout=timedelta(seconds=8))

with DAG("kft_retry", **CONF):
    job("adopter", 20, deferrable=False, retries=1, retry_delay=timedelta(seconds=1))
    job("survivor", 20, deferrable=False, retries=1, retry_delay=timedelta(seconds=1))

with DAG("kft_lineage", **CONF):
    job("traced", 1, deferrable=False)

with DAG("kft_clear", **CONF):
    job("trained", 1, deferrable=False)
    job("kept", 1, deferrable=False, rerun_on_clear=False)
    job("flaky", 1, CrashAfterSubmit, deferrable=False, retries=1, retry_delay=timedelta(seconds=1))
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
def deployed(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[tuple[Deployment, Path]]:
    """An Airflow as deployed (scheduler with LocalExecutor workers, triggerer, api-server), with a
    connection `kft_masked` whose MLflow tracking URI carries a password."""
    root = tmp_path_factory.mktemp("deployed-airflow")
    env = make_airflow(root)
    masked_uri = mlflow_server.replace("http://", f"http://kft:{CANARY}@")
    env.set_connection("kft_masked", "kubeflow", {"mlflow_tracking_uri": masked_uri, "state_dir": str(env.state_dir)})
    with deployment(env) as deployed:
        yield deployed, root


def run_conf(root: Path) -> dict[str, str]:
    return {"pid_dir": str(root / "pids")}


def test_deferred_task_resumes_from_a_separate_triggerer(deployed: tuple[Deployment, Path]) -> None:
    airflow, tmp_path = deployed
    env = airflow.env
    run_id = airflow.trigger("kft_deferred", run_conf(tmp_path))
    airflow.wait_for_run("kft_deferred", run_id)
    states = env.task_states("kft_deferred")
    assert states == {"quick": "success", "overdue": "failed", "sensor": "success"}, env.log("scheduler.log")[-4000:]

    logs = env.home / "logs" / "dag_id=kft_deferred"
    trigger_logs = {p.parent.name: p.read_text() for p in logs.rglob("attempt=1.log.trigger.*.log")}
    # Written by the triggerer process: our trigger followed the work there and fired the events.
    assert "PyTorchJob quick" in trigger_logs["task_id=quick"] and "'event': 'success'" in trigger_logs["task_id=quick"]
    assert "'event': 'timeout'" in trigger_logs["task_id=overdue"]
    # The triggerer read `kft_masked` and masked its password (on Airflow 3.0 through the one path
    # its trigger runner allows: a mask_secret on the event loop fails the trigger there).
    # Logs only: reading the database's own files here would break SQLite's locks (see AirflowEnv.query).
    logged = [*(env.home / "logs").rglob("*.log"), *env.home.glob("*.log")]
    assert not [str(p) for p in logged if CANARY.encode() in p.read_bytes()]
    assert env.query("SELECT count(*) FROM xcom WHERE CAST(value AS TEXT) LIKE ?", f"%{CANARY}%") == [(0,)]

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


def test_execution_timeout_cancels_the_remote_work_of_a_sync_task(tmp_path: Path) -> None:
    env = make_airflow(tmp_path)
    code, output = run_to_end(env, "dags", "test", "kft_timeout", "-c", conf(tmp_path), log_name="dags-test.log")
    assert env.task_states("kft_timeout") == {"overdue": "failed"}, output[-4000:]
    assert_cancelled_and_gone(env, tmp_path, "overdue", "overdue")
    assert "cancelled PyTorchJob" in output


def test_openlineage_events_carry_the_work_and_its_mlflow_run(tmp_path: Path, mlflow_server: str) -> None:
    events_file = tmp_path / "openlineage.jsonl"
    env = make_airflow(tmp_path)
    env.extra_env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps({"type": "file", "log_file_path": str(events_file), "append": True})
    env.set_connection("kubeflow_default", "kubeflow", {"mlflow_tracking_uri": mlflow_server, "state_dir": str(env.state_dir)})
    code, output = run_to_end(env, "dags", "test", "kft_lineage", "-c", conf(tmp_path), log_name="lineage.log")
    assert env.task_states("kft_lineage") == {"traced": "success"}, output[-4000:]
    xcoms = env.xcoms("kft_lineage", "traced")
    wait_until(events_file.exists, 30, "OpenLineage events")
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    (complete,) = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == "kft_lineage.traced"]
    kubeflow = complete["job"]["facets"].get("kubeflow")
    assert kubeflow and kubeflow["resource"] == "PyTorchJob" and kubeflow["name"] == xcoms["name"], complete
    assert complete["run"]["facets"]["externalQuery"]["externalQueryId"] == xcoms["remote_id"]
    (mlflow_run,) = complete["outputs"]
    assert mlflow_run["namespace"] == mlflow_server
    assert mlflow_run["name"] == f"experiments/{xcoms['mlflow_experiment_id']}/runs/{xcoms['mlflow_run_id']}"


def test_marking_a_running_task_failed_cancels_its_work(deployed: tuple[Deployment, Path]) -> None:
    """The user's "mark failed", through the REST API the UI calls, on a deferred and a sync task."""
    airflow, tmp_path = deployed
    env, api = airflow.env, airflow.api
    run_id = airflow.trigger("kft_mark_failed", run_conf(tmp_path))
    wait_until(lambda: env.task_states("kft_mark_failed").get("marked") == "deferred", 120, "the task to defer")
    wait_until(lambda: pids(tmp_path, "marked_sync"), 120, "the sync task's job to start")
    # Only a trigger that a triggerer runs can get on_kill: wait until one has picked it up.
    wait_until(
        lambda: env.query(
            "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id"
            " WHERE ti.dag_id = 'kft_mark_failed' AND t.triggerer_id IS NOT NULL"
        ),
        120,
        "the triggerer to pick up the trigger",
    )
    for task_id in ("marked", "marked_sync"):
        url = f"{api}/api/v2/dags/kft_mark_failed/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        request = urllib.request.Request(
            url, data=b'{"new_state": "failed"}', method="PATCH", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    wait_until(lambda: local_runs(env, "marked-sync")[0][1].terminal, 60, "the sync task's work to end")
    if TRIGGER_ON_KILL:
        wait_until(lambda: local_runs(env, "marked")[0][1].terminal, 60, "the deferred task's work to end")
    airflow.wait_for_run("kft_mark_failed", run_id, 120)
    logs = env.home / "logs" / "dag_id=kft_mark_failed"
    # sync: the supervisor's SIGTERM, and the server no longer has the task instance running
    assert_cancelled_and_gone(env, tmp_path, "marked_sync", "marked-sync")
    sync_log = next(logs.rglob("task_id=marked_sync/attempt=1.log")).read_text()
    assert "SIGTERM and the task instance is failed on the server: cancelling the work" in sync_log
    deferred_log = next(logs.rglob("task_id=marked/attempt=1.log")).read_text()
    if TRIGGER_ON_KILL:
        assert_cancelled_and_gone(env, tmp_path, "marked", "marked")
        trigger_log = next(logs.rglob("task_id=marked/attempt=1.log.trigger.*.log")).read_text()
        assert "cancelled PyTorchJob marked" in trigger_log
    else:  # Airflow before 3.3 has no trigger on_kill: the work is left running, and the log says so
        (handle, status), = local_runs(env, "marked")
        assert not status.terminal
        assert "trigger on_kill needs Airflow 3.3" in deferred_log
        LocalBackend(env.state_dir).cancel(handle)


def test_retry_adopts_the_work_of_a_try_whose_worker_died_or_shut_down(deployed: tuple[Deployment, Path]) -> None:
    airflow, tmp_path = deployed
    env = airflow.env
    run_id = airflow.trigger("kft_retry", run_conf(tmp_path))
    wait_until(lambda: pids(tmp_path, "adopter") and pids(tmp_path, "survivor"), 120, "the first tries' jobs to start")
    handles = {}
    for task_id in ("adopter", "survivor"):
        (handles[task_id], status), = local_runs(env, task_id)
        assert not status.terminal
    # The tasks' own processes: the parents of the local runs' supervisors, which the operator
    # starts from the task process, titled `airflow worker -- <ti id>` (setproctitle may overwrite
    # the process's environment with the title, and psutil may split it on spaces).
    workers = {}
    for task_id, handle in handles.items():
        supervisor = int((env.state_dir / "runs" / handle.id / "supervisor.pid").read_text())
        workers[task_id] = psutil.Process(supervisor).parent()
        assert " ".join(workers[task_id].cmdline()).startswith("airflow worker -- "), workers[task_id]
    workers["adopter"].kill()  # SIGKILL: no on_kill, nothing cancelled; Airflow fails the try and retries
    workers["survivor"].terminate()  # SIGTERM while the server has it running: a worker shutting down
    airflow.wait_for_run("kft_retry", run_id)
    # A try whose task process a signal killed is retried from Airflow 3.1.1 on (apache/airflow#55767);
    # Airflow 3.0's supervisor reports it failed, and no try follows: the work is left running.
    killed_is_retried = Version(AIRFLOW_VERSION) >= Version("3.1.1")
    retried = ("adopter", "survivor") if killed_is_retried else ("survivor",)
    states = env.task_states("kft_retry")
    expected = {"adopter": "success" if killed_is_retried else "failed", "survivor": "success"}
    assert states == expected, env.log("scheduler.log")[-4000:]
    assert env.query("SELECT task_id, try_number FROM task_instance WHERE dag_id = 'kft_retry' ORDER BY task_id") == [
        ("adopter", 2 if killed_is_retried else 1),
        ("survivor", 2),
    ]
    for task_id in retried:
        xcoms = env.xcoms("kft_retry", task_id)  # the second try's XComs (Airflow clears them per try)
        assert xcoms["adopted"] is True and xcoms["remote_id"] == handles[task_id].id
    for task_id in ("adopter", "survivor"):
        # One run directory: nothing was submitted twice, nothing cancelled; the work ran to its end.
        wait_until(lambda task_id=task_id: local_runs(env, task_id)[0][1].terminal, 60, f"{task_id}'s work to end")
        (_, status), = local_runs(env, task_id)
        assert status.state is State.SUCCEEDED
        assert len(pids(tmp_path, task_id)) == 1
    first_try = next((env.home / "logs").rglob("dag_id=kft_retry/**/task_id=survivor/attempt=1.log")).read_text()
    assert "a worker shutting down, not a user's stop" in first_try


def test_a_clear_reruns_succeeded_work_and_a_retry_after_it_still_adopts(deployed: tuple[Deployment, Path]) -> None:
    """The UI's Clear (its REST call) on a finished run; the scheduler runs the cleared tasks."""
    airflow, tmp_path = deployed
    env, api = airflow.env, airflow.api
    run_id = airflow.trigger("kft_clear", run_conf(tmp_path))
    airflow.wait_for_run("kft_clear", run_id)
    states = env.task_states("kft_clear")
    assert states == dict.fromkeys(("trained", "kept", "flaky"), "success"), env.log("scheduler.log")[-4000:]
    env.api(api, "POST", "/api/v2/dags/kft_clear/clearTaskInstances",
            {"dag_run_id": run_id, "only_failed": False, "dry_run": False, "reset_dag_runs": True})
    wait_until(lambda: airflow.run_state("kft_clear", run_id) != "success", 30, "the clear to reset the run")
    assert airflow.wait_for_run("kft_clear", run_id) == "success"
    assert env.task_states("kft_clear") == dict.fromkeys(("trained", "kept", "flaky"), "success")
    # The clear opened a new sequence of tries: max_tries = try_number + retries.
    assert env.query("SELECT try_number, max_tries FROM task_instance WHERE task_id = 'trained'") == [(2, 1)]

    def attempts(name: str) -> list[tuple[int, State]]:
        return sorted((h.attempt, status.state) for h, status in local_runs(env, name))

    # A cleared success runs again: a new attempt, with its own replica.
    assert attempts("trained") == [(1, State.SUCCEEDED), (2, State.SUCCEEDED)]
    assert len(pids(tmp_path, "trained")) == 2 and env.xcoms("kft_clear", "trained")["adopted"] is False
    # rerun_on_clear=False: the old success is handed back.
    assert attempts("kept") == [(1, State.SUCCEEDED)]
    assert len(pids(tmp_path, "kept")) == 1 and env.xcoms("kft_clear", "kept")["adopted"] is True
    # Each sequence's first try submitted and crashed; its retry adopted that attempt instead of a third.
    assert attempts("flaky") == [(1, State.SUCCEEDED), (2, State.SUCCEEDED)]
    assert len(pids(tmp_path, "flaky")) == 2
    assert env.query("SELECT try_number FROM task_instance WHERE task_id = 'flaky'") == [(4,)]
    flaky = env.xcoms("kft_clear", "flaky")
    assert flaky["adopted"] is True and flaky["attempt"] == 2
