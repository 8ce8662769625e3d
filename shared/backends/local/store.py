"""Durable local run directories: the only shared state between submitter, supervisor and adopters.

Layout below the state root (`$KUBEFLOW_TASKS_STATE_DIR`, else `$XDG_STATE_HOME/kubeflow-tasks`,
else `~/.local/state/kubeflow-tasks`), every directory 0700 and every file 0600:

    runs/<run id>/handle.json     who this run is (Handle.to_dict); written last, see below
                  spec.json       the spec the supervisor runs: kind, manifest, base_dir, fingerprint
                  context.json    environment and MLflow parent handed to the work
                  status.json     the current Status, replaced atomically
                  supervisor.json the detached supervisor's identity (PID and start time)
                  supervisor.pid  its PID as text, for people (never trusted to signal)
                  log.txt         people-facing log lines of the work
                  procs/          one identity file per live child process group
    keys/<digest>.json            the run ids submitted under one key, oldest first

Why so strict: run ids come from the command line and run directories may be planted by anyone who
can write below the root. A run id is a DNS-1035 label (what `object_name` makes), its directory is
a real directory directly under `runs/`, and every file of a run is opened without following a
symlink, so no path taken from a run leads outside it.

A run becomes visible (handle.json) only once its supervisor's identity is recorded, so an observer
never sees a run it cannot judge; a directory without handle.json is a submission in progress, or
the remains of a crashed one, which the next submission under the key removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from shared.backends.base import SubmitContext
from shared.errors import NotFound, SpecError
from shared.keys import key_digest
from shared.specs.model import Spec
from shared.status import Handle, State, Status

STATE_DIR_ENV = "KUBEFLOW_TASKS_STATE_DIR"
RUN_ID = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1035 label: what object_name makes
_MAX_FILE = 64 * 1024 * 1024  # no run file we read as a whole is this large unless planted


def default_state_root() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "kubeflow-tasks"


def check_run_id(run_id: str) -> str:
    """A run id as `object_name` makes it; anything else (`..`, `/`, an absolute path) is refused."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise SpecError(
            "run_id",
            f"{run_id!r} is not a local run id (lower-case letters, digits and '-', at most 63 characters)",
        )
    return run_id


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
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


