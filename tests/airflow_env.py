"""An isolated Airflow for tests: its own AIRFLOW_HOME, SQLite database and DAG folder.

Every Airflow command of a test runs as a real subprocess (`python -m airflow ...`) with the
environment built here, so nothing leaks between tests or into the user's ~/airflow.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class AirflowEnv:
    home: Path
    dags_folder: Path
    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # One SQLite file for the scheduler, api-server, triggerer and tasks: one writer at a time,
            # and on two busy cores a writer can wait longer than SQLite's default 5 s ("database is
            # locked", an api-server 500); wait up to 60 s instead.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}?timeout=60",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # LocalExecutor starts this many workers
            "AIRFLOW__API_AUTH__JWT_SECRET": "kubeflow-tasks-tests-only",
            "AIRFLOW__API_AUTH__JWT_ISSUER": "kubeflow-tasks-tests",  # Airflow 3.0 sends none, which PyJWT refuses
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "KUBEFLOW_TASKS_STATE_DIR": str(self.state_dir),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            **self.extra_env,
        }
        return env

    def airflow_json(self, *args: str) -> Any:
        """An Airflow command's `--output json` answer (Airflow 3.0 prints log lines before it)."""
        return json.loads(self.airflow(*args, "--output", "json").stdout.strip().splitlines()[-1])

    def set_connection(self, conn_id: str, conn_type: str, extra: Mapping[str, Any], **fields: str) -> None:
        """A connection through the standard AIRFLOW_CONN_<ID> variable (JSON form)."""
        self.extra_env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({"conn_type": conn_type, "extra": dict(extra), **fields})

    def airflow(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
        return proc

    def start(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        """A long-running Airflow process (scheduler, triggerer, dags test) in its own session, output to a file."""
        out = open(self.home / log_name, "wb")  # noqa: SIM115 - closed by stop()
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def api(self, base_url: str, method: str, path: str, body: Mapping[str, Any]) -> Any:
        """One call of the api-server's public REST API (no login: see `deployment`)."""
        request = urllib.request.Request(
            base_url + path, data=json.dumps(body).encode(), method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def log(self, log_name: str) -> str:
        path = self.home / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def migrate(self) -> None:
        self.airflow("db", "migrate", timeout=300)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the database, one short-lived connection per query.

        Never read the database's files any other way while Airflow runs, not even to grep them:
        closing such a file drops every POSIX lock this process holds on it, SQLite's included (in
        SQLite's "How To Corrupt An SQLite Database File"); after a test grepped `airflow.db-wal`,
        later reads here failed with "database disk image is malformed" or saw stale rows.
        """
        with closing(sqlite3.connect(self.db_path)) as db:
            return db.execute(sql, params).fetchall()

    def xcoms(self, dag_id: str, task_id: str) -> dict[str, Any]:
        """The newest run's XComs of a task, as {key: value} (values are stored as JSON)."""
        rows = self.query(
            "SELECT key, value FROM xcom WHERE dag_id = ? AND task_id = ? ORDER BY timestamp",
            dag_id,
            task_id,
        )
        return {key: _json(value) for key, value in rows}

    def asset_events(self, uri: str) -> list[dict[str, Any]]:
        """The events of the asset with this URI, oldest first, each as {"extra": ..., "source_task_id": ...}."""
        rows = self.query(
            "SELECT e.extra, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri = ? ORDER BY e.timestamp",
            uri,
        )
        return [{"extra": _json(extra), "source_task_id": task} for extra, task in rows]

    def task_states(self, dag_id: str) -> dict[str, str]:
        return dict(self.query("SELECT task_id, state FROM task_instance WHERE dag_id = ?", dag_id))


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM the process's session, then SIGKILL what is left after `grace` seconds.

    The whole group, even when the leader has exited: a scheduler can leave idle LocalExecutor
    workers behind.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def run_to_end(env: AirflowEnv, *args: str, log_name: str, timeout: float = 300) -> tuple[int, str]:
    """Run an Airflow command in its own session to its end; (exit code, output).

    Output goes to a file, not a pipe: processes it leaves behind would hold a pipe open.
    """
    proc = env.start(*args, log_name=log_name)
    try:
        code = proc.wait(timeout)
    finally:
        stop(proc)
    return code, env.log(log_name)


@functools.cache
def _migrated_db() -> Path:
    """One `airflow db migrate` per test session (about 15 s); every test copies the result."""
    home = Path(tempfile.mkdtemp(prefix="kft-airflow-template-"))
    AirflowEnv(home, home / "dags", home / "state").migrate()
    return home / "airflow.db"


def new_airflow(root: Path, dags_folder: Path | None = None, **extra_env: str) -> AirflowEnv:
    """A migrated Airflow under `root` (its own database copy), reading DAGs from `dags_folder`."""
    home = root / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(_migrated_db(), home / "airflow.db")
    dags = dags_folder or root / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    return AirflowEnv(home, dags, root / "state", dict(extra_env))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Deployment:
    """A running Airflow: its api-server's URL and its scheduler process (see `deployment`)."""

    env: AirflowEnv
    api: str
    scheduler: subprocess.Popen[bytes]

    def trigger(self, dag_id: str, conf: Mapping[str, Any], run_id: str | None = None) -> str:
        """Unpause the DAG and start a run through the REST API, as the UI's Trigger does; its run id."""
        self.env.api(self.api, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        body = {"dag_run_id": run_id or f"kft__{dag_id}", "logical_date": None, "conf": dict(conf)}
        return self.env.api(self.api, "POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.env.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 240) -> str:
        """The run's final state (success or failed), once the scheduler has it."""

        def finished() -> str | None:
            if self.scheduler.poll() is not None:
                raise AssertionError(f"the scheduler exited: {self.env.log('scheduler.log')[-3000:]}")
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return wait_until(finished, timeout, f"DAG run {dag_id}/{run_id} to finish", interval=0.5)


@contextmanager
def deployment(env: AirflowEnv) -> Iterator[Deployment]:
    """An Airflow as deployed: `airflow scheduler` (LocalExecutor workers), `airflow triggerer` and
    the `airflow api-server` the workers report to, sharing one database.

    DAGs run as a user runs them: triggered through the REST API, scheduled by the scheduler, their
    deferred tasks resumed by the separate triggerer. (Not `airflow dags test --use-executor`: on
    Airflow 3.0 its loop reads task states from a session it never expires, so it fails a task that
    the executor reports finished before the loop sees the new state — "task state changed
    externally"; fixed in 3.1+ by apache/airflow#59314.) The DAGs are serialized first, the
    scheduler's input. Yields the `Deployment`; its public API needs no login here (simple auth
    manager, everyone admin), so a test can act as a user would.
    """
    port = free_port()
    env.extra_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
    env.extra_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
    env.airflow("dags", "reserialize")
    triggerer = env.start("triggerer", log_name="triggerer.log")
    api = env.start("api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", log_name="api-server.log")
    scheduler = env.start("scheduler", log_name="scheduler.log")

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2):
                return True
        except OSError:
            if api.poll() is not None:
                raise AssertionError(f"api-server exited: {env.log('api-server.log')[-3000:]}") from None
            return False

    try:
        wait_until(healthy, 180, "the api-server to answer")
        yield Deployment(env, f"http://127.0.0.1:{port}", scheduler)
    finally:
        stop(scheduler)
        stop(triggerer)
        stop(api)
