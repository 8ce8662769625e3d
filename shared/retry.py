"""The one retry layer: transient API errors (connection trouble, 429 with Retry-After, 5xx, never
other 4xx) are recognised and retried here, per request, within the task's deadline.

Every backend talks to some HTTP API through a different client library (kubernetes, kfp_server_api,
requests, urllib3, MLflow). Their exceptions are recognised here without importing those libraries:
an exception can only be an instance of a library's class if that library is already imported, so the
classes are looked up in `sys.modules` and a library that was never imported is simply skipped.
"""

from __future__ import annotations

import contextvars
import email.utils
import http.client
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import tenacity

from shared.errors import ApiError, SpecError, TransientError

log = logging.getLogger(__name__)


# Transport faults of the standard library. ConnectionError covers refused/reset/aborted connections
# and http.client.RemoteDisconnected; TimeoutError is also socket.timeout and asyncio.TimeoutError.
_STDLIB_TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    http.client.IncompleteRead,
)

# (module, class) of client-library exceptions that mean the connection failed, not the request.
_LIBRARY_TRANSIENT = (
    ("urllib3.exceptions", "ProtocolError"),
    ("urllib3.exceptions", "MaxRetryError"),
    ("urllib3.exceptions", "TimeoutError"),  # NewConnectionError, ConnectTimeoutError, ReadTimeoutError
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
    ("requests.exceptions", "ChunkedEncodingError"),
    ("requests.exceptions", "RetryError"),  # urllib3 gave up retrying 429/5xx
)
# TLS failures are configuration problems even though the libraries file them under connection errors.
_LIBRARY_PERMANENT = (
    ("urllib3.exceptions", "SSLError"),
    ("requests.exceptions", "SSLError"),
)
# Exceptions that carry the HTTP response's `.status` and `.headers`.
_API_EXCEPTIONS = (
    ("kubernetes.client.exceptions", "ApiException"),
    ("kfp_server_api.exceptions", "ApiException"),
)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """The classes among `names` whose module is already imported."""
    found = []
    for module_name, class_name in names:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it wraps.

    `raise X from Y` always counts; the implicit context only for MLflow, whose client wraps
    transport errors in a plain `MlflowException` raised inside the `except` block.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = current.__cause__
        if wrapped is None and _is_plain_mlflow_exception(current):
            wrapped = current.__context__
        current = wrapped


def _is_plain_mlflow_exception(exc: BaseException) -> bool:
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is None:
        return False
    return isinstance(exc, mlflow_exceptions.MlflowException) and not isinstance(
        exc, mlflow_exceptions.RestException
    )


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an API exception reports, if it is one we know."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, _loaded(_API_EXCEPTIONS)):
        status = getattr(exc, "status", None)
        return status if isinstance(status, int) and status >= 100 else None
    if isinstance(exc, _loaded((("requests.exceptions", "HTTPError"),))):
        response = getattr(exc, "response", None)
        return getattr(response, "status_code", None)
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        status = exc.get_http_status_code()
        # A plain MlflowException defaults to INTERNAL_ERROR (500) for any local failure; only the
        # server's answer (RestException) or an explicit "try later" code says something about HTTP.
        if isinstance(exc, mlflow_exceptions.RestException) or status in (429, 503):
            return status
    return None


def _status_is_transient(status: int) -> bool:
    # 501 Not Implemented is a 5xx that no retry will fix.
    return status == 429 or (500 <= status <= 599 and status != 501)


