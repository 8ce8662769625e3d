"""One running test stack: what `up` started, recorded in a state file that `down` reads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import cluster, processes


def up(state_file: str | os.PathLike, only: str | None = None) -> dict[str, Any]:
    state_path = Path(state_file).resolve()
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if any(processes.alive(processes.Started(**p)) for p in previous.get("processes", [])):
            raise RuntimeError(f"{state_path} names a stack that is still running: run down first")
    workdir = Path(tempfile.mkdtemp(prefix="kubeflow-tasks-realstack-"))
    state: dict[str, Any] = {"workdir": str(workdir), "state_file": str(state_path), "components": [],
                             "processes": []}
    started: list[processes.Started] = []
    try:
        if only in (None, "kubernetes"):
            entries, procs = cluster.start(workdir / "kubernetes")
            state.update(entries)
            started += procs
            state["components"].append("kubernetes")
        if only in (None, "dolphinscheduler"):
            ds = _dolphinscheduler()
            if ds is None:
                if only == "dolphinscheduler":
                    raise RuntimeError("this checkout has no DolphinScheduler test server (see tests/realstack/README.md)")
            else:
                entries, procs = ds(workdir / "dolphinscheduler")
                state["dolphinscheduler"] = entries
                started += procs
                state["components"].append("dolphinscheduler")
    except BaseException as exc:
        for s in reversed(started):
            processes.stop(s)
        if isinstance(exc, RuntimeError):  # keep the logs of a failed start for whoever reads the error
            raise RuntimeError(f"{exc} (logs in {workdir})") from None
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    state["processes"] = [s.to_json() for s in started]
    state_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2)
    return state


def down(state_file: str | os.PathLike) -> int:
    state_path = Path(state_file)
    state = json.loads(state_path.read_text())
    started = [processes.Started(**p) for p in state.get("processes", [])]
    count = 0
    for s in reversed(started):
        if processes.alive(s) is not None:
            processes.stop(s)
            count += 1
    marker = (state.get("dolphinscheduler") or {}).get("marker")
    if marker:
        from . import dolphinscheduler

        dolphinscheduler.kill_marked(marker)
    workdir = state.get("workdir")
    if workdir and Path(workdir).name.startswith("kubeflow-tasks-realstack-"):
        shutil.rmtree(workdir, ignore_errors=True)
    state_path.unlink(missing_ok=True)
    return count


def _dolphinscheduler():
    """The DolphinScheduler starter when this checkout has one (tests/realstack/dolphinscheduler.py)."""
    try:
        from . import dolphinscheduler
    except ImportError:
        return None
    return dolphinscheduler.start_step
