"""The process(es) of one local Katib trial, and how to read its primary container's lines.

A batch/v1 Job trial runs its primary container's command+args as one process group; a
PyTorchJob/TFJob trial runs through `TrainingRunner` in a thread, its metrics read from the
Master/Chief replica (Katib's primaryPodLabels). Both answer `poll()` (None while running, else
whether it succeeded) and `kill()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared.backends.local import procs
from shared.backends.local.runner import RunContext
from shared.status import State, Status

KILL_GRACE_SECONDS = 2.0
PRIMARY_REPLICAS = ("master-0", "chief-0")  # replicas labelled training.kubeflow.org/job-role=master


class JobProcess:
    """A batch/v1 Job trial: the primary container's command as one process group."""

    def __init__(
        self,
        container: Mapping[str, Any],
        env: dict[str, str],
        cwd: str,
        on_line: Callable[[str], None],
        registry: Path,
    ):
        argv = [*container.get("command", []), *container.get("args", [])]
        self._child = procs.Child(argv, env=procs.child_env(env), cwd=cwd, on_line=on_line, registry=registry)

    def poll(self) -> bool | None:
        code = self._child.poll()
        return None if code is None else code == 0

    def kill(self) -> None:
        self._child.kill_group(KILL_GRACE_SECONDS)


class TrainingProcess:
    """A PyTorchJob/TFJob trial: a TrainingRunner in a thread; metrics come from the Master/Chief."""

    def __init__(
        self,
        trial_spec: Mapping[str, Any],
        base_dir: str,
        workdir: Path,
        env: dict[str, str],
        on_line: Callable[[str], None],
    ):
        from shared.backends.local.training import TrainingRunner
        from shared.specs import parse_training_job

        spec = parse_training_job(trial_spec, base_dir)
        ctx = RunContext(workdir=workdir, env=env, mlflow={}, report=lambda status: None, log=on_line)
        self._runner = TrainingRunner(spec, ctx)
        self._result: Status | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._result = self._runner.run()

    def poll(self) -> bool | None:
        if self._thread.is_alive():
            return None
        return self._result is not None and self._result.state is State.SUCCEEDED

    def kill(self) -> None:
        self._runner.stop()
        self._thread.join(timeout=KILL_GRACE_SECONDS + 5)


def primary_text(line: str) -> str | None:
    """A training trial's line as the primary (Master/Chief) container printed it, else None."""
    for replica in PRIMARY_REPLICAS:
        if line.startswith(f"[{replica}] "):
            return line[len(replica) + 3 :]
    return None
