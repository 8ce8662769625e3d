"""HTTP plumbing shared by the Kubernetes and KFP halves: parse, authenticate, inject faults, log.

Each API is an `App` with `handle(request) -> Response | Stream`. Responses are HTTP/1.1 with
Content-Length (keep-alive, as urllib3 pools connections); streams (watch, log follow) use chunked
encoding, which urllib3's streaming reader and the kubernetes `Watch` accept. A cut stream stops
without the terminating chunk, which the client sees as a broken response, as with a real proxy.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .faults import Faults

TRUE_WORDS = frozenset(("1", "t", "T", "TRUE", "true", "True"))
FALSE_WORDS = frozenset(("0", "f", "F", "FALSE", "false", "False"))


@dataclass
class Request:
    method: str
    path: str  # without the query
    raw_path: str  # with the query, as logged and matched by faults
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def flag(self, name: str) -> bool:
        """A boolean query parameter as the apiserver parses it (Go's strconv.ParseBool): the Python
        clients send `True`/`False`, curl users `true`/`1`. An unparseable value raises ValueError."""
        value = self.query.get(name, "")
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS or value == "":
            return False
        raise ValueError(f"invalid value for {name}: {value!r}: strconv.ParseBool: parsing {value!r}: invalid syntax")


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


CUT = b"<cut>"  # yielded by a stream to cut the connection mid-stream (no terminating chunk)


@dataclass
class Stream:
    """A streamed 200 response; `chunks` yields bytes until done, or `CUT` to break the connection."""

    chunks: Iterator[bytes]
    content_type: str = "application/json"


class App(Protocol):
    def authorized(self, request: Request) -> bool: ...
    def unauthorized(self) -> Response: ...
    def error(self, status: int, message: str, retry_after: int | None = None) -> Response: ...
    def stream_kind(self, request: Request) -> str | None: ...
    def handle(self, request: Request, fault: str | None) -> Response | Stream: ...


class Server:
    """One ThreadingHTTPServer on 127.0.0.1 (free port) serving one App, with shared faults and log."""

    def __init__(self, app: App, faults: Faults, log: list[tuple[str, str, int]], stopping: threading.Event) -> None:
        self.app, self.faults, self.log, self.stopping = app, faults, log, stopping
        self.log_lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"double_server": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, method: str, path: str, status: int) -> None:
        with self.log_lock:
            self.log.append((method, path, status))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double_server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        srv = self.double_server
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        req = Request(self.command, parts.path, self.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        app = srv.app
        if not app.authorized(req):
            return self._send(req, app.unauthorized())
        fault = srv.faults.pick(req.method, req.raw_path, app.stream_kind(req))
        if fault in ("500", "503", "429"):
            status = int(fault)
            message = {500: "Internal error occurred: injected", 503: "service unavailable",
                       429: "Too many requests, please try again later."}[status]
            return self._send(req, app.error(status, message, retry_after=1 if status == 429 else None))
        if fault == "reset":
            return self._reset(req)
        result = app.handle(req, fault)
        if fault == "reset-after":
            return self._reset(req)
        if isinstance(result, Stream):
            return self._stream(req, result)
        return self._send(req, result)

    def _send(self, req: Request, resp: Response) -> None:
        data = resp.body if isinstance(resp.body, bytes) else json.dumps(resp.body).encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.double_server.record(req.method, req.raw_path, resp.status)  # before the client can see it
        self.wfile.write(data)

    def _reset(self, req: Request) -> None:
        """Close with RST and no response: the client sees 'connection reset' / 'remote disconnected'."""
        self.double_server.record(req.method, req.raw_path, 0)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _stream(self, req: Request, stream: Stream) -> None:
        self.send_response(200)
        self.send_header("Content-Type", stream.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.double_server.record(req.method, req.raw_path, 200)
        try:
            for chunk in stream.chunks:
                if chunk is CUT:
                    self._cut()
                    return
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            close = getattr(stream.chunks, "close", None)
            if close:
                close()

    def _cut(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
