"""KubeflowRunTrigger: waits in the triggerer for one run or job, through the core's shared watchers.

It serialises only the remote handle (ids, no secret), the connection id and the absolute deadline,
so a restarted or another triggerer resumes it; credentials are read from the connection when it
runs. Every backend call is either async (`watch`) or sent to a thread, so the event loop is never
blocked: building the backend (a kubeconfig whose exec plugin takes seconds) happens in a thread,
once per connection, and all triggers of that connection in the process share it, so they share
one API client and the core's watches, and one reading of the connection at a time. Cancels go to the core's bounded cancel pool. `cleanup`
never cancels (it runs on triggerer restarts too); `on_kill` (Airflow 3.3+, a user marking the task
failed/success or clearing it) cancels, best effort.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider.connection import DEFAULT_CONN_ID

ON_KILL_CANCEL_TIMEOUT = 20.0  # inside Airflow's [triggerer] on_kill_timeout (30 s)
# How long a connection's reading serves the process's triggers. In a triggerer each reading is a
# round trip to its supervisor, which answers between its database work: 1,000 triggers starting
# together, each asking, got their first status minutes late (bench/RESULTS-triggerer.md).
OPTIONS_SECONDS = 30.0
_BACKENDS: dict[Any, asyncio.Future] = {}  # (conn id, options) -> the backend being built or built
_OPTIONS: dict[str, tuple[float, asyncio.Future]] = {}  # conn id -> (when asked, its reading)


async def connection_options(kubeflow_conn_id: str) -> Any:
    """The connection as it reads now, give or take `OPTIONS_SECONDS`: the triggers that start together
    share one lookup (and one in flight), a changed connection is seen within that time.

    The lookup runs in the asking trigger's own task, never in a task of ours: Airflow's triggerer
    answers a trigger's requests to its supervisor through that task's greenback portal, and a
    lookup from another task blocked the event loop and then hung every trigger.
    """
    from airflow_provider.hooks.kubeflow import KubeflowHook

    loop = asyncio.get_running_loop()
    while True:
        asked, future = _OPTIONS.get(kubeflow_conn_id, (0.0, None))
        if future is None or time.monotonic() - asked > OPTIONS_SECONDS or future.get_loop() is not loop:
            break
        try:
            return await asyncio.shield(future)
        except _LookupAbandoned:  # the trigger that asked was cancelled: ask again
            continue
    future = loop.create_future()
    _OPTIONS[kubeflow_conn_id] = (time.monotonic(), future)
    try:
        options = await KubeflowHook(kubeflow_conn_id).aoptions()
    except BaseException as exc:
        if _OPTIONS.get(kubeflow_conn_id, (0.0, None))[1] is future:  # the next trigger asks again
            del _OPTIONS[kubeflow_conn_id]
        future.set_exception(exc if isinstance(exc, Exception) else _LookupAbandoned())
        future.exception()  # retrieved: nobody may be waiting
        raise
    future.set_result(options)
    return options


class _LookupAbandoned(Exception):
    """The trigger reading the connection for the others was cancelled before it had the answer."""


async def shared_backend(kubeflow_conn_id: str) -> Any:
    """The process's backend for this connection (as it reads now), built once, off the event loop."""
    options = await connection_options(kubeflow_conn_id)
    key = (kubeflow_conn_id, options)  # a changed connection gets a backend of its own
    future = _BACKENDS.get(key)
    if future is None:
        future = _BACKENDS[key] = asyncio.ensure_future(asyncio.to_thread(_connected, options))
    try:
        return await asyncio.shield(future)
    except Exception:
        if _BACKENDS.get(key) is future:  # the next trigger tries again
            del _BACKENDS[key]
        raise


def _connected(options: Any) -> Any:
    from airflow_provider.hooks.kubeflow import KubeflowHook

    backend = KubeflowHook.backend_for(options)
    connect = getattr(backend, "connect", None)
    if connect is not None:
        connect()
    return backend


class KubeflowRunTrigger(BaseTrigger):
    """Yield one event when the work is terminal (`success`/`failed`), its deadline passed (`timeout`,
    the work cancelled), or waiting broke (`error`).

    :param handle: `Handle.to_dict()` of the work.
    :param kubeflow_conn_id: the connection to reach the backend with.
    :param deadline: wall-clock time (epoch seconds) at which the work is cancelled, or None.
    :param cancel_on_kill: cancel the work when the user kills the deferred task (False for sensors,
        which wait on work they did not start).
    :param startup_timeout: seconds the work may take to run (see the operators), or None.
    """

    def __init__(
        self,
        handle: dict[str, Any],
        kubeflow_conn_id: str = DEFAULT_CONN_ID,
        deadline: float | None = None,
        cancel_on_kill: bool = True,
        startup_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.handle = handle
        self.kubeflow_conn_id = kubeflow_conn_id
        self.deadline = deadline
        self.cancel_on_kill = cancel_on_kill
        self.startup_timeout = startup_timeout
        self._backend: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle,
                "kubeflow_conn_id": self.kubeflow_conn_id,
                "deadline": self.deadline,
                "cancel_on_kill": self.cancel_on_kill,
                "startup_timeout": self.startup_timeout,
            },
        )

    async def _get_backend(self) -> Any:
        if self._backend is None:
            self._backend = await shared_backend(self.kubeflow_conn_id)
        return self._backend

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from shared.errors import DeadlineExceeded, KubeflowTasksError
        from shared.operations import wait_for
        from shared.status import Handle, Status

        handle = Handle.from_dict(self.handle)
        seen: set[tuple[str, str]] = set()

        def progress(status: Status) -> None:
            if (status.state.value, status.raw_state) not in seen:
                seen.add((status.state.value, status.raw_state))
                self.log.info("%s %s: %s %s", handle.resource, handle.id, status.state.value, status.raw_state)

        try:
            backend = await self._get_backend()
            status = await wait_for(
                backend, handle, deadline=self.deadline, on_status=progress, startup_timeout=self.startup_timeout
            )
        except DeadlineExceeded as exc:
            final = exc.status.to_dict() if isinstance(exc.status, Status) else None
            yield TriggerEvent(self._event("timeout", str(exc), final))
            return
        except KubeflowTasksError as exc:
            yield TriggerEvent(self._event("error", str(exc), None))
            return
        outcome = "success" if status.state.value == "SUCCEEDED" else "failed"
        yield TriggerEvent(self._event(outcome, status.message, status.to_dict()))

    def _event(self, outcome: str, message: str, status: dict[str, Any] | None) -> dict[str, Any]:
        # The handle id makes the payload unique: HA triggerers may run the same trigger twice.
        return {"event": outcome, "message": message, "handle": self.handle, "status": status}

    async def on_kill(self) -> None:
        if not self.cancel_on_kill:
            return
        from shared.operations import cancel_pool
        from shared.status import Handle

        backend = await self._get_backend()
        handle = Handle.from_dict(self.handle)
        cancel = getattr(backend, "request_cancel", backend.cancel)  # start it; the end is not ours to wait
        loop = asyncio.get_running_loop()
        try:
            status = await asyncio.wait_for(loop.run_in_executor(cancel_pool(), cancel, handle), ON_KILL_CANCEL_TIMEOUT)
        except Exception as exc:  # best effort: the task is being killed anyway
            self.log.warning("could not cancel %s %s: %s", handle.resource, handle.id, exc)
            return
        self.log.info("cancelled %s %s: %s", handle.resource, handle.id, status.state.value)
