"""The detached supervisor of one local run: `python -m shared.backends.local.supervisor RUN_DIR`.

It outlives the process that submitted the run, so an Airflow triggerer, a retried task or another
CLI can adopt, watch and cancel it. SIGTERM/SIGINT stop the runner, which kills every child process
group, and the run ends CANCELLED.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from shared.backends.local.runner import RunContext, Runner
from shared.backends.local.store import RunDir
from shared.specs.model import ExperimentSpec, PipelineRunSpec, Spec, TrainingJobSpec
from shared.status import State, Status


def make_runner(spec: Spec, ctx: RunContext) -> Runner:
    if isinstance(spec, TrainingJobSpec):
        from shared.backends.local.training import TrainingRunner

        return TrainingRunner(spec, ctx)
    if isinstance(spec, ExperimentSpec):
        from shared.backends.local.experiment import ExperimentRunner

        return ExperimentRunner(spec, ctx)
    if isinstance(spec, PipelineRunSpec):
        from shared.backends.local.pipeline import PipelineRunner

        return PipelineRunner(spec, ctx)
    raise TypeError(f"no local runner for {type(spec).__name__}")


class LogWriter:
    """Appends people-facing lines to the run's log.txt, one flush per line (readable while running)."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._fh = os.fdopen(fd, "a", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        from shared.secrets import redact

        with self._lock:
            self._fh.write(redact(line) + "\n")


def supervise(run: RunDir) -> Status:
    context = run.context()
    log = LogWriter(run.log_path)
    ctx = RunContext(
        workdir=run.path, env=context.env, mlflow=context.mlflow, report=run.write_status, log=log
    )
    stopping = threading.Event()
    runner: Runner | None = None

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        if runner is not None:
            # stop() waits for children to die; keep the signal handler itself short.
            threading.Thread(target=runner.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        runner = make_runner(run.spec(), ctx)
        if stopping.is_set() or run.cancel_marker.exists():
            status = Status(State.CANCELLED, raw_state="Cancelled", message="cancelled before it started")
        else:
            status = runner.run()
    except Exception as exc:  # the run must end with a status, whatever broke
        traceback.print_exc()
        status = Status(State.FAILED, raw_state="Error", message=f"{type(exc).__name__}: {exc}")
    if run.cancel_marker.exists() and status.state is not State.SUCCEEDED:
        status = Status(State.CANCELLED, status.raw_state, status.message or "cancelled", status.outputs)
    run.write_status(status)
    log(f"{status.state.value}: {status.message}" if status.message else status.state.value)
    return status


def main(argv: list[str] | None = None) -> int:
    from shared.backends.local import procs

    args = sys.argv[1:] if argv is None else argv
    procs.private_umask()
    status = supervise(RunDir(Path(args[0])))
    return 0 if status.state is State.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
