"""How Airflow repeats or ends a try, read from what Airflow itself records.

Clear or retry. Airflow numbers every try of a task instance (`try_number`) and allows tries up to
`max_tries`. A task instance starts with `max_tries = retries`; clearing it sets
`max_tries = try_number + retries` (`clear_task_instances`, and the scheduler does the same for a
running task cleared and terminated), which opens a new sequence of tries. So the first try of the
current sequence is `max_tries - retries + 1`, the number Airflow's own task runner computes for
rescheduled sensors (`RuntimeTaskInstance.get_first_reschedule_date`). A try with that number (or
lower, when `retries` was lowered since) is the first after a new DAG run or a clear: a person asked
for the task to run; any later try is a retry.

User stop or worker shutdown. A synchronous task learns of both the same way: its process gets
SIGTERM (from its supervisor when the API server answers its heartbeat with "not running any more",
and forwarded by the supervisor, or sent directly, when the worker shuts down or is evicted). What
differs is the task instance's state on the server: a user's mark-failed, mark-success or clear has
already changed it, a shutdown has not. So on SIGTERM the operator asks the server for the state.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

RUNNING = "running"


def first_try_of_sequence(ti: Any, retries: int) -> bool:
    """True for the first try after a new DAG run or a clear; False for a retry."""
    max_tries = getattr(ti, "max_tries", None)
    if max_tries is None:  # not a Task SDK task instance: say "retry", the behaviour that never reruns
        return False
    return ti.try_number <= max_tries - (retries or 0) + 1


def server_state(ti: Any) -> str | None:
    """This task instance's state as the API server has it, or None when it cannot be asked."""
    try:
        states = ti.get_task_states(
            dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=ti.map_index
        )
    except Exception:  # no supervisor to ask (a bare process), or it is gone
        return None
    by_task = states.get(ti.run_id) or {}
    name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}_{ti.map_index}"
    state = by_task.get(name)
    return None if state is None else str(getattr(state, "value", state))


@contextmanager
def on_sigterm(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` (it must only set a flag or an event) instead of Airflow's SIGTERM handler.

    Airflow's handler calls `on_kill`, which cancels: deciding between a user's stop and a shutdown
    needs a question to the server, which a signal handler must not ask. Outside the main thread
    (where no signal can be caught) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: callback())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
