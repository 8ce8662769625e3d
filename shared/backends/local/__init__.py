"""The embedded local backend: runs the work on this machine for real, durably.

Each run is a directory (see `store`) and a detached supervisor process (see `supervisor`), so the
process that submitted it may exit and any other process can adopt, watch, read logs and cancel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from shared.backends.base import SubmitContext
from shared.backends.local import admission, procs
from shared.backends.local.store import RunDir, Store, open_inside
from shared.errors import NotFound
from shared.fingerprint import fingerprint_of
from shared.keys import object_name
from shared.secrets import clean_env
from shared.specs.model import Spec
from shared.status import Handle, Kind, State, Status

RESOURCE_OF = {Kind.PIPELINE: "PipelineRun", Kind.EXPERIMENT: "Experiment"}
CANCEL_GRACE = 3.0  # seconds the supervisor gets to stop its children before we kill everything


def _resource(spec: Spec) -> str:
    return getattr(spec, "resource", None) or RESOURCE_OF[spec.kind]


def run_id_for(name: str, key: str, attempt: int) -> str:
    """Deterministic, readable and unique per (key, attempt): the name a CR would get."""
    return object_name(name, key, attempt)


def _kill_children(run: RunDir, grace: float = 2.0) -> None:
    """Kill every process group the run recorded, its trials' replicas included (`**/procs`).

    The walk does not follow symlinks, and only groups provably started by this run are signalled.
    """
    for folder, dirs, _files in os.walk(run.path, followlinks=False):
        if "procs" in dirs:
            procs.kill_registered(Path(folder) / "procs", grace, marker=str(run.path))


class LocalBackend:
    name = "local"

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, poll_interval: float = 0.2):
        self.store = Store(Path(state_dir) if state_dir else None)
        self.poll_interval = poll_interval
        self._children: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------------ submit and find

    def dry_run(self, spec: Spec, key: str, attempt: int, context: SubmitContext) -> None:
        """What cannot run here is refused before the MLflow run is opened, not only at submit."""
        admission.check_runnable(spec)

    def submit(self, spec: Spec, key: str, attempt: int, context: SubmitContext) -> Handle:
        admission.check_runnable(spec)  # what only the cluster can run is refused before anything exists
        with self.store.key_lock(key):
            run = self.store.run(run_id_for(spec.name, key, attempt))
            if run.exists():  # another process won the race for this (key, attempt): adopt it
                return run.handle()
            if os.path.lexists(run.path):  # a crashed submission's remains: ours to clear, under the key's lock
                self._stop_supervisor(run, grace=0.5)
                self.store.remove_half_made(run)
            handle = Handle(
                backend=self.name,
                kind=spec.kind,
                id=run.id,
                key=key,
                attempt=attempt,
                name=spec.name,
                url=run.path.as_uri(),
                resource=_resource(spec),
            )
            run.create(spec, context, context.fingerprint or fingerprint_of(spec))
            self._start_supervisor(run, spec, context.secret_env)
            run.publish(handle)  # visible only now that the supervisor's identity is on record
            self.store.record_attempt(key, run.id)
            return handle

    def _start_supervisor(self, run: RunDir, spec: Spec, secret_env: Mapping[str, str]) -> None:
        """Start the detached supervisor; MLflow credentials reach it (and the work) by environment only."""
        extra = {**secret_env, procs.RUN_MARKER: str(run.path)}
        if spec.kind is Kind.PIPELINE:
            # `module:function` imports as it would from where the user typed the command.
            extra["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        fd = os.open(run.path / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shared.backends.local.supervisor", str(run.path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives our exit and our process group's signals
                env=clean_env(procs.child_env(extra)),
                cwd=run.path,
            )
        # Not reaped yet, so this PID is our child's: its start time makes it an identity.
        identity = procs.Identity.of(proc.pid) or procs.Identity(proc.pid, time.time())
        procs.write_identity(run.path / "supervisor.json", identity)
        fd = os.open(run.path / "supervisor.pid", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:  # for people and scripts; never trusted to signal
            fh.write(str(proc.pid))
        self._children[proc.pid] = proc  # reaped in _supervisor_alive, so no zombie lingers

    def find(self, key: str, kind: Kind | None = None, namespace: str | None = None) -> Handle | None:
        """The newest attempt under `key`, of any kind: the operations layer refuses a kind mismatch."""
        for run_id in reversed(self.store.attempts(key)):
            run = self.store.run(run_id)
            if run.exists():
                handle = run.handle()
                if handle.key == key:
                    return handle
        return None

    def fingerprint(self, handle: Handle) -> str | None:
        """The spec fingerprint stored with the run (see shared.fingerprint)."""
        return self._run(handle).fingerprint()

    def get(self, id: str) -> Handle:
        return self._run_by_id(id).handle()

    def list(self) -> Sequence[Handle]:
        return [run.handle() for run in self.store.all_runs()]

    # ------------------------------------------------------------------ status

    def _supervisor_alive(self, run: RunDir) -> bool:
        """Alive only if the recorded identity (PID and start time) still names a live process.

        Why not the PID alone: after a reboot, or simply later, another process may hold it.
        """
        identity = run.supervisor()
        if identity is None:
            return False
        child = self._children.get(identity.pid)
        if child is not None and child.poll() is not None:
            self._children.pop(identity.pid, None)
            return False
        return identity.alive()

    def _stop_supervisor(self, run: RunDir, grace: float) -> None:
        """SIGTERM the supervisor if it is provably ours, wait up to `grace`, then kill its group."""
        identity = run.supervisor()
        if identity is None or not procs.signal_process(identity, signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._supervisor_alive(run):
            time.sleep(0.05)
        if self._supervisor_alive(run):
            procs.kill_group(identity, grace=0)

    def status(self, handle: Handle) -> Status:
        run = self._run(handle)
        status = run.status()
        if status.terminal or self._supervisor_alive(run):
            return status
        # The supervisor may have written its last status just before exiting: read once more.
        status = run.status()
        if status.terminal:
            return status
        _kill_children(run)
        lost = Status(
            State.FAILED,
            raw_state="Lost",
            message="the local supervisor process died",
            outputs=status.outputs,
        )
        run.write_status(lost)
        return lost

    def _run(self, handle: Handle) -> RunDir:
        return self._run_by_id(handle.id)

    def _run_by_id(self, run_id: str) -> RunDir:
        run = self.store.run(run_id)  # refuses anything but a run id: no `..`, no `/`
        if not run.exists():
            raise NotFound(f"no local run {run_id!r} under {self.store.runs}")
        return run

    # ------------------------------------------------------------------ cancel

    def cancel(self, handle: Handle) -> Status:
        run = self._run(handle)
        status = self.status(handle)
        if status.terminal:
            return status
        os.close(os.open(run.cancel_marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        self._stop_supervisor(run, CANCEL_GRACE)
        _kill_children(run, grace=0.5)
        status = run.status()
        if not status.terminal:
            status = Status(
                State.CANCELLED, raw_state="Cancelled", message="cancelled", outputs=status.outputs
            )
            run.write_status(status)
        return status

    # ------------------------------------------------------------------ logs and watch

    def logs(self, handle: Handle, follow: bool = False) -> Iterator[str]:
        run = self._run(handle)
        with open_inside(run.log_path, errors="replace") as fh:
            pending = ""
            while True:
                chunk = fh.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        yield pending.rstrip("\n")
                        pending = ""
                    continue
                if not follow or self.status(handle).terminal:
                    # One last read: lines written between our read and the terminal status.
                    rest = pending + fh.read()
                    yield from (line for line in rest.splitlines())
                    return
                time.sleep(self.poll_interval)

    async def watch(self, handles: Sequence[Handle]) -> AsyncIterator[tuple[Handle, Status]]:
        last: dict[str, Status] = {}
        remaining = list(handles)
        while remaining:
            for handle in list(remaining):
                status = self.status(handle)
                if last.get(handle.id) != status:
                    last[handle.id] = status
                    yield handle, status
                if status.terminal:
                    remaining.remove(handle)
            if remaining:
                await asyncio.sleep(self.poll_interval)
