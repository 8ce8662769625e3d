"""Retrying transient API errors: connection trouble, 429 (with Retry-After) and 5xx, never other 4xx.

Every backend talks to some HTTP API through a different client library (kubernetes, kfp_server_api,
requests, urllib3, MLflow). Their exceptions are recognised here without importing those libraries:
an exception can only be an instance of a library's class if that library is already imported, so the
classes are looked up in `sys.modules` and a library that was never imported is simply skipped.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import tenacity

from shared.errors import SpecError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    headers = getattr(exc, "headers", None)
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


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    log.warning(
        "transient error (attempt %d), retrying in %.1fs: %s",
        retry_state.attempt_number,
        retry_state.upcoming_sleep,
        " ".join(f"{type(exc).__name__}: {exc}".split())[:300],
    )


def retrying(
    *, attempts: int = 5, max_wait: float = 15.0, deadline: float | None = None
) -> tenacity.Retrying:
    """A tenacity `Retrying` for transient errors; use it as `retrying()(fn, *args)` or `for attempt in …`.

    The wait is exponential backoff with jitter from 0.2 s up to `max_wait`, raised to the server's
    Retry-After when that is longer (still capped at `max_wait`). It gives up after `attempts` calls or
    when the next wait would end after the `deadline` (a `time.monotonic()` value), and then re-raises
    the last exception as is, so callers see the real error, not a tenacity wrapper.
    """
    backoff = tenacity.wait_random_exponential(multiplier=0.2, min=min(0.2, max_wait), max=max_wait)

    def wait(retry_state: tenacity.RetryCallState) -> float:
        seconds = backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = retry_after(exc) if exc is not None else None
        if hint is not None:
            seconds = max(seconds, hint)
        return min(seconds, max_wait)

    stop: Callable[[tenacity.RetryCallState], bool] = tenacity.stop_after_attempt(attempts)
    if deadline is not None:

        def past_deadline(retry_state: tenacity.RetryCallState) -> bool:
            return time.monotonic() + retry_state.upcoming_sleep > deadline

        stop = tenacity.stop_any(stop, past_deadline)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=wait,
        stop=stop,
        reraise=True,
        before_sleep=_log_retry,
    )


def call_with_retries(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` with the default retry policy."""
    return retrying()(fn, *args, **kwargs)
