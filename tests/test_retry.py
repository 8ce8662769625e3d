"""Classification of real client-library exceptions, and the retry policy's observable behaviour."""

from __future__ import annotations

import email.utils
import http.client
import socket
import time
from collections.abc import Callable

import kfp_server_api
import kubernetes.client
import pytest
import requests
import urllib3

from shared.errors import SpecError, TransientError
from shared.retry import deadline_scope, is_transient, retry_after, retrying


def _response(status: int, headers: dict[str, str] | None = None) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(
        body=b"{}", headers=headers or {}, status=status, reason="reason", preload_content=True
    )


def k8s_error(status: int, headers: dict[str, str] | None = None) -> kubernetes.client.ApiException:
    from kubernetes.client.rest import RESTResponse

    return kubernetes.client.ApiException(http_resp=RESTResponse(_response(status, headers)))


def kfp_error(status: int, headers: dict[str, str] | None = None) -> kfp_server_api.ApiException:
    from kfp_server_api.rest import RESTResponse

    return kfp_server_api.ApiException(http_resp=RESTResponse(_response(status, headers)))


def requests_http_error(status: int, headers: dict[str, str] | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response.url = "http://example.invalid/api"
    try:
        response.raise_for_status()
    except requests.HTTPError as exc:
        return exc
    raise AssertionError("raise_for_status did not raise")


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test wants whatever the library raises
        return exc
    raise AssertionError("no exception")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (k8s_error(503), True),
        (k8s_error(500), True),
        (k8s_error(429, {"Retry-After": "2"}), True),
        (k8s_error(404), False),
        (k8s_error(409), False),
        (k8s_error(400), False),
        (k8s_error(501), False),
        (kfp_error(502), True),
        (kfp_error(429), True),
        (kfp_error(403), False),
        (requests_http_error(504), True),
        (requests_http_error(401), False),
        (requests.exceptions.SSLError("certificate verify failed"), False),
        (requests.exceptions.ReadTimeout("read timed out"), True),
        (requests.exceptions.ChunkedEncodingError("connection broken"), True),
        (urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), True),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), True),
        (http.client.RemoteDisconnected("Remote end closed connection without response"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError("timed out"), True),
        (socket.gaierror(-3, "Temporary failure in name resolution"), True),
        (TransientError("watch expired"), True),
        (SpecError("spec.x", "expected an integer"), False),
        (ValueError("bad"), False),
        (FileNotFoundError(2, "missing"), False),
    ],
    ids=lambda value: type(value).__name__ + (f"-{value.status}" if hasattr(value, "status") else ""),
)
def test_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_real_connection_failures_are_transient(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/"
    new_connection = _raised(lambda: urllib3.PoolManager(retries=False).request("GET", url))
    assert isinstance(new_connection, urllib3.exceptions.NewConnectionError)
    max_retry = _raised(lambda: urllib3.PoolManager(retries=urllib3.Retry(0)).request("GET", url))
    assert isinstance(max_retry, urllib3.exceptions.MaxRetryError)
    refused = _raised(lambda: requests.get(url, timeout=2))
    assert isinstance(refused, requests.ConnectionError)
    for exc in (new_connection, max_retry, refused):
        assert is_transient(exc), exc


def test_read_timeout_of_a_silent_server() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts into the backlog, never answers
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        exc = _raised(lambda: requests.get(url, timeout=0.2))
    assert isinstance(exc, requests.exceptions.ReadTimeout)
    assert is_transient(exc)


def test_mlflow_exceptions(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.tracking import MlflowClient

    assert not is_transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}))
    assert not is_transient(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert is_transient(RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}))
    assert is_transient(RestException({"error_code": "INTERNAL_ERROR", "message": "db"}))
    # A plain MlflowException defaults to INTERNAL_ERROR for any local failure: not an HTTP 500.
    assert not is_transient(MlflowException("invalid metric name"))

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = _raised(lambda: MlflowClient(f"http://127.0.0.1:{closed_port}").get_experiment("0"))
    assert type(down) is MlflowException  # the client wraps the connection error
    assert is_transient(down)


