"""Durable local run directories: the only shared state between submitter, supervisor and adopters.

Layout below the state root (`$KUBEFLOW_TASKS_STATE_DIR`, else `$XDG_STATE_HOME/kubeflow-tasks`,
else `~/.local/state/kubeflow-tasks`):

    runs/<run id>/handle.json     who this run is (Handle.to_dict)
                  spec.pickle     the parsed spec the supervisor runs; spec.json for people
                  context.json    environment and MLflow parent handed to the work (mode 0600)
                  status.json     the current Status, replaced atomically
                  supervisor.pid  the detached supervisor's pid
                  log.txt         people-facing log lines of the work
                  procs/          one file per live child process group
    keys/<digest>.json            the run ids submitted under one key, oldest first
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.backends.base import SubmitContext
from shared.keys import key_digest
from shared.specs.model import Spec
from shared.status import Handle, State, Status

STATE_DIR_ENV = "KUBEFLOW_TASKS_STATE_DIR"


def default_state_root() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "kubeflow-tasks"


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RunDir:
    """One local run's directory and the typed reads and writes of its files."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def registry(self) -> Path:
        return self.path / "procs"

    @property
    def cancel_marker(self) -> Path:
        return self.path / "cancel-requested"

    def exists(self) -> bool:
        return (self.path / "handle.json").is_file()

    def handle(self) -> Handle:
        return Handle.from_dict(json.loads((self.path / "handle.json").read_text()))

    def spec(self) -> Spec:
        with open(self.path / "spec.pickle", "rb") as fh:
            return pickle.load(fh)

    def context(self) -> SubmitContext:
        data = json.loads((self.path / "context.json").read_text())
        return SubmitContext(env=data["env"], mlflow=data["mlflow"], labels=data["labels"])

    def status(self) -> Status:
        return Status.from_dict(json.loads((self.path / "status.json").read_text()))

    def write_status(self, status: Status) -> None:
        write_json_atomic(self.path / "status.json", status.to_dict())

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.path / "supervisor.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def create(self, handle: Handle, spec: Spec, context: SubmitContext) -> None:
        self.path.mkdir(parents=True)
        with open(self.path / "spec.pickle", "wb") as fh:
            pickle.dump(spec, fh)
        write_json_atomic(self.path / "spec.json", {"kind": spec.kind.value, "manifest": spec.manifest})
        write_json_atomic(
            self.path / "context.json",
            {"env": dict(context.env), "mlflow": dict(context.mlflow), "labels": dict(context.labels)},
            mode=0o600,
        )
        self.log_path.touch()
        self.write_status(Status(State.PENDING, raw_state="Created", message="submitted"))
        # handle.json last: a run directory without it is not a run yet.
        write_json_atomic(self.path / "handle.json", handle.to_dict())


class Store:
    """The state root: run directories and the key index."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_state_root()
        self.runs = self.root / "runs"
        self.keys = self.root / "keys"

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs / run_id)

    @contextlib.contextmanager
    def key_lock(self, key: str) -> Iterator[None]:
        """Serialise submissions under one key across processes (flock on a lock file)."""
        self.keys.mkdir(parents=True, exist_ok=True)
        with open(self.keys / f"{key_digest(key)}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def attempts(self, key: str) -> list[str]:
        try:
            return json.loads((self.keys / f"{key_digest(key)}.json").read_text())["runs"]
        except FileNotFoundError:
            return []

    def record_attempt(self, key: str, run_id: str) -> None:
        runs = self.attempts(key) + [run_id]
        write_json_atomic(self.keys / f"{key_digest(key)}.json", {"key": key, "runs": runs})

    def all_runs(self) -> list[RunDir]:
        if not self.runs.is_dir():
            return []
        dirs = [RunDir(p) for p in self.runs.iterdir() if (p / "handle.json").is_file()]
        return sorted(dirs, key=lambda d: (d.path / "handle.json").stat().st_mtime)
