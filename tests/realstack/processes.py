"""Start, record and stop the stack's processes without ever signalling a stranger.

Every component runs in its own session (process group) with its log in the stack's work folder.
What we started is recorded as pid plus start time, so `down` from another process (or after a
reboot, when pids are recycled) only signals a process that is provably the one we started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    create_time: float
    log: str

    def to_json(self) -> dict:
        return asdict(self)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, cmd: list[str], logs: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[subprocess.Popen, Started]:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
    return proc, Started(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log))


def alive(started: Started) -> psutil.Process | None:
    """The process if it is still the one we started (same pid and start time), else None."""
    try:
        proc = psutil.Process(started.pid)
        if abs(proc.create_time() - started.create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def stop(started: Started, grace: float = 10.0) -> None:
    """SIGTERM our process group, SIGKILL what is left after `grace` seconds; strangers are left alone."""
    proc = alive(started)
    if proc is None:
        return
    members = [proc, *proc.children(recursive=True)]
    try:
        os.killpg(started.pid, signal.SIGTERM)  # the group we created with start_new_session
    except ProcessLookupError:
        pass
    _, left = psutil.wait_procs(members, timeout=grace)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    try:
        os.waitpid(started.pid, os.WNOHANG)  # reap our own child, when it is ours
    except ChildProcessError:
        pass


def wait_ready(what: str, check: Callable[[], bool], started: Started, timeout: float) -> None:
    """Poll `check` until it holds; fail at once with the log's tail if the process died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if alive(started) is None:
            raise RuntimeError(f"{what} exited during start-up: {tail(started.log)}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet: connection refused, 503, ...
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s: {tail(started.log)}")


def tail(log: str, lines: int = 3) -> str:
    try:
        text = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
