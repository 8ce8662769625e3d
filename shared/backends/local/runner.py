"""What the local supervisor drives: one runner per kind of work.

A runner does the work in child processes (see `procs.Child`), reports progress through `report`
(written atomically to the run's status file) and people-facing lines through `log`, and returns
the terminal status from `run()`. `stop()` may be called from a signal handler's thread: it kills
every child group and makes `run()` return CANCELLED promptly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.status import Status


@dataclass(frozen=True)
class RunContext:
    workdir: Path  # the run directory; runners write replica/trial logs below it
    env: Mapping[str, str]  # extra environment for every child (MLflow hand-off among it)
    mlflow: Mapping[str, str]  # tracking_uri, run_id, experiment_id of the parent run, or empty
    report: Callable[[Status], None]
    log: Callable[[str], None]

    @property
    def registry(self) -> Path:
        return self.workdir / "procs"


class Runner(Protocol):
    def run(self) -> Status: ...

    def stop(self) -> None: ...