def _classify(exc: BaseException) -> bool | None:
    """True/False when `exc` itself decides; None to look at what it wraps."""
    if isinstance(exc, SpecError):
        return False
    if isinstance(exc, TransientError):
        return True
    status = http_status(exc)
    if status is not None:
        return _status_is_transient(status)
    if isinstance(exc, _loaded(_LIBRARY_PERMANENT)):
        return False
    max_retry = _loaded((("urllib3.exceptions", "MaxRetryError"),))
    if max_retry and isinstance(exc, max_retry) and isinstance(exc.reason, _loaded(_LIBRARY_PERMANENT)):
        return False
    if isinstance(exc, _STDLIB_TRANSIENT + _loaded(_LIBRARY_TRANSIENT)):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call may succeed: connection errors, timeouts, 429 and 5xx."""
    for link in _chain(exc):
        verdict = _classify(link)
        if verdict is not None:
            return verdict
    return False


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    headers = getattr(exc, "headers", None)  # ApiError and the client libraries' ApiException
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers if isinstance(headers, Mapping) else None


def _parse_retry_after(value: str) -> float | None:
    """Retry-After is either delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After), or None if it did not say."""
    for link in _chain(exc):
        if isinstance(link, TransientError) and link.retry_after is not None:
            return link.retry_after
        headers = _headers(link)
        if headers:
            for name, value in headers.items():
                if name.lower() == "retry-after":
                    return _parse_retry_after(str(value))
    return None


def api_error(exc: BaseException, what: str) -> BaseException:
    """`exc` as a one-line `ApiError` when it is an HTTP API's answer, else `exc` itself.

    The message is the server's own (`message` of a Kubernetes Status or a google.rpc.Status body),
    never the response headers the client libraries print (they may carry cookies)."""
    status = http_status(exc)
    if status is None or isinstance(exc, ApiError) or not isinstance(exc, _loaded(_API_EXCEPTIONS)):
        return exc
    raw = getattr(exc, "body", None) or b""
    body = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    message = (parsed.get("message") or parsed.get("error")) if isinstance(parsed, dict) else None
    text = message or body[:300] or getattr(exc, "reason", "") or "no message"
    headers = {str(k): str(v) for k, v in (_headers(exc) or {}).items() if str(k).lower() == "retry-after"}
    return ApiError(f"{what}: HTTP {status}: {text}", status, body, headers)


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    if exc is not None:  # the server's message only: a client library's text has the headers (cookies)
        exc = api_error(exc, "request")
    log.warning(
        "transient error (attempt %d), retrying in %.1fs: %s",
        retry_state.attempt_number,
        retry_state.upcoming_sleep,
        " ".join(f"{type(exc).__name__}: {exc}".split())[:300],
    )


MAX_RETRY_AFTER = 120.0  # without a deadline, the longest Retry-After we wait for
ATTEMPTS = 8  # per request: at 20% random faults the chance that all fail is 0.2**8
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "kubeflow_tasks_deadline", default=None
)


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Every retry inside (this thread and what `asyncio.to_thread` starts from it) stops by `deadline`.

    `deadline` is wall-clock (`time.time()`), like the task's: the same in every process. A nested
    scope can only shorten it."""
    current = _DEADLINE.get()
    if deadline is None or (current is not None and current <= deadline):
        yield
        return
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    return _DEADLINE.get()


def retrying(
    *,
    attempts: int = ATTEMPTS,
    max_wait: float = 5.0,
    deadline: float | None = None,
    also: Callable[[BaseException], bool] | None = None,
) -> tenacity.Retrying:
    """A tenacity `Retrying` for transient errors; use it as `retrying()(fn, *args)` or `for attempt in …`.

    This is the one retry layer: every request is retried here and nowhere above it. The wait is
    exponential backoff with jitter from 0.2 s up to `max_wait`, or the server's Retry-After when that
    is longer (up to the deadline, else `MAX_RETRY_AFTER`). It gives up after `attempts` calls, or when
    the next wait would end after the deadline (wall-clock: `deadline`, else the `deadline_scope`), and
    then re-raises the last exception as is. `also` names further errors worth another try (a create
    that met a concurrent one, say); it never makes a permanent error transient by itself.
    """
    backoff = tenacity.wait_random_exponential(multiplier=0.2, min=min(0.2, max_wait), max=max_wait)

    def until() -> float | None:
        scoped = _DEADLINE.get()
        return min(d for d in (deadline, scoped) if d is not None) if (deadline or scoped) else None

    def wait(retry_state: tenacity.RetryCallState) -> float:
        seconds = backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = retry_after(exc) if exc is not None else None
        if hint is not None:
            end = until()
            cap = MAX_RETRY_AFTER if end is None else max(0.0, end - time.time())
            seconds = max(seconds, min(hint, cap))
        return seconds

    def past_deadline(retry_state: tenacity.RetryCallState) -> bool:
        end = until()
        return end is not None and time.time() + retry_state.upcoming_sleep > end

    def worth_retrying(exc: BaseException) -> bool:
        return is_transient(exc) or (also is not None and also(exc))

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(worth_retrying),
        wait=wait,
        stop=tenacity.stop_any(tenacity.stop_after_attempt(attempts), past_deadline),
        reraise=True,
        before_sleep=_log_retry,
    )
