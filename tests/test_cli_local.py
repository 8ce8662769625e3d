"""The CLI on the local backend, end to end: real supervisor, real replica processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from waiting import wait_until

from shared.backends.local import procs
from shared.backends.local.store import Store
from shared.cli import main

WAITER = """
import os, sys, time
from pathlib import Path
here = Path(sys.argv[1])
with open(here / "starts", "a") as fh:
    fh.write(f"{os.environ['RANK']} {os.getpid()}\\n")
print("replica up", os.environ["RANK"], flush=True)
deadline = time.monotonic() + 60
while not (here / "release").exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
sys.exit(int((here / "release").read_text() or 0))
"""


def pytorchjob(tmp_path: Path, name: str = "cli-job", workers: int = 0, restart: str = "Never") -> Path:
    """A PyTorchJob manifest whose replicas wait for `release` in tmp_path and exit with its content."""
    (tmp_path / "waiter.py").write_text(WAITER)
    container = {
        "name": "pytorch",
        "image": "python:3.11-slim",
        "command": ["python", str(tmp_path / "waiter.py"), str(tmp_path)],
    }
    replica = {"replicas": 1, "restartPolicy": restart, "template": {"spec": {"containers": [container]}}}
    specs = {"Master": replica}
    if workers:
        specs["Worker"] = {**replica, "replicas": workers}
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": specs},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


class Cli:
    """`kubeflow-tasks` in a subprocess; stderr goes to a file so a test can watch progress lines."""

    def __init__(self, tmp_path: Path, *args: str):
        self.err_path = tmp_path / f"stderr-{time.monotonic_ns()}"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", *args], stdout=subprocess.PIPE, stderr=err, text=True
            )

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def finish(self, timeout: float = 60) -> tuple[int, dict]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, json.loads(out) if out.strip() else {}


def started(tmp_path: Path) -> list[tuple[int, int]]:
    starts = tmp_path / "starts"
    if not starts.exists():
        return []
    return [tuple(map(int, line.split())) for line in starts.read_text().splitlines() if line.strip()]


def test_sigterm_cancels_the_work_and_leaves_no_process(tmp_path: Path, state_dir: Path):
    spec = pytorchjob(tmp_path, workers=2)
    run = Cli(tmp_path, "run", "training-job", "--spec", str(spec), "--key", "sigterm", "--output", "json")
    replicas = wait_until(lambda: len(started(tmp_path)) == 3 and started(tmp_path), what="3 replicas")
    supervisor_pid = Store(state_dir).run(next((state_dir / "runs").iterdir()).name).supervisor_pid()

    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    pids = [pid for _, pid in replicas] + [supervisor_pid]
    wait_until(lambda: not any(procs.pid_alive(p) for p in pids), timeout=5, what="all processes gone")
    assert time.monotonic() - t0 < 5
    code, result = run.finish()
    assert code == 1, run.err
    assert result["state"] == "CANCELLED"
    status = subprocess.run(
        [sys.executable, "-m", "shared.cli", "status", "--key", "sigterm", "--output", "json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(status.stdout)["state"] == "CANCELLED"


def test_same_key_adopts_while_running_and_retries_after_failure(tmp_path: Path, state_dir: Path):
    spec = pytorchjob(tmp_path)
    args = ("run", "training-job", "--spec", str(spec), "--key", "nightly", "--output", "json")
    first = Cli(tmp_path, *args)
    wait_until(lambda: started(tmp_path), what="the replica to start")
    second = Cli(tmp_path, *args)
    wait_until(lambda: "adopted" in second.err, what="the second run to adopt")
    (tmp_path / "release").write_text("1")  # the replica fails
    (code1, r1), (code2, r2) = first.finish(), second.finish()
    assert code1 == 1 and code2 == 1, (first.err, second.err)
    assert r1["id"] == r2["id"] and r2["adopted"] is True and r2["state"] == "FAILED"
    assert len(started(tmp_path)) == 1, "the adopting run must not start the work again"
    assert len(list((state_dir / "runs").iterdir())) == 1

    (tmp_path / "release").write_text("0")
    third = Cli(tmp_path, *args)
    code3, r3 = third.finish()
    assert code3 == 0, third.err
    assert r3["attempt"] == 2 and r3["id"] != r1["id"] and r3["state"] == "SUCCEEDED"
    assert len(list((state_dir / "runs").iterdir())) == 2

    # A finished success is returned as is: nothing runs again.
    fourth = Cli(tmp_path, *args)
    code4, r4 = fourth.finish()
    assert code4 == 0 and r4["id"] == r3["id"] and r4["adopted"] is True
    assert len(started(tmp_path)) == 2


def test_logs_status_list_and_cancel_commands(tmp_path: Path, state_dir: Path, capsys):
    spec = pytorchjob(tmp_path, name="detached")
    assert main(["run", "training-job", "--spec", str(spec), "--key", "d", "--detach", "--output", "json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["id"]
    wait_until(lambda: started(tmp_path), what="the replica to start")

    def log_has_line() -> bool:
        main(["logs", run_id])
        return "replica up 0" in capsys.readouterr().out

    wait_until(log_has_line, what="the replica's line in the log while it runs")
    assert main(["status", run_id, "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] in ("PENDING", "RUNNING")
    assert main(["list"]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["cancel", "--key", "d", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"
    pid = started(tmp_path)[0][1]
    wait_until(lambda: not procs.pid_alive(pid), timeout=5, what="the replica to be gone")


def test_timeout_cancels_the_work(tmp_path: Path, state_dir: Path):
    spec = pytorchjob(tmp_path, name="slow")
    run = Cli(tmp_path, "run", "training-job", "--spec", str(spec), "--timeout", "2s", "--output", "json")
    code, result = run.finish()
    assert code == 1, run.err
    assert result["state"] == "CANCELLED" and result["timed_out"] is True
    assert "deadline passed" in run.err
    for _, pid in started(tmp_path):
        assert not procs.pid_alive(pid)


def test_supervisor_death_is_reported_as_failure(tmp_path: Path, state_dir: Path, capsys):
    spec = pytorchjob(tmp_path, name="orphan")
    assert main(["run", "training-job", "--spec", str(spec), "--detach", "--output", "json", "--key", "o"]) == 0
    run_id = json.loads(capsys.readouterr().out)["id"]
    wait_until(lambda: started(tmp_path), what="the replica to start")
    run = Store(state_dir).run(run_id)
    os.kill(run.supervisor_pid(), signal.SIGKILL)
    wait_until(lambda: not procs.pid_alive(run.supervisor_pid()), what="the supervisor to die")
    assert main(["status", run_id, "--output", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "FAILED" and "supervisor" in status["message"]
    # Its replicas do not outlive it.
    wait_until(lambda: not procs.pid_alive(started(tmp_path)[0][1]), timeout=5, what="the orphaned replica to go")


@pytest.mark.parametrize(
    "args, field",
    [
        (["run", "training-job", "--spec", "{spec}", "--timeout", "soon"], "--timeout"),
        (["run", "training-job", "--spec", "{spec}", "--param", "novalue"], "--param"),
        (["run", "training-job", "--spec", "{spec}", "--backend", "mainframe"], "backend"),
        (["status"], "run_id"),
        (["status", "no-such-run"], "no-such-run"),
    ],
)
def test_bad_command_lines_exit_2_and_start_nothing(tmp_path, state_dir, capsys, args, field):
    spec = pytorchjob(tmp_path, name="never")
    code = main([a.replace("{spec}", str(spec)) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and field in err
    assert not (state_dir / "runs").exists()
