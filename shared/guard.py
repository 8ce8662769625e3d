"""A guard that cancels the remote work when the process waiting for it is killed without a word.

DolphinScheduler up to 3.3 stops a task with `kill -9` on every process of the task's tree (the
pids `pstree -p` lists under the task's process), so the CLI that waits for the work never gets to
cancel it; on a timeout it sends SIGTERM to the CLI and SIGKILL 5 s later, which can cut the CLI's
own cancel short. `kubeflow-tasks run --guard` therefore starts this guard right after submitting:

- it leaves the CLI's process tree at once (a double fork: its parent exits, so it is reparented
  to init or the nearest subreaper and no `pstree` of the task lists it), in a session of its own;
- it holds the read end of a pipe whose only write end the CLI holds. When the CLI ends the way
  it means to (success, failure, its own cancel done, its own deadline), it writes `done` first and
  the guard exits doing nothing. When the CLI dies without writing it, the pipe reaches end of file
  the moment the kernel closes the CLI's descriptors, and the guard cancels the work (bounded
  retries) and ends its MLflow run as cancelled;
- it never touches anything but the one handle the CLI gave it.

Only the death of the guard's own host (or a kill of the guard itself) leaves the work running,
as a failover of the task then needs: the retry on another worker adopts it by its key.
The CLI sends the guard everything over the pipe (never on a command line, which `ps` shows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

DONE = b"done\n"
LOG_NAME = "kubeflow-tasks-guard.log"


@dataclass
class Guard:
    """The CLI's end: the pipe to a running guard."""

    pipe: IO[bytes]

    def done(self) -> None:
        """The CLI ends on purpose: the guard must not cancel anything."""
        try:
            self.pipe.write(DONE)
            self.pipe.flush()
            self.pipe.close()
        except OSError:  # the guard is gone already: nothing to tell
            pass


def start_guard(
    handle: Mapping[str, Any], backend: str, backend_options: Mapping[str, Any], mlflow: Mapping[str, str]
) -> Guard:
    """Start a guard for `handle`; returns once it has left this process's tree."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.guard"],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(read_end)
    pipe = os.fdopen(write_end, "wb")
    config = {"handle": dict(handle), "backend": backend, "options": dict(backend_options), "mlflow": dict(mlflow),
              "log": os.path.abspath(LOG_NAME)}
    pipe.write(json.dumps(config).encode() + b"\n")
    pipe.flush()
    proc.wait(30)  # the intermediate process exits once the guard itself is detached
    return Guard(pipe)


def _log(path: str, message: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")


def _cancel(config: Mapping[str, Any]) -> None:
    from shared.backends import get_backend
    from shared.operations import Submission, finish
    from shared.status import Handle, State, Status

    handle = Handle.from_dict(config["handle"])
    backend = get_backend(config["backend"], **config["options"])
    status = backend.status(handle)  # backend calls retry their own requests (shared.retry)
    if status.terminal:
        _log(config["log"], f"{handle.id} already ended {status.state.value}: nothing to cancel")
        return
    status = backend.cancel(handle)
    _log(config["log"], f"cancelled {handle.id}: {status.state.value}")
    if config["mlflow"]:
        ended = Status(State.CANCELLED, status.raw_state, "the waiting process was killed", status.outputs)
        finish(Submission(handle, adopted=False, mlflow=config["mlflow"]), ended)


def main() -> int:
    if os.fork():  # the intermediate: exit, so the guard is no child of the CLI's tree any more
        os._exit(0)
    stdin = sys.stdin.buffer
    config = json.loads(stdin.readline())
    _log(config["log"], f"guarding {config['handle']['id']} (pid {os.getpid()})")
    if stdin.read() == DONE:  # blocks until the CLI writes `done` or dies (end of file)
        return 0
    _log(config["log"], "the waiting process died without finishing: cancelling")
    try:
        _cancel(config)
    except Exception as exc:  # nobody is left to tell but the log
        _log(config["log"], f"could not cancel {config['handle']['id']}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
