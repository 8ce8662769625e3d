"""Airflow 3.0 and newer: where the Task SDK names live, and which newer features this Airflow has.

The names come from the common-compat provider (`airflow.providers.common.compat.sdk`), which looks
in the newest location first (`airflow.sdk`, `airflow.sdk.exceptions`, `airflow.sdk.configuration`)
and falls back to where Airflow 3.0 keeps them. The feature flags say what only newer releases do;
the provider uses a feature when present and logs one line when it is absent.

Task SDK calls from a trigger. A connection lookup and `mask_secret` are requests to the
triggerer's supervisor over the trigger runner's one channel. Airflow 3.3 offers them as coroutines
(`BaseHook.aget_connection`, `airflow.sdk.log.amask_secret`). Airflow 3.0 has only the synchronous
calls, and its channel (`TriggerCommsDecoder.send`, an asgiref `async_to_sync` of `asend`) is safe
only from asgiref's `sync_to_async` thread, which hands the request back to the event loop, where
`asend` holds the channel's lock. From a plain thread (`asyncio.to_thread`) `async_to_sync` runs
`asend` on a second event loop, whose reads race the runner's own ("Response read out of order",
or a hang); on the event loop itself it raises "You cannot use AsyncToSync in the same thread as
an async event loop". `in_trigger` runs such synchronous code the way 3.0 allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from airflow import __version__ as AIRFLOW_VERSION
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowNotFoundException,
    BaseHook,
    BaseOperator,
    BaseOperatorLink,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

T = TypeVar("T")


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


AIRFLOW_MINOR = _version(AIRFLOW_VERSION)  # (3, 0) for 3.0.6
# A deferred task's trigger gets `on_kill` when the user marks the task failed or success or clears
# it (apache/airflow#65590); before 3.3 only the deadline cancels deferred work.
TRIGGER_ON_KILL = AIRFLOW_MINOR >= (3, 3)

try:  # Airflow 3.3+: masking a secret without blocking the event loop
    from airflow.sdk.log import amask_secret
except ImportError:
    amask_secret = None
# A trigger can look up its connection and mask what it holds with coroutines.
ASYNC_CONNECTION_LOOKUP = amask_secret is not None and hasattr(BaseHook, "aget_connection")


async def in_trigger(func: Callable[[], T]) -> T:
    """Run synchronous Task SDK code (a connection lookup, `mask_secret`) from a trigger: in
    asgiref's `sync_to_async` thread, the one way Airflow 3.0's trigger runner allows (see above)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(func)()


__all__ = [
    "AIRFLOW_MINOR",
    "AIRFLOW_VERSION",
    "ASYNC_CONNECTION_LOOKUP",
    "TRIGGER_ON_KILL",
    "AirflowException",
    "AirflowNotFoundException",
    "BaseHook",
    "BaseOperator",
    "BaseOperatorLink",
    "BaseSensorOperator",
    "PokeReturnValue",
    "amask_secret",
    "conf",
    "in_trigger",
]
