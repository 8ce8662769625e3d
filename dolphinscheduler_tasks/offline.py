"""Generating workflow definitions without DolphinScheduler's Java gateway.

pydolphinscheduler asks the gateway for every task's code when the task is constructed
(`Task.gen_code_and_version`). Inside `offline()` our task types derive the code from the project,
workflow and task names instead (version 1), so a definition can be generated, reviewed, diffed and
tested on a machine with no DolphinScheduler at all. The same names always give the same code.
Submitting such a definition is possible (the server accepts given codes), but normally one submits
online so the server allocates them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator

_OFFLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("kubeflow_tasks_ds_offline", default=False)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Within this block our task types get deterministic codes instead of asking the gateway."""
    token = _OFFLINE.set(True)
    try:
        yield
    finally:
        _OFFLINE.reset(token)


def is_offline() -> bool:
    return _OFFLINE.get()


def offline_code(project: str, workflow: str, task: str) -> int:
    """A positive 13-digit code (the size DolphinScheduler's own codes have) from the three names."""
    digest = hashlib.sha256(f"{project}\0{workflow}\0{task}".encode()).digest()
    return 10**12 + int.from_bytes(digest[:8], "big") % (9 * 10**12)
