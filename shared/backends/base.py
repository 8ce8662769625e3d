"""The backend protocol: the one seam between "what to run" and "where it runs".

Every backend stores the submission key on the remote object so that any process can `find` it
again, and makes `submit` safe to race: two processes submitting the same (key, attempt) get the
same object back, never two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared.specs.model import Spec
from shared.status import Handle, Kind, Status


@dataclass(frozen=True)
class SubmitContext:
    """What the operations layer hands to the work besides the spec.

    `env` reaches every process of the work (MLflow hand-off variables among them);
    `mlflow` carries the parent run for backends that create nested runs themselves (Katib trials);
    `labels` are the scheduler's identity of the task, stored on the remote object for people;
    `deadline` (wall-clock, `time.time()`) is the task's, for backends that mirror it on the server
    so that work orphaned by a dead client still ends.
    `secret_env` (MLflow credentials) reaches the work too but is never written anywhere: the local
    backend hands it to the supervisor's environment only, Kubernetes refers to the Secret named by
    `credentials_secret` instead of inlining it. `fingerprint` is stored with the work (see
    shared.fingerprint).
    """

    env: Mapping[str, str] = field(default_factory=dict)
    mlflow: Mapping[str, str] = field(default_factory=dict)  # tracking_uri, run_id, experiment_id
    labels: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    credentials_secret: str | None = None
    fingerprint: str | None = None


@runtime_checkable
class Backend(Protocol):
    """What every backend does. Optional, found with `getattr` by `shared.operations`:
    `dry_run(spec, key, attempt, context)` (let the server judge the work before anything is opened
    for it), `request_cancel(handle)` (start a cancel without waiting; the waiter's watch sees the
    end) and `cancel_timeout` (seconds a cancel may take to be confirmed)."""

    name: str

    def submit(self, spec: Spec, key: str, attempt: int, context: SubmitContext) -> Handle:
        """Create the work for (key, attempt), or return the object that already exists for it."""

    def find(self, key: str, kind: Kind | None = None, namespace: str | None = None) -> Handle | None:
        """The newest attempt submitted under `key`, of any kind, or None. A key holds one kind of
        work, so the operations layer refuses a task whose kind (`kind`, None for a lookup by key)
        is not the one found; `namespace` is where the spec says the work lives (a backend with
        namespaces looks there too)."""

    def get(self, id: str) -> Handle:
        """The handle of the work with this backend id; raises NotFound."""

    def status(self, handle: Handle) -> Status: ...

    def cancel(self, handle: Handle) -> Status:
        """Stop the work and everything it started; returns the terminal status once it is reached."""

    def logs(self, handle: Handle, follow: bool = False) -> Iterator[str]:
        """Log lines of the work (the Master/Chief replica, the trials' progress, the pipeline tasks)."""

    def list(self) -> Sequence[Handle]: ...

    def watch(self, handles: Sequence[Handle]) -> AsyncIterator[tuple[Handle, Status]]:
        """Yield (handle, status) whenever the status of one of `handles` changes, until all are terminal."""
