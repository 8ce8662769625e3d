"""A loopback fault proxy in front of the real API server.

The real server cannot fail on demand, so this sits between our clients and it: every request is
forwarded unchanged (the client's own bearer token included) unless the shared `Faults` pick one for
it — 500/503, 429 with Retry-After, a connection reset before or after the server processed the
request, a watch cut mid-stream, or a watch answered with 410 Gone. It reuses the double's HTTP
plumbing and fault model, so a fault means the same thing in front of either cluster.

Clients reach it over plain HTTP on 127.0.0.1 (see `write_kubeconfig`); it speaks TLS to the API
server with the stack's CA.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import urllib3
import yaml

from tests.k8s_double.faults import Faults
from tests.k8s_double.server import CUT, Request, Response, Server, Stream

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
              "content-length", "accept-encoding"}


def _status(code: int, message: str, reason: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class ForwardingApp:
    """The `App` the double's `Server` serves: forward to the real API server, faults on the way."""

    def __init__(self, upstream: str, ca_file: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=ca_file, maxsize=64,
                                        retries=False, timeout=urllib3.Timeout(connect=5, read=None))

    def authorized(self, request: Request) -> bool:
        return True  # the real server authenticates the forwarded token

    def unauthorized(self) -> Response:  # pragma: no cover - never: the upstream decides
        return Response(401, _status(401, "Unauthorized", "Unauthorized"))

    def error(self, status: int, message: str, retry_after: int | None = None) -> Response:
        reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "InternalError")
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Response(status, _status(status, message, reason), headers=headers)

    def stream_kind(self, request: Request) -> str | None:
        if request.query.get("watch") in ("1", "true", "True"):
            return "watch"
        if request.query.get("follow") in ("1", "true", "True"):
            return "follow"
        return None

    def handle(self, request: Request, fault: str | None) -> Response | Stream:
        if fault == "410":
            gone = _status(410, "too old resource version: injected by the fault proxy", "Expired")
            return Stream(iter([json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"]))
        headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
        streaming = self.stream_kind(request) is not None
        upstream = self.pool.request(request.method, self.upstream + request.raw_path, body=request.body or None,
                                     headers=headers, preload_content=not streaming)
        if streaming and upstream.status == 200:
            return Stream(self._chunks(upstream, cut_after=2 if fault == "watch-cut" else None),
                          content_type=upstream.headers.get("Content-Type", "application/json"))
        data = upstream.data if not streaming else upstream.read()
        extra = {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after", "warning", "audit-id")}
        return Response(upstream.status, data, content_type=upstream.headers.get("Content-Type", "application/json"),
                        headers=extra)

    @staticmethod
    def _chunks(upstream, cut_after: int | None) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in upstream.stream(64 * 1024, decode_content=True):
                yield chunk
                sent += 1
                if cut_after is not None and sent >= cut_after:
                    yield CUT
                    return
        finally:
            upstream.release_conn()


class FaultProxy:
    """`FaultProxy(server, ca).start()`; `.url`; `.faults` as in the double; `.stop()`."""

    def __init__(self, upstream: str, ca_file: str) -> None:
        self.faults = Faults()
        self.request_log: list[tuple[str, str, int]] = []
        self._stopping = threading.Event()
        self._server = Server(ForwardingApp(upstream, ca_file), self.faults, self.request_log, self._stopping)

    def start(self) -> FaultProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def write_kubeconfig(self, real_kubeconfig: str, path: Path) -> Path:
        """The stack's kubeconfig with its server replaced by this proxy (same user and token)."""
        config = yaml.safe_load(Path(real_kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        cluster["server"] = self.url
        cluster.pop("certificate-authority-data", None)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path
