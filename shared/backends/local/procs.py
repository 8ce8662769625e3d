"""Child processes of a local run: one process group each, output read line by line, killable as a whole.

Every replica, trial or pipeline executor starts in a session of its own so that a cancel (or an
early-stopped trial) takes its grandchildren with it. Each group is recorded in the run's `procs/`
folder while it lives, so that a canceller in another process can still kill it if the supervisor
itself has died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PYTHON_NAMES = {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}


def resolve_command(argv: Sequence[str]) -> list[str]:
    """Locally, a bare `python`/`python3` means the interpreter running kubeflow-tasks."""
    argv = list(argv)
    if argv and argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: ours, with this interpreter's bin first on PATH, plus `extra`."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Child:
    """A child process in its own process group whose merged stdout/stderr goes to `on_line`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str],
        on_line: Callable[[str], None],
        registry: Path | None = None,
    ):
        self.argv = resolve_command(argv)
        self._registry = registry
        self.proc = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self.pid = self.proc.pid
        if registry is not None:
            registry.mkdir(parents=True, exist_ok=True)
            (registry / str(self.pid)).write_text(str(self.pid))
        self._reader = threading.Thread(target=self._read, args=(on_line,), daemon=True)
        self._reader.start()

    def _read(self, on_line: Callable[[str], None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            on_line(line.rstrip("\n"))
        self.proc.stdout.close()

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            self._finish()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self._finish()
        return code

    def _finish(self) -> None:
        # All output is read before the exit is reported, so metrics printed last are never lost.
        self._reader.join(timeout=5)
        if self._registry is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._registry / str(self.pid)).unlink()

    def kill_group(self, grace: float = 2.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after `grace` seconds."""
        kill_group(self.pid, grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace + 1)
        self._finish()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only members are zombies is as good as gone.
    return any(_state(pid) not in ("Z", None) for pid in group_members(pgid))


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat and stat[2] == pgid:
                members.append(int(entry))
    return members


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, read from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _state(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[0] if stat else None


def pid_alive(pid: int) -> bool:
    state = _state(pid)
    return state is not None and state != "Z"


def kill_group(pgid: int, grace: float = 2.0) -> None:
    """SIGTERM a process group, wait up to `grace` seconds for it to go, then SIGKILL it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def kill_registered(registry: Path, grace: float = 2.0) -> None:
    """Kill every process group recorded in `registry` (used when the supervisor is gone)."""
    if not registry.is_dir():
        return
    for entry in registry.iterdir():
        if entry.name.isdigit():
            kill_group(int(entry.name), grace)
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
