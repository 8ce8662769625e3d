"""Child processes of a local run: one process group each, output read line by line, killable as a whole.

Every replica, trial or pipeline executor starts in a session of its own so that a cancel (or an
early-stopped trial) takes its grandchildren with it. Each group is recorded in the run's `procs/`
folder while it lives, so that a canceller in another process can still kill it if the supervisor
itself has died.

Why identities and not bare PIDs: a PID is reused once its process is gone (after a reboot, at
once), so a recorded PID alone may name a stranger's process. A recorded `Identity` is the PID with
the process's start time (psutil); a process is signalled only when both match, or, for a group
whose leader is gone, when a member carries this run's marker variable (`RUN_MARKER`) in its
environment, which every process of a run inherits from its supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.mlflow_client import client_defaults

PYTHON_NAMES = {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}
RUN_MARKER = "KUBEFLOW_TASKS_LOCAL_RUN"  # the run directory, in the environment of every process of a run
_START_TOLERANCE = 0.05  # seconds; psutil's start times have clock-tick resolution (non-Linux fallback)
_user_umask = -1  # the umask the work's processes get (-1: inherit ours); see private_umask


def private_umask() -> None:
    """Make this process's own files private (0600/0700) while children keep the user's umask.

    Called by the supervisor: run directories hold logs and the MLflow hand-off, but the work's own
    output files are the user's business.
    """
    global _user_umask
    _user_umask = os.umask(0o077)


def resolve_command(argv: Sequence[str]) -> list[str]:
    """Locally, a bare `python`/`python3` means the interpreter running kubeflow-tasks."""
    argv = list(argv)
    if argv and argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: ours (without our MLflow client defaults, see
    `shared.mlflow_client`), with this interpreter's bin first on PATH, plus `extra`."""
    env = client_defaults.environ()
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass(frozen=True)
class Identity:
    """A process as we started it: its PID, its start in clock ticks since boot, and the boot.

    Why ticks and the boot id rather than psutil's `create_time()` alone: `create_time()` is the
    boot time (wall clock minus uptime) plus the start ticks, so it moves whenever the wall clock is
    stepped (NTP, a suspended VM), and a live supervisor would then look like a stranger. The start
    ticks never change while the process lives; the boot id changes with every reboot. Where they
    cannot be read (not Linux), `create_time` is compared instead.
    """

    pid: int
    create_time: float
    start_ticks: int | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, pid: int) -> Identity | None:
        try:
            created = psutil.Process(pid).create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None
        return cls(pid, created, _start_ticks(pid), _boot_id())

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "create_time": self.create_time, "start_ticks": self.start_ticks, "boot_id": self.boot_id}

    @classmethod
    def from_dict(cls, data: object) -> Identity | None:
        """An identity from a recorded mapping; None for anything malformed (a planted file is not ours)."""
        if not isinstance(data, Mapping):
            return None
        pid, created = data.get("pid"), data.get("create_time")
        ticks, boot = data.get("start_ticks"), data.get("boot_id")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
            return None
        if isinstance(created, bool) or not isinstance(created, int | float):
            return None
        if ticks is not None and (isinstance(ticks, bool) or not isinstance(ticks, int)):
            return None
        if boot is not None and not isinstance(boot, str):
            return None
        return cls(pid, float(created), ticks, boot)

    def _same_start(self, proc: psutil.Process) -> bool:
        if self.start_ticks is not None and self.boot_id is not None:
            boot, ticks = _boot_id(), _start_ticks(self.pid)
            if boot is not None and ticks is not None:
                return boot == self.boot_id and ticks == self.start_ticks
        return abs(proc.create_time() - self.create_time) <= _START_TOLERANCE

    def process(self) -> psutil.Process | None:
        """The live process with this identity, or None when it is gone or the PID now names another."""
        try:
            proc = psutil.Process(self.pid)
            if not self._same_start(proc) or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot (Linux)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        return int(raw[raw.rfind(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def read_identity(path: Path) -> Identity | None:
    """The identity recorded in `path`; a symlink, a non-regular file or bad JSON gives None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not _regular(fh.fileno()):
            return None
        try:
            return Identity.from_dict(json.loads(fh.read(4096)))
        except ValueError:
            return None


def write_identity(path: Path, identity: Identity) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identity.to_dict(), fh)
    os.replace(tmp, path)


def _regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


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
            umask=_user_umask,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self.pid = self.proc.pid
        # Not yet reaped, so the PID cannot have been reused: this is the identity of our child.
        self.identity = Identity.of(self.pid) or Identity(self.pid, time.time())
        if registry is not None:
            registry.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_identity(registry / str(self.pid), self.identity)
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
    """Whether a group of OUR OWN (un-reaped) child still has a live member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only members are zombies is as good as gone.
    return any(_live(p) for p in group_members(pgid))


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_alive(pid: int) -> bool:
    """Whether some live (non-zombie) process holds `pid` now: for tests and our own children only."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _marked(proc: psutil.Process, marker: str) -> bool:
    try:
        return proc.environ().get(RUN_MARKER) == marker
    except (psutil.Error, OSError):
        return False  # another user's process, or gone: not provably ours


def owned_group(identity: Identity, marker: str | None) -> bool:
    """Whether the process group led by `identity` is provably ours.

    Ours when its leader still has the recorded start time, or, when the leader is gone, when a live
    member carries `marker` in its environment (a group keeps its number while any member lives, so
    such a member is in the group our child made).
    """
    if identity.alive():
        return True
    if marker is None:
        return False
    return any(_live(p) and _marked(p, marker) for p in group_members(identity.pid))


def signal_process(identity: Identity, sig: int) -> bool:
    """Send `sig` to the process if (and only if) it is still the one recorded; True when sent."""
    proc = identity.process()
    if proc is None:
        return False
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)  # psutil re-checks the start time before signalling
        return True
    return False


def kill_group(pgid: int | Identity, grace: float = 2.0, marker: str | None = None) -> None:
    """SIGTERM a process group, wait up to `grace` seconds for it to go, then SIGKILL it.

    Given an `Identity` (a recorded group), nothing is signalled unless `owned_group` proves the
    group is ours; a bare PID is only for our own un-reaped children.
    """
    if isinstance(pgid, Identity):
        if not owned_group(pgid, marker):
            return
        pgid = pgid.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_registered(registry: Path, grace: float = 2.0, marker: str | None = None) -> None:
    """Kill every recorded process group in `registry` that is provably ours (the supervisor is gone).

    `registry` must be a real directory (not a symlink); entries that are not a recorded identity
    of ours are left alone, and only entries whose group is gone or killed are removed.
    """
    if registry.is_symlink() or not registry.is_dir():
        return
    for entry in registry.iterdir():
        if not entry.name.isdigit() or entry.is_symlink():
            continue
        identity = read_identity(entry)
        if identity is None or identity.pid != int(entry.name):
            continue
        kill_group(identity, grace, marker)
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
