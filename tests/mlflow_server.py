"""A real MLflow tracking server on loopback, shared by the whole test session.

Loaded as a pytest plugin (`pytest_plugins = ["tests.mlflow_server"]` in tests/conftest.py). The server
keeps its SQLite store and artifacts in a temporary directory, runs one uvicorn worker and no job
runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: otherwise it starts a handful of huey consumers),
and is stopped with its whole process group at the end of the session. Start-up takes ~10 s on two
cores, most of it importing MLflow and creating the tables.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_DEADLINE = 90.0  # ~10 s on an idle 2-core machine, 25-40 s while other suites run
# The server may run from another Python than the tests: the venv with Airflow 3.0 has SQLAlchemy 1.4,
# which the MLflow server's own store cannot use (its clients in the tests need no SQLAlchemy).
SERVER_PYTHON = os.environ.get("KUBEFLOW_TASKS_MLFLOW_SERVER_PYTHON") or sys.executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the CLI and its uvicorn worker), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tracking URI (http://127.0.0.1:<port>) of a fresh MLflow server."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = root / "server.log"
    command = [
        SERVER_PYTHON,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while not _healthy(uri):
            if time.monotonic() - started > START_DEADLINE:
                pytest.fail(f"MLflow server not healthy after {START_DEADLINE:.0f}s:\n{_tail(log)}")
            try:
                code = proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"MLflow server exited with code {code}:\n{_tail(log)}")
        print(f"MLflow server at {uri} ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        yield uri
    finally:
        _stop(proc)
