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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared.backends.base import Backend, SubmitContext
from shared.errors import DeadlineExceeded, KeyConflict, KubeflowTasksError
from shared.retry import deadline_scope
from shared.specs.model import ExperimentSpec, Spec
from shared.status import Handle, State, Status

CANCEL_TIMEOUT = 60.0  # how long a cancel may take to be confirmed, unless the backend says otherwise
CANCEL_THREADS = 8  # cancel requests run here, never on the event loop or the default executor
_CANCEL_POOL: ThreadPoolExecutor | None = None
_CANCEL_POOL_LOCK = threading.Lock()


def cancel_pool() -> ThreadPoolExecutor:
    """The process-wide, bounded executor of cancel requests: a mass deadline (a thousand triggers at
    once) queues here instead of taking every thread that status reads and other triggers need."""
    global _CANCEL_POOL
    with _CANCEL_POOL_LOCK:
        if _CANCEL_POOL is None:
            _CANCEL_POOL = ThreadPoolExecutor(CANCEL_THREADS, thread_name_prefix="kubeflow-tasks-cancel")
        return _CANCEL_POOL


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
    deadline: float | None = None,
    mlflow_experiment: str | None = None,
    credentials_secret: str | None = None,
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
    task's run) is recorded on it, so a workflow's runs form one lineage. `mlflow_experiment`
    defaults to $MLFLOW_EXPERIMENT_NAME, then `kubeflow-tasks`. If the submission is refused or
    fails before any work started, the run is ended FAILED with the reason and the error raised.

    The key holds one kind of work and one spec: other work under it (another kind, or another
    spec still running or succeeded) raises `KeyConflict` before anything is opened or submitted.

    Backend calls retry their own requests (`shared.retry`, the one layer), all within `deadline`
    (wall-clock), which the work also gets (`SubmitContext.deadline`) to mirror on the server.
    """
    with deadline_scope(deadline):
        return _submit_or_adopt(
            backend, spec, key, mlflow_tracking_uri, labels, env, upstream_mlflow_run_id, known_id, deadline,
            mlflow_experiment, credentials_secret, new_run,
        )


def _submit_or_adopt(
    backend: Backend,
    spec: Spec,
    key: str,
    mlflow_tracking_uri: str | None,
    labels: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
    upstream_mlflow_run_id: str | None,
    known_id: str | None,
    deadline: float | None,
    mlflow_experiment: str | None,
    credentials_secret: str | None,
    new_run: bool,
) -> Submission:
    from shared.fingerprint import fingerprint_of
    from shared.mlflow_handoff import (
        finish_parent_run,
        open_parent_run,
        resolve_tracking_uri,
        set_remote_tags,
    )

    labels = dict(labels or {})
    # A backend answers with the newest work under the key, whatever its kind (both backends), so
    # work of another kind is refused below, never adopted; `spec.kind` tells it which kind is ours.
    candidates = (_remembered(backend, known_id, key), backend.find(key, spec.kind, namespace=spec.namespace))
    existing = max((h for h in candidates if h is not None), key=lambda h: h.attempt, default=None)
    attempt = 1
    adopt = False
    if existing is not None:
        _check_same_kind(existing, spec, key)
        status = backend.status(existing)
        adopt = not status.terminal or (status.state is State.SUCCEEDED and not new_run)
        if adopt:
            _check_same_spec(backend, existing, spec, key, status)
        attempt = existing.attempt if adopt else existing.attempt + 1

    dry_run = getattr(backend, "dry_run", None)
    if not adopt and dry_run is not None:  # the server judges the work before we open anything for it
        dry_run(spec, key, attempt, SubmitContext(env=env or {}, labels=labels, deadline=deadline))

    uri = resolve_tracking_uri(mlflow_tracking_uri)
    parent = None
    if uri:
        tags = dict(labels)
        if upstream_mlflow_run_id:
            tags["kubeflow_tasks.upstream_run_id"] = upstream_mlflow_run_id
        parent = open_parent_run(
            uri, key=key, attempt=attempt, run_name=spec.name, tags=tags, experiment_name=mlflow_experiment
        )

    if adopt:
        handle = existing
    else:
        context = SubmitContext(
            env={**(env or {}), **(parent.env() if parent else {})},
            mlflow=parent.context() if parent else {},
            labels=labels,
            deadline=deadline,
            secret_env=parent.secret_env() if parent else {},
            credentials_secret=credentials_secret,
            fingerprint=fingerprint_of(spec),
        )
        try:
            handle = backend.submit(spec, key, attempt, context)
        except Exception as exc:
            if parent is not None:  # nothing runs: the run must not stay RUNNING for ever
                finish_parent_run(parent, state=State.FAILED, message=f"submission failed: {exc}")
            raise
    if parent is not None:
        set_remote_tags(parent, handle=handle.to_dict())
    return Submission(handle=handle, adopted=adopt, mlflow=parent.context() if parent else {})


def _check_same_kind(existing: Handle, spec: Spec, key: str) -> None:
    """A key holds one kind of work (and one resource): a task of another kind must not get its result."""
    resource = getattr(spec, "resource", None)
    if existing.kind is not spec.kind or (resource and existing.resource and existing.resource != resource):
        held = existing.resource or existing.kind.value
        wanted = resource or spec.kind.value
        raise KeyConflict(
            "--key",
            f"key {key!r} is held by {held} {existing.id} (a {existing.kind.value}); "
            f"this task is a {wanted}: use another key",
        )


def _check_same_spec(backend: Backend, existing: Handle, spec: Spec, key: str, status: Status) -> None:
    """Adopt only the work this task would have submitted: the same spec and parameters.

    A backend that cannot tell the fingerprint of its work (no `fingerprint` method, or work made
    before fingerprints were stored) is trusted, as before.
    """
    from shared.fingerprint import fingerprint_of

    lookup = getattr(backend, "fingerprint", None)
    stored = lookup(existing) if lookup is not None else None
    if stored and stored != fingerprint_of(spec):
        what = "succeeded" if status.state is State.SUCCEEDED else "is still running"
        raise KeyConflict(
            "--key",
            f"key {key!r} is held by {existing.resource or existing.kind.value} {existing.id}, which {what} "
            "with another spec or other parameters; use another key (or the same spec to adopt it)",
        )


def _remembered(backend: Backend, known_id: str | None, key: str) -> Handle | None:
    """The handle of `known_id` when it still exists and belongs to `key`, else None."""
    from shared.errors import NotFound

    if not known_id:
        return None
    try:
        handle = backend.get(known_id)
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
    startup_timeout: float | None = None,
    startup_progress: bool = False,
) -> Status:
    """Wait until the work is terminal.

    `deadline` is wall-clock (time.time()) so it survives a hand-over between processes (an Airflow
    worker deferring to a triggerer). When it passes, the work is cancelled and DeadlineExceeded is
    raised carrying the final status. When `cancel_requested` is set, the work is cancelled and its
    final status returned. Either way the cancel is bounded (`cancel_within`): its status may still be
    non-terminal when the bound passes, and callers must end cleanly with it.

    Work stuck before it runs (pods Pending in ImagePullBackOff, CrashLoopBackOff, Unschedulable) is
    reported through `on_status` with the cluster's reason when `startup_progress` or
    `startup_timeout` asks for it (it costs requests: a triggerer waiting on thousands of jobs does
    not ask); past `startup_timeout` seconds without running, the work is cancelled and the status
    is FAILED with that reason.
    """
    cancel_requested = cancel_requested or asyncio.Event()
    result: Status | None = None
    latest: list[Status] = []

    async def report(status: Status) -> None:
        if on_status is not None:
            maybe = on_status(status)
            if asyncio.iscoroutine(maybe):
                await maybe

    async def follow() -> Status:
        async for _, status in backend.watch([handle]):
            latest[:] = [status]
            await report(status)
        assert latest
        return latest[0]

    watcher = asyncio.ensure_future(follow())
    stopper = asyncio.ensure_future(cancel_requested.wait())
    waiting = {watcher, stopper}
    starter = None
    if startup_timeout is not None or startup_progress:
        starter = asyncio.ensure_future(_watch_startup(backend, handle, latest, report, startup_timeout))
        waiting.add(starter)
    timeout = None if deadline is None else max(0.0, deadline - time.time())
    try:
        while True:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if starter in done and starter.result() is None:  # it runs: nothing more to watch for
                waiting.discard(starter)
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                continue
            break
        if watcher in done:
            return watcher.result()
        result = await cancel_within(backend, handle, watcher)
        if starter is not None and starter in done:
            problem = starter.result()
            result = Status(State.FAILED, "StartupTimeout", problem, result.outputs)
            return result
        if stopper in done:
            return result
        what = f"{handle.resource or handle.kind.value} {handle.id}"
        if result.terminal:
            raise DeadlineExceeded(f"deadline passed; {what} was cancelled", status=result)
        raise DeadlineExceeded(f"deadline passed; {what}: {result.message}", status=result)
    finally:
        for task in (watcher, stopper, starter):
            if task is not None:
                task.cancel()
        if result is not None and on_status is not None:
            maybe = on_status(result)
            if asyncio.iscoroutine(maybe):
                await maybe


STARTUP_POLL = 2.0  # seconds between looks at the pods of work that has not started, growing to 30


async def _watch_startup(
    backend: Backend,
    handle: Handle,
    latest: list[Status],
    report: Callable[[Status], Awaitable[None]],
    startup_timeout: float | None,
) -> str | None:
    """None once the work runs (or ends); the reason it did not start when `startup_timeout` passed."""
    probe = getattr(backend, "startup_problem", None)
    started_at = time.monotonic()
    reported: str | None = None
    pause = STARTUP_POLL
    while True:
        current = latest[0] if latest else None
        if current is not None and current.terminal:
            return None
        problem = None
        if probe is not None:
            try:
                problem = await asyncio.to_thread(probe, handle)
            except KubeflowTasksError:
                problem = None  # cannot look (RBAC, a fault): keep waiting as before
        running = current is not None and current.state is State.RUNNING
        if running and problem is None:
            return None
        if problem and problem != reported:
            state = current.state if current else State.PENDING
            await report(
                Status(
                    state,
                    current.raw_state if current else "Pending",
                    problem,
                    current.outputs if current else {},
                )
            )
        reported = problem or reported
        elapsed = time.monotonic() - started_at
        if startup_timeout is not None and elapsed >= startup_timeout:
            return f"did not start within {startup_timeout:g}s: {problem or reported or 'no pod is running'}"
        rest = None if startup_timeout is None else startup_timeout - elapsed
        await asyncio.sleep(pause if rest is None else max(0.05, min(pause, rest)))
        pause = min(30.0, pause * 1.5)


async def cancel_within(backend: Backend, handle: Handle, watcher: asyncio.Future | None = None) -> Status:
    """Cancel the work and wait, at most the backend's `cancel_timeout`, for it to be terminal.

    The request goes to the bounded cancel pool; the end is seen through `watcher` (the waiter's own
    watch, costing no thread) where the backend can start a cancel without waiting (`request_cancel`).
    Past the bound, the last status comes back with a message saying the cancel is not confirmed.
    (`run_in_executor` does not carry the task's `deadline_scope`: a cancel after the deadline must
    still be able to retry its requests.)"""
    loop = asyncio.get_running_loop()
    bound = float(getattr(backend, "cancel_timeout", CANCEL_TIMEOUT))
    request = getattr(backend, "request_cancel", None)
    try:
        if request is None or watcher is None:  # the backend's own cancel waits (bounded) itself
            return await asyncio.wait_for(
                loop.run_in_executor(cancel_pool(), backend.cancel, handle), bound + 5
            )
        before = await asyncio.wait_for(loop.run_in_executor(cancel_pool(), request, handle), bound)
        if before.terminal:
            return before
        return await asyncio.wait_for(asyncio.shield(watcher), bound)
    except (TimeoutError, KubeflowTasksError) as exc:
        last = await _last_status(backend, handle)
        if last is not None and last.terminal:
            return last
        reason = f"no end within {bound:g}s" if isinstance(exc, TimeoutError) else str(exc)
        last = last or Status(State.RUNNING, "Unknown", "")
        message = f"cancel requested but not confirmed ({reason}); last seen {last.raw_state}"
        return Status(
            last.state, last.raw_state, message + (f": {last.message}" if last.message else ""), last.outputs
        )


async def _last_status(backend: Backend, handle: Handle) -> Status | None:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(cancel_pool(), backend.status, handle), 30)
    except (TimeoutError, KubeflowTasksError):
        return None


def finish(submission: Submission, status: Status, spec: Spec | None = None) -> None:
    """End the MLflow run with the remote outcome and its outputs (no-op without MLflow).

    A status that is not terminal here comes from a cancel not confirmed in time: we stopped
    waiting for the work, so the run ends KILLED with that reason, never left RUNNING.

    An experiment that ended on a cluster (given its `spec`: the plots need its search space) first
    gets the HPO plots on its run, made from the trials' runs nested under it (`shared.hpo_plots`,
    best effort). The local backend's supervisor, which runs the trials, logs them itself when the
    experiment ends, whether anyone waits or not."""
    if submission.mlflow:
        from shared.mlflow_handoff import ParentRun, finish_parent_run

        if isinstance(spec, ExperimentSpec) and status.terminal and submission.handle.backend != "local":
            from shared.hpo_plots import log_hpo_plots

            log_hpo_plots(submission.mlflow, spec)
        finish_parent_run(
            ParentRun.from_context(submission.mlflow),
            state=status.state if status.terminal else State.CANCELLED,
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
    startup_timeout: float | None = None,
    mlflow_experiment: str | None = None,
    credentials_secret: str | None = None,
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
        deadline=deadline,
        mlflow_experiment=mlflow_experiment,
        credentials_secret=credentials_secret,
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
            backend,
            submission.handle,
            deadline=deadline,
            cancel_requested=cancel_requested,
            on_status=on_status,
            startup_timeout=startup_timeout,
            startup_progress=True,  # one task's waiter: a look at its pods now and then is cheap
        )
    except DeadlineExceeded as exc:
        timed_out = True
        status = exc.status if isinstance(exc.status, Status) else backend.status(submission.handle)
        status = Status(status.state, status.raw_state, str(exc), status.outputs)
    if follower is not None:
        await asyncio.to_thread(follower.join, 5)
    await asyncio.to_thread(finish, submission, status, spec)
    return Outcome(submission, status, timed_out=timed_out)


def _pump_logs(backend: Backend, handle: Handle, on_log: Callable[[str], None]) -> None:
    from shared.errors import KubeflowTasksError

    try:
        for line in backend.logs(handle, follow=True):
            on_log(line)
    except KubeflowTasksError as exc:
        on_log(f"(log stream ended: {exc})")