def open_inside(path: Path, mode: str = "r", **kwargs: Any):
    """Open a run's file for reading without following a symlink; only regular files.

    Why: a planted `log.txt -> ~/.ssh/id_rsa` must not be printed by `logs`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise NotFound(f"{path.name} of local run {path.parent.name!r} is not a regular file") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound(f"{path.name} of local run {path.parent.name!r} is not a regular file")
    return os.fdopen(fd, mode, **kwargs)


def read_json(path: Path) -> Any:
    with open_inside(path, "rb") as fh:
        return json.loads(fh.read(_MAX_FILE))


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

    def is_real_dir(self) -> bool:
        """A directory of its own, not a symlink to somewhere else."""
        try:
            return stat.S_ISDIR(os.lstat(self.path).st_mode)
        except OSError:
            return False

    def exists(self) -> bool:
        """A complete run: a real directory with a regular handle.json."""
        if not self.is_real_dir():
            return False
        try:
            return stat.S_ISREG(os.lstat(self.path / "handle.json").st_mode)
        except OSError:
            return False

    def handle(self) -> Handle:
        try:
            handle = Handle.from_dict(read_json(self.path / "handle.json"))
        except (ValueError, KeyError, TypeError):
            raise NotFound(f"local run {self.id!r} has a damaged handle.json") from None
        if handle.id != self.id:  # a copied or planted handle naming another run
            raise NotFound(f"local run {self.id!r} has a handle.json of another run ({handle.id!r})")
        return handle

    def spec_record(self) -> dict[str, Any]:
        return read_json(self.path / "spec.json")

    def spec(self) -> Spec:
        """The spec, parsed again from the manifest stored in spec.json (no pickle: data, not code)."""
        from shared.specs import load_spec

        record = self.spec_record()
        return load_spec(record["manifest"], kind=record["kind"], base_dir=record["base_dir"])

    def fingerprint(self) -> str | None:
        with contextlib.suppress(OSError, ValueError, NotFound):
            return self.spec_record().get("fingerprint")
        return None

    def context(self) -> SubmitContext:
        data = read_json(self.path / "context.json")
        return SubmitContext(env=data["env"], mlflow=data["mlflow"], labels=data["labels"])

    def status(self) -> Status:
        return Status.from_dict(read_json(self.path / "status.json"))

    def write_status(self, status: Status) -> None:
        write_json_atomic(self.path / "status.json", status.to_dict())

    def supervisor(self):
        """The supervisor's recorded identity (procs.Identity), or None."""
        from shared.backends.local import procs

        return procs.read_identity(self.path / "supervisor.json")

    def supervisor_pid(self) -> int | None:
        identity = self.supervisor()
        return identity.pid if identity else None

    def create(self, spec: Spec, context: SubmitContext, fingerprint: str) -> None:
        """Everything but handle.json: the run is not visible to observers yet."""
        self.path.mkdir(mode=0o700)
        write_json_atomic(
            self.path / "spec.json",
            {
                "kind": spec.kind.value,
                "manifest": spec.manifest,
                "base_dir": spec.base_dir,
                "fingerprint": fingerprint,
            },
        )
        write_json_atomic(
            self.path / "context.json",
            {"env": dict(context.env), "mlflow": dict(context.mlflow), "labels": dict(context.labels)},
        )
        os.close(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        self.write_status(Status(State.PENDING, raw_state="Created", message="submitted"))

    def publish(self, handle: Handle) -> None:
        """Make the run visible: handle.json last, once it can be judged."""
        write_json_atomic(self.path / "handle.json", handle.to_dict())


class Store:
    """The state root: run directories and the key index."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_state_root()
        self.runs = self.root / "runs"
        self.keys = self.root / "keys"

    def ensure(self) -> None:
        """Create the root private to us; refuse one that others may write into."""
        for folder in (self.root, self.runs, self.keys):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(folder)
            if stat.S_ISLNK(info.st_mode) and folder is not self.root:
                raise SpecError(STATE_DIR_ENV, f"{folder} must be a directory, not a symlink")
            info = os.stat(folder)
            if info.st_mode & 0o022 or info.st_uid != os.getuid():
                raise SpecError(
                    STATE_DIR_ENV,
                    f"the state directory {folder} must be owned by you and writable by you only "
                    f"(mode {stat.filemode(info.st_mode)}); run: chmod 700 {folder}",
                )

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs / check_run_id(run_id))

    @contextlib.contextmanager
    def key_lock(self, key: str) -> Iterator[None]:
        """Serialise submissions under one key across processes (a lock file, via filelock)."""
        self.ensure()
        with FileLock(self.keys / f"{key_digest(key)}.lock", mode=0o600):
            yield

    def attempts(self, key: str) -> list[str]:
        try:
            runs = read_json(self.keys / f"{key_digest(key)}.json")["runs"]
        except (FileNotFoundError, NotFound, ValueError, KeyError, TypeError):
            return []
        return [r for r in runs if isinstance(r, str) and RUN_ID.fullmatch(r)]

    def record_attempt(self, key: str, run_id: str) -> None:
        runs = [r for r in self.attempts(key) if r != run_id] + [run_id]
        write_json_atomic(self.keys / f"{key_digest(key)}.json", {"key": key, "runs": runs})

    def remove_half_made(self, run: RunDir) -> None:
        """Remove what a crashed submission left (a directory without handle.json); never follows links."""
        if run.path.is_symlink():
            run.path.unlink()
        elif run.is_real_dir():
            shutil.rmtree(run.path)

    def all_runs(self) -> list[RunDir]:
        if self.runs.is_symlink() or not self.runs.is_dir():
            return []
        dirs = [RunDir(p) for p in self.runs.iterdir() if RUN_ID.fullmatch(p.name) and RunDir(p).exists()]
        return sorted(dirs, key=lambda d: (d.path / "handle.json").lstat().st_mtime)
