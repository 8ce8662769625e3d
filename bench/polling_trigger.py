"""The benchmarks' baseline trigger: one GET per job every 2 s, the way the cncf-kubernetes pod
trigger polls its pod (`poll_interval=2`).

It is a kinder baseline than the cncf one (which builds a new async API client for each poll): all
polling triggers of a connection in the process share one backend (one API client, built once off
the loop by `shared_backend`) and send their GETs to one thread pool as large as the client's
connection pool, so neither the client nor the pool is what limits it (nor do TLS handshakes for
connections the pool would discard). Importable by a real `airflow triggerer` (`bench.polling_trigger`)
when the repository root is on its PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

POLL_SECONDS = 2.0
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        from shared.backends.kubernetes.access import POOL_SIZE

        _POOL = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="polling-trigger")
    return _POOL


class PollingTrigger(BaseTrigger):
    """Yield one event (`success`/`failed`, with the handle) once a GET finds the job terminal."""

    def __init__(self, handle: dict[str, Any], kubeflow_conn_id: str, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.handle, self.kubeflow_conn_id, self.poll_seconds = handle, kubeflow_conn_id, poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"handle": self.handle, "kubeflow_conn_id": self.kubeflow_conn_id, "poll_seconds": self.poll_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider.triggers.kubeflow import shared_backend
        from shared.status import Handle

        backend = await shared_backend(self.kubeflow_conn_id)
        handle = Handle.from_dict(self.handle)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, self.poll_seconds))  # tasks that deferred at different moments
        while True:
            status = await loop.run_in_executor(_pool(), backend.status, handle)
            if status.terminal:
                outcome = "success" if status.state.value == "SUCCEEDED" else "failed"
                yield TriggerEvent({"event": outcome, "handle": self.handle, "status": status.to_dict()})
                return
            await asyncio.sleep(self.poll_seconds)
