"""Runs a KFP pipeline locally with kfp.local, in a child process group that a cancel can kill whole.

kfp.local runs in the child (`kfp_exec`), never in the supervisor: its task subprocesses are then in
the child's process group, and a stop() kills the lot. kfp.local only says "Task failed" when a
component raises; the component's traceback is in the streamed output, so this runner follows that
output (`TaskLog`) to know each task's state and to report the real exception.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import IO

import shared
from shared.backends.local import procs
from shared.backends.local.runner import RunContext
from shared.specs.model import PipelineRunSpec
from shared.status import State, Status

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own log lines start with a time; whatever a task prints is indented instead.
TASK_START = re.compile(r"[\d:.]+ - INFO - Executing task '(?P<task>[^']+)'$")
TASK_END = re.compile(
    r"[\d:.]+ - (?:INFO|ERROR) - Task '(?P<task>[^']+)' finished with status (?P<status>\w+)$"
)
TASK_OUTPUT_INDENT = "    "  # kfp.local indents every line a task prints by four spaces
KFP_STATES = {"SUCCESS": "SUCCEEDED", "FAILURE": "FAILED"}
MLFLOW_VARIABLES = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "run_id": "MLFLOW_RUN_ID",
    "experiment_id": "MLFLOW_EXPERIMENT_ID",
}


class TaskLog:
    """Follows kfp.local's output: task states and the exception line of each task's traceback.

    kfp.local runs a plain DAG's tasks one at a time, so output between "Executing task 'x'" and
    "Task 'x' finished" is x's. (Tasks of a ParallelFor may interleave; their errors may then be
    attributed to the task that started last.)
    """

    def __init__(self) -> None:
        self.tasks: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.last_lines: dict[str, str] = {}
        self.failed_task: str | None = None
        self._current: str | None = None
        self._in_traceback = False

    def feed(self, line: str) -> tuple[str, str] | None:
        """Read one (ANSI-free) line; returns (task, new state) when a task changed state."""
        if match := TASK_START.match(line):
            self._current, self._in_traceback = match["task"], False
            self.tasks[self._current] = "RUNNING"
            return self._current, "RUNNING"
        if match := TASK_END.match(line):
            task, state = match["task"], KFP_STATES.get(match["status"], match["status"])
            self.tasks[task] = state
            if state == "FAILED" and self.failed_task is None:
                self.failed_task = task
            self._current = None
            return task, state
        if self._current is not None and line.startswith(TASK_OUTPUT_INDENT):
            self._read_task_output(self._current, line[len(TASK_OUTPUT_INDENT) :])
        return None

    def _read_task_output(self, task: str, text: str) -> None:
        # The exception line is the first unindented line after "Traceback ...:"; with chained
        # exceptions the last traceback wins, which is the one that ended the process.
        if text.strip():
            self.last_lines[task] = text.strip()
        if text.startswith("Traceback (most recent call last):"):
            self._in_traceback = True
        elif self._in_traceback and text and not text[0].isspace():
            self.errors[task] = text.strip()
            self._in_traceback = False

    def failure_message(self) -> str | None:
        task = self.failed_task
        if task is None:
            return None
        # Without a Python traceback (a shell or pip error), the task's last words say the most.
        error = self.errors.get(task) or self.last_lines.get(task)
        return f"task {task!r}: {error}" if error else f"task {task!r} failed"


class PipelineRunner:
    """Runs one PipelineRunSpec to a terminal Status (see the Runner protocol in runner.py)."""

    def __init__(self, spec: PipelineRunSpec, ctx: RunContext):
        self.spec = spec
        self.ctx = ctx
        self.task_log = TaskLog()
        # Re-entrant: stop() may run in a signal handler on the thread that is inside run().
        self._lock = threading.RLock()
        self._child: procs.Child | None = None
        self._stopped = False
        self._log_file: IO[str] | None = None

    def run(self) -> Status:
        workdir = self.ctx.workdir
        scratch = workdir / "kfp"
        (scratch / "tmp").mkdir(parents=True, exist_ok=True)
        request, result = workdir / "pipeline-request.json", workdir / "pipeline-result.json"
        request.write_text(json.dumps(self._request(scratch)))
        result.unlink(missing_ok=True)
        # The MLflow hand-off: kfp_exec passes these on as pipeline parameters the pipeline declares.
        mlflow_env = {
            MLFLOW_VARIABLES[k]: v for k, v in self.ctx.mlflow.items() if k in MLFLOW_VARIABLES and v
        }
        env = procs.child_env(
            {
                **mlflow_env,
                **self.ctx.env,
                "PYTHONPATH": _pythonpath(self.ctx.env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")),
                "TMPDIR": str(scratch / "tmp"),  # each task's `mktemp -d` lands in the run directory
            }
        )
        argv = ["python", "-m", "shared.backends.local.kfp_exec", str(request), str(result)]
        with open(workdir / "pipeline.log", "a", encoding="utf-8") as self._log_file:
            with self._lock:
                if self._stopped:
                    return _cancelled()
                self._child = procs.Child(
                    argv, env=env, cwd=self._cwd(), on_line=self._on_line, registry=self.ctx.registry
                )
            if self._stopped:  # a stop() that came while the child was starting found nothing to kill
                self._child.kill_group()
            self.ctx.report(Status(State.RUNNING, "RUNNING", f"pipeline {self.spec.pipeline} started"))
            code = self._child.wait()
        if self._stopped:
            return _cancelled()
        return self._outcome(code, result)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            child = self._child
        if child is not None:
            child.kill_group()

    def _request(self, scratch: Path) -> dict[str, object]:
        root = self.spec.pipeline_root
        if not root or "://" in root:  # a remote root (gs://, minio://) means nothing locally
            root = str(self.ctx.workdir / "outputs")
        return {
            "pipeline": self.spec.pipeline,
            "base_dir": self.spec.base_dir,
            "parameters": dict(self.spec.parameters),
            "pipeline_root": str(Path(self.spec.base_dir, root)),
            "work_dir": str(scratch),
            "enable_caching": bool(self.spec.enable_caching),
        }

    def _cwd(self) -> str:
        return self.spec.base_dir if Path(self.spec.base_dir).is_dir() else str(self.ctx.workdir)

    def _on_line(self, raw: str) -> None:
        line = ANSI.sub("", raw)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.write(line + "\n")
            self._log_file.flush()
        self.ctx.log(line)
        change = self.task_log.feed(line)
        if change is not None:
            task, state = change
            self.ctx.log(f"[kubeflow-tasks] task {task!r}: {state}")
            self.ctx.report(
                Status(
                    State.RUNNING, "RUNNING", f"task {task!r} {state}", {"tasks": dict(self.task_log.tasks)}
                )
            )

    def _outcome(self, code: int, result_path: Path) -> Status:
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            result = {}
        tasks = dict(self.task_log.tasks)
        if code == 0 and "outputs" in result:
            return Status(State.SUCCEEDED, "SUCCEEDED", "", {"outputs": result["outputs"], "tasks": tasks})
        message = (
            self.task_log.failure_message()
            or result.get("error")
            or f"the pipeline process exited with code {code} without a result"
        )
        return Status(State.FAILED, "FAILED", message, {"tasks": tasks, "exit_code": code})


def _cancelled() -> Status:
    return Status(State.CANCELLED, "CANCELLED", "cancelled")


def _pythonpath(existing: str | None) -> str:
    """The folder holding the `shared` package first, so the child imports this very code."""
    root = str(Path(shared.__file__).resolve().parents[1])
    return root + os.pathsep + existing if existing else root
