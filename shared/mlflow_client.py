"""Our MLflow client calls: short timeouts, best effort after submission, secrets redacted.

Only `MlflowClient` is used, never the fluent API, so nothing global changes in the caller's process
(no active run, no tracking URI set). mlflow is imported inside functions: `import shared` stays light.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from shared.status import State

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("shared.mlflow_handoff")  # one logger for every MLflow warning of ours

T = TypeVar("T")

DEFAULT_EXPERIMENT = "kubeflow-tasks"
KEY_TAG = "kubeflow_tasks.key"
KEY_HASH_TAG = "kubeflow_tasks.key_sha256"
ATTEMPT_TAG = "kubeflow_tasks.attempt"
PREVIOUS_RUN_TAG = "kubeflow_tasks.previous_run_id"
STATE_TAG = "kubeflow_tasks.state"
MESSAGE_TAG = "kubeflow_tasks.message"
TRIAL_TAG = "kubeflow_tasks.trial"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

# MLflow's run statuses for our terminal states (KFP's MLflow plugin maps CANCELED to KILLED too).
RUN_STATUS = {State.SUCCEEDED: "FINISHED", State.FAILED: "FAILED", State.CANCELLED: "KILLED"}
TRIAL_STATUSES = frozenset(RUN_STATUS.values())

# The server rejects tag values over 8000 and param values over 6000 characters.
_MAX_VALUE = 5000

# MLflow's own defaults (120 s timeout, 7 retries with a factor-2 backoff) hold a task for minutes
# when the server is down, and `set_terminated` prints the run's URL (with any credentials in the
# tracking URI) to stdout, which is where the CLI writes its results. These apply only while our calls
# run and only where the user set nothing.
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class _ClientDefaults:
    """Sets `_CLIENT_DEFAULTS` in os.environ while any of our MLflow calls runs, then removes them.

    Why the environment, and not a setting of our own client: MLflow (checked in 3.17.2) has no
    other way to set these for one client. `RestStore._call_endpoint` calls
    `rest_utils.call_endpoint`, which passes no timeout, retries or backoff to `http_request`, so
    `http_request` reads `MLFLOW_HTTP_REQUEST_TIMEOUT` / `_MAX_RETRIES` / `_BACKOFF_FACTOR` from
    os.environ on every request (`_EnvironmentVariable.get`); `MlflowHostCreds` has no field for
    them, `MlflowClient` takes none, and the request-session cache is keyed by those values.
    Printing the run URL is decided in `TrackingServiceClient._log_url` (called by
    `set_terminated`) from `MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT` alone. MLflow's answer to a
    request for per-call timeouts (mlflow#5744) was these variables (mlflow#5745). The other routes
    all lean on MLflow's private code: a tracking-store plugin whose RestStore subclass replaces
    the private `_call_endpoint` with a copy of `call_endpoint`, the private `_DISABLE_429_RETRY`
    context variable, or our own REST client in place of MLflow's.

    So this is kept as narrow as it can be: only names the user has not set, only while one of our
    calls runs (a count lets calls from several threads overlap: the first sets, the last
    removes), and never handed to a child process (`environ()`). What remains: another thread of
    this process reading the environment during our call sees them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._added: list[str] = []

    def environ(self) -> dict[str, str]:
        """A copy of os.environ without the defaults our calls have set: what a child inherits.

        Why: a process started by another thread while one of our MLflow calls runs (a local run,
        a replica, an evaluation script) would otherwise keep our 15 s timeout and silenced URL."""
        with self._lock:
            env = dict(os.environ)
            for name in self._added:
                env.pop(name, None)
        return env

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                for name, value in _CLIENT_DEFAULTS.items():
                    if name not in os.environ:
                        os.environ[name] = value
                        self._added.append(name)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for name in self._added:
                        os.environ.pop(name, None)
                    self._added.clear()


client_defaults = _ClientDefaults()


def display_uri(tracking_uri: str) -> str:
    """The URI without user name and password, fit for messages."""
    parts = urlsplit(tracking_uri)
    if "@" not in parts.netloc:
        return tracking_uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_for(text: str, tracking_uri: str) -> str:
    """`text` without the tracking token, password or the URI's credentials."""
    from shared.secrets import redact, split_uri

    split_uri(tracking_uri)  # remembers its password, if any
    return redact(text)


def clean_value(value: Any, tracking_uri: str) -> str:
    return redact_for(str(value), tracking_uri)[:_MAX_VALUE]


def client_for(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    from shared.secrets import full_uri

    return MlflowClient(tracking_uri=full_uri(tracking_uri))


def attempt_call(tracking_uri: str, what: str, call: Callable[[], T]) -> T | None:
    """`call()`; on any failure log a warning and return None."""
    try:
        return call()
    except Exception as exc:  # an MLflow outage must not fail the task
        log.warning(
            "MLflow at %s: could not %s: %s",
            display_uri(tracking_uri),
            what,
            redact_for(" ".join(str(exc).split()), tracking_uri),
        )
        return None


def best_effort(tracking_uri: str, what: str, action: Callable[[MlflowClient], T]) -> T | None:
    """`action(client)` with our client defaults; on any failure log a warning and return None."""
    with client_defaults():
        return attempt_call(tracking_uri, what, lambda: action(client_for(tracking_uri)))


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any], tracking_uri: str) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(name, clean_value(value, tracking_uri)) for name, value in tags.items()])


def metric_batch(metrics: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(name, float(value), now, 0) for name, value in metrics.items()]