def test_wrapped_errors() -> None:
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("list failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    # An unrelated error raised while handling one is not a transient fault.
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError:
            raise KeyError("status")  # noqa: B904
    except KeyError as outer:
        assert not is_transient(outer)


def test_retry_after() -> None:
    assert retry_after(k8s_error(429, {"Retry-After": "3"})) == 3.0
    assert retry_after(kfp_error(503, {"retry-after": "1.5"})) == 1.5
    assert retry_after(requests_http_error(429, {"Retry-After": "7"})) == 7.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(k8s_error(429, {"Retry-After": future})) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after(k8s_error(503, {"Retry-After": past})) == 0.0
    assert retry_after(k8s_error(503, {"Retry-After": "soon"})) is None
    assert retry_after(k8s_error(503)) is None
    assert retry_after(TransientError("busy", retry_after=4)) == 4
    assert retry_after(ConnectionResetError()) is None


class Flaky:
    """A real callable that raises the given errors in turn, then returns "ok"; records call times."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls: list[float] = []

    def __call__(self, value: str = "ok") -> str:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return value


def test_retries_transient_errors_until_success() -> None:
    fn = Flaky(k8s_error(503), ConnectionResetError(104, "reset"), kfp_error(502))
    assert retrying(max_wait=0.01)(fn, "done") == "done"
    assert len(fn.calls) == 4


def test_client_errors_are_not_retried() -> None:
    fn = Flaky(k8s_error(404))
    with pytest.raises(kubernetes.client.ApiException) as info:
        retrying(max_wait=0.01)(fn)
    assert info.value.status == 404
    assert len(fn.calls) == 1
    spec_error = Flaky(SpecError("spec.replicas", "expected a positive integer"))
    with pytest.raises(SpecError):
        retrying(max_wait=0.01)(spec_error)
    assert len(spec_error.calls) == 1


def test_gives_up_after_attempts_with_the_real_error() -> None:
    fn = Flaky(*(k8s_error(503) for _ in range(10)))
    with pytest.raises(kubernetes.client.ApiException) as info:
        retrying(attempts=3, max_wait=0.01)(fn)
    assert info.value.status == 503
    assert len(fn.calls) == 3


def test_honours_retry_after_beyond_the_backoff_cap_up_to_the_deadline() -> None:
    fn = Flaky(k8s_error(429, {"Retry-After": "1.2"}))
    with deadline_scope(time.time() + 10):
        assert retrying(max_wait=0.05)(fn) == "ok"
    assert fn.calls[1] - fn.calls[0] >= 1.2  # the backoff alone would be at most 0.05 s

    hopeless = Flaky(k8s_error(429, {"Retry-After": "120"}))  # later than the deadline: give up now
    started = time.monotonic()
    with deadline_scope(time.time() + 1.0), pytest.raises(kubernetes.client.ApiException):
        retrying(max_wait=0.05)(hopeless)
    assert len(hopeless.calls) == 1 and time.monotonic() - started < 0.5


def test_stops_when_the_next_wait_would_pass_the_deadline() -> None:
    fn = Flaky(k8s_error(503, {"Retry-After": "0.5"}), k8s_error(503))
    with pytest.raises(kubernetes.client.ApiException):
        retrying(max_wait=1.0, deadline=time.time() + 0.2)(fn)
    assert len(fn.calls) == 1


def test_a_deadline_scope_bounds_every_retry_inside_it_and_only_shortens() -> None:
    fn = Flaky(*(k8s_error(503) for _ in range(50)))
    started = time.monotonic()
    with deadline_scope(time.time() + 0.6), deadline_scope(time.time() + 60):  # the inner one cannot extend
        with pytest.raises(kubernetes.client.ApiException):
            retrying(attempts=50, max_wait=0.2)(fn)
    assert time.monotonic() - started < 1.0 and 1 < len(fn.calls) < 50


def test_iterator_form() -> None:
    fn = Flaky(TimeoutError("timed out"))
    for attempt in retrying(max_wait=0.01):
        with attempt:
            result = fn()
    assert result == "ok"
    assert len(fn.calls) == 2

