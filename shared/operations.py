"""What every backend and every adapter does the same way: submit-or-adopt, wait, cancel, hand off.

Adapters (CLI, Airflow, DolphinScheduler) call these functions and nothing below them, so the rules
live once: a key names the task instance; a retried task adopts the work its previous try started;
a finished success is never run again; a failure or cancellation gets a new attempt; a passing
deadline cancels the remote work before the task fails; MLflow runs are opened before submitting
and ended with the remote outcome.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.backends.base import Backend, SubmitContext
from shared.errors import DeadlineExceeded
from shared.retry import call_with_retries
from shared.specs.model import Spec
from shared.status import Handle, State, Status


@dataclass(frozen=True)
class Submission:
    handle: Handle
    adopted: bool  # True when the work already existed under this key (and attempt)
    mlflow: Mapping[str, str] = field(default_factory=dict)  # tracking_uri, run_id, experiment_id

    @property
    def mlflow_run_id(self) -> str | None:
        return self.mlflow.get("run_id")


def submit_or_adopt(
    backend: Backend,
    spec: Spec,
    key: str,
    *,
    mlflow_tracking_uri: str | None = None,
    labels: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    upstream_mlflow_run_id: str | None = None,
    known_id: str | None = None,
    new_run: bool = False,
) -> Submission:
    """Adopt what runs or succeeded under `key`; otherwise submit a new attempt.

    `new_run` says a person asked for the task to run again (an Airflow clear), not a retry: then a
    finished success is not handed back but gets a new attempt too. Work still running is adopted
    either way: it has no result yet, and a second copy would duplicate it.

    `known_id` is the backend id the caller remembered from an earlier try (Airflow's task state
    store): when it still exists under `key` it counts even if `find(key)`, which a backend may
    answer from an eventually consistent list, misses it; the newer attempt of the two wins.

    The MLflow run is opened (or adopted, by key and attempt) before anything is submitted, so the
    work gets the hand-off variables from its first line on. `upstream_mlflow_run_id` (the previous
    task's run) is recorded on it, so a workflow's runs form one lineage.
    """
    from shared.mlflow_handoff import open_parent_run, resolve_tracking_uri, set_remote_tags

    labels = dict(labels or {})
    candidates = (_remembered(backend, known_id, key), call_with_retries(backend.find, key, spec.kind))
    existing = max((h for h in candidates if h is not None), key=lambda h: h.attempt, default=None)
    attempt = 1
    adopt = False
    if existing is not None:
        status = call_with_retries(backend.status, existing)
        adopt = not status.terminal or (status.state is State.SUCCEEDED and not new_run)
        attempt = existing.attempt if adopt else existing.attempt + 1

    uri = resolve_tracking_uri(mlflow_tracking_uri)
    parent = None
    if uri:
        tags = dict(labels)
        if upstream_mlflow_run_id:
            tags["kubeflow_tasks.upstream_run_id"] = upstream_mlflow_run_id
        parent = open_parent_run(uri, key=key, attempt=attempt, run_name=spec.name, tags=tags)

    if adopt:
        handle = existing
    else:
        context = SubmitContext(
            env={**(env or {}), **(parent.env() if parent else {})},
            mlflow=parent.context() if parent else {},
            labels=labels,
        )
        handle = call_with_retries(backend.submit, spec, key, attempt, context)
    if parent is not None:
        set_remote_tags(parent, handle=handle.to_dict())
    return Submission(handle=handle, adopted=adopt, mlflow=parent.context() if parent else {})


def _remembered(backend: Backend, known_id: str | None, key: str) -> Handle | None:
    """The handle of `known_id` when it still exists and belongs to `key`, else None."""
    from shared.errors import NotFound

    if not known_id:
        return None
    try:
        handle = call_with_retries(backend.get, known_id)
    except NotFound:
        return None
    return handle if handle.key == key else None


async def wait_for(
    backend: Backend,
    handle: Handle,
    *,
    deadline: float | None = None,
    cancel_requested: asyncio.Event | None = None,
    on_status: Callable[[Status], Awaitable[None] | None] | None = None,
) -> Status:
    """Wait until the work is terminal.

    `deadline` is wall-clock (time.time()) so it survives a hand-over between processes (an Airflow
    worker deferring to a triggerer). When it passes, the work is cancelled and DeadlineExceeded is
    raised carrying the final status. When `cancel_requested` is set, the work is cancelled and its
    final status returned.
    """
    cancel_requested = cancel_requested or asyncio.Event()
    result: Status | None = None

    async def follow() -> Status:
        last = None
        async for _, status in backend.watch([handle]):
            last = status
            if on_status is not None:
                maybe = on_status(status)
                if asyncio.iscoroutine(maybe):
                    await maybe
        assert last is not None
        return last

    watcher = asyncio.ensure_future(follow())
    stopper = asyncio.ensure_future(cancel_requested.wait())
    timeout = None if deadline is None else max(0.0, deadline - time.time())
    try:
        done, _ = await asyncio.wait({watcher, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            return watcher.result()
        result = await asyncio.to_thread(backend.cancel, handle)
        if stopper in done:
            return result
        raise DeadlineExceeded(
            f"deadline passed; {handle.resource or handle.kind.value} {handle.id} was cancelled", status=result
        )
    finally:
        for task in (watcher, stopper):
            task.cancel()
        if result is not None and on_status is not None:
            maybe = on_status(result)
            if asyncio.iscoroutine(maybe):
                await maybe


def finish(submission: Submission, status: Status) -> None:
    """End the MLflow run with the remote outcome and its outputs (no-op without MLflow)."""
    if submission.mlflow:
        from shared.mlflow_handoff import ParentRun, finish_parent_run

        finish_parent_run(
            ParentRun.from_context(submission.mlflow),
            state=status.state,
            message=status.message,
            outputs=status.outputs,
        )


@dataclass(frozen=True)
class Outcome:
    submission: Submission
    status: Status
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        handle = self.submission.handle
        return {
            **handle.to_dict(),
            "adopted": self.submission.adopted,
            **self.status.to_dict(),
            "mlflow_run_id": self.submission.mlflow_run_id,
            "timed_out": self.timed_out,
        }


async def run_async(
    backend: Backend,
    spec: Spec,
    key: str,
    *,
    mlflow_tracking_uri: str | None = None,
    upstream_mlflow_run_id: str | None = None,
    labels: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cancel_requested: asyncio.Event | None = None,
    on_submitted: Callable[[Submission], None] | None = None,
    on_status: Callable[[Status], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    known_id: str | None = None,
    new_run: bool = False,
) -> Outcome:
    """Submit or adopt, follow the logs, wait with the deadline, end the MLflow run: one task's life."""
    deadline = None if timeout is None else time.time() + timeout
    submission = await asyncio.to_thread(
        submit_or_adopt,
        backend,
        spec,
        key,
        mlflow_tracking_uri=mlflow_tracking_uri,
        labels=labels,
        upstream_mlflow_run_id=upstream_mlflow_run_id,
        known_id=known_id,
        new_run=new_run,
    )
    if on_submitted is not None:
        on_submitted(submission)
    follower = None
    if on_log is not None:
        follower = threading.Thread(target=_pump_logs, args=(backend, submission.handle, on_log), daemon=True)
        follower.start()
    timed_out = False
    try:
        status = await wait_for(
            backend, submission.handle, deadline=deadline, cancel_requested=cancel_requested, on_status=on_status
        )
    except DeadlineExceeded as exc:
        timed_out = True
        status = exc.status if isinstance(exc.status, Status) else backend.status(submission.handle)
        status = Status(status.state, status.raw_state, str(exc), status.outputs)
    if follower is not None:
        await asyncio.to_thread(follower.join, 5)
    await asyncio.to_thread(finish, submission, status)
    return Outcome(submission, status, timed_out=timed_out)


def _pump_logs(backend: Backend, handle: Handle, on_log: Callable[[str], None]) -> None:
    from shared.errors import KubeflowTasksError

    try:
        for line in backend.logs(handle, follow=True):
            on_log(line)
    except KubeflowTasksError as exc:
        on_log(f"(log stream ended: {exc})")
