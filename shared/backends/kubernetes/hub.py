"""Process-wide shared waiting: one watch per (cluster, namespace, plural), one KFP poller per endpoint.

One process (an Airflow triggerer, say) may wait on a thousand objects. Per-object polling costs a
request per object per interval; here every waiter subscribes to a shared source that runs in a
background thread (the kubernetes and kfp clients are synchronous) and posts events into the waiter's
asyncio queue with `loop.call_soon_threadsafe`.

- `CrWatch`: LIST once (in pages), then WATCH from the list's resourceVersion with bookmarks, resuming from the
  last resourceVersion seen after a cut or a 5xx (with backoff), relisting after 410 Gone (and telling
  subscribers about objects that vanished in between). It stops after `LINGER` seconds without
  subscribers, so an idle process holds no connection.
- `KfpPoller`: KFP has no watch API, so one thread asks for every subscribed run in one
  `list_runs` request (`run_id IN [...]`, 100 per page) every `interval` seconds with jitter; one
  poller per namespace, as multi-user KFP lists runs only within a namespace.

Events posted to subscribers are `(handle_id, what, payload)`: `what` is "object" (the current
object), "deleted" (the last object seen), "missing" (not in the list: the waiter asks for it
itself) or "error" (`payload` says why; sent after `ERROR_LIMIT` failures in a row).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared.retry import http_status, is_transient

log = logging.getLogger(__name__)

LINGER = 30.0  # seconds a source outlives its last subscriber, so back-to-back waits share it
WATCH_SECONDS = 60  # server-side timeout of one watch request; the stream is resumed after it
ERROR_LIMIT = 10  # failures in a row before subscribers are told (they keep RUNNING until then)
MAX_BACKOFF = 10.0
# Objects per LIST page. A page's JSON is decoded in one call that holds the GIL, so an event loop in
# the same process (the triggerer's) waits for it: 1,000 PyTorchJobs in one body took 0.3-0.5 s to
# decode on a loaded machine (the triggerer warns past 0.2 s). Pages of 100 bound that wait.
LIST_PAGE = 100


@dataclass(eq=False)
class Subscriber:
    """A waiter's inbox, owned by its event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def post(self, item: tuple[str, str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the waiter's loop is closed: it no longer listens
            pass


def backoff(errors: int) -> float:
    return min(MAX_BACKOFF, 0.2 * 2 ** min(errors, 8)) * random.uniform(0.5, 1.0)


class _Source:
    """Subscriptions by object id and the lifecycle of the background thread that serves them."""

    def __init__(self, label: str):
        self.label = label
        self.lock = threading.Lock()
        self.subs: dict[str, set[Subscriber]] = {}
        self.thread: threading.Thread | None = None
        self.idle_since = time.monotonic()
        self.wake = threading.Event()
        self.errors = 0

    def subscribe(self, object_id: str, sub: Subscriber) -> None:
        with self.lock:
            self.subs.setdefault(object_id, set()).add(sub)
            self._on_subscribe(object_id, sub)
            if self.thread is None:
                self._on_start()
                self.thread = threading.Thread(
                    target=self._serve, name=f"kubeflow-tasks {self.label}", daemon=True
                )
                self.thread.start()
        self.wake.set()

    def unsubscribe(self, object_id: str, sub: Subscriber) -> None:
        with self.lock:
            subs = self.subs.get(object_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.subs[object_id]
            if not self.subs:
                self.idle_since = time.monotonic()

    def _on_subscribe(self, object_id: str, sub: Subscriber) -> None:
        """Called under the lock: deliver what is already known."""

    def _on_start(self) -> None:
        """Called under the lock before a new thread starts: forget what a stopped thread knew."""

    def post(self, object_id: str, what: str, payload: Any) -> None:
        with self.lock:
            targets = list(self.subs.get(object_id, ()))
        for sub in targets:
            sub.post((object_id, what, payload))

    def post_all(self, what: str, payload: Any) -> None:
        with self.lock:
            targets = [(oid, sub) for oid, subs in self.subs.items() for sub in subs]
        for oid, sub in targets:
            sub.post((oid, what, payload))

    def should_stop(self) -> bool:
        """True (and the thread is forgotten) once nobody has listened for LINGER seconds."""
        with self.lock:
            if self.subs or time.monotonic() - self.idle_since < LINGER:
                return False
            self.thread = None
            return True

    def failed(self, exc: BaseException) -> float:
        """Count a failure; returns how long to back off."""
        self.errors += 1
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        # A cut watch or a lone 5xx is routine (the next request resumes); a run of them is news.
        level = logging.WARNING if self.errors >= 3 else logging.INFO
        log.log(level, "%s: %s (failure %d in a row)", self.label, text, self.errors)
        if self.errors >= ERROR_LIMIT or _status(exc) in (401, 403, 404):  # no retry fixes these
            self.post_all("error", f"{self.label}: {self.errors} failures in a row, last: {text}")
        return backoff(self.errors)

    def _serve(self) -> None:
        raise NotImplementedError


class CrWatch(_Source):
    """One shared LIST+WATCH of a custom resource plural in one namespace."""

    def __init__(self, cluster: Any, namespace: str, group: str, version: str, plural: str):
        super().__init__(f"watch {namespace}/{plural}")
        self.cluster = cluster
        self.namespace, self.group, self.version, self.plural = namespace, group, version, plural
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = False
        self.resource_version: str | None = None

    def object_id(self, name: str) -> str:
        return f"{self.namespace}/{self.plural}/{name}"

    def _on_start(self) -> None:
        self.synced, self.resource_version = False, None

    def _on_subscribe(self, object_id: str, sub: Subscriber) -> None:
        if self.synced and self.thread is not None:
            name = object_id.rsplit("/", 1)[-1]
            obj = self.cache.get(name)
            sub.post((object_id, "object", obj) if obj is not None else (object_id, "missing", None))

    def _serve(self) -> None:
        while not self.should_stop():
            started = time.monotonic()
            events = 0
            try:
                if self.resource_version is None:
                    self._relist()
                events = self._watch()
                self.errors = 0
            except Exception as exc:  # every failure is retried: the waiters must not be orphaned
                if _status(exc) == 410:  # our resourceVersion is too old: start again from a list
                    self.resource_version = None
                    continue
                if not is_transient(exc) and _status(exc) is None:
                    log.debug("%s: unexpected error", self.label, exc_info=True)
                self.wake.wait(self.failed(exc))
                self.wake.clear()
                continue
            if events == 0 and time.monotonic() - started < 1.0:
                time.sleep(0.2)  # a server that closes watches at once must not make us spin

    def _api(self) -> Any:
        return self.cluster.custom()

    def _relist(self) -> None:
        items: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:  # pages of one consistent snapshot; an expired token (410) starts the list again
            body = self._request(watch=False, token=token)
            items.update((item["metadata"]["name"], item) for item in body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        with self.lock:
            vanished = {name: obj for name, obj in self.cache.items() if name not in items}
            self.cache = items
            self.resource_version = metadata.get("resourceVersion")
            self.synced = True
            wanted = [oid for oid in self.subs]
        for name, obj in vanished.items():
            self.post(self.object_id(name), "deleted", obj)
        for oid in wanted:
            name = oid.rsplit("/", 1)[-1]
            if name in vanished:
                continue
            obj = items.get(name)
            self.post(oid, "object", obj) if obj is not None else self.post(oid, "missing", None)

    def _request(self, *, watch: bool, token: str | None = None) -> Any:
        from kubernetes.watch.watch import iter_resp_lines

        kwargs: dict[str, Any] = {"_preload_content": False}
        if watch:
            kwargs.update(
                watch=True,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=(self.cluster.request_timeout, WATCH_SECONDS + 15),
            )
        else:
            kwargs.update(limit=LIST_PAGE, _request_timeout=self.cluster.request_timeout)
            if token:
                kwargs["_continue"] = token
        response = self._api().list_namespaced_custom_object(
            self.group, self.version, self.namespace, self.plural, **kwargs
        )
        if not watch:
            return json.loads(response.data or b"{}")
        return _Stream(response, iter_resp_lines(response))

    def _watch(self) -> int:
        """Follow one watch request to its end; returns how many events it carried."""
        count = 0
        with self._request(watch=True) as stream:
            for line in stream.lines:
                count += 1
                event = json.loads(line)
                self._apply(event.get("type"), event.get("object") or {})
                if self.should_stop():
                    break
        return count

    def _apply(self, kind: str | None, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        if kind == "ERROR":
            code = obj.get("code")
            raise WatchError(int(code) if isinstance(code, int) else 500, str(obj.get("message") or obj))
        if metadata.get("resourceVersion"):
            self.resource_version = metadata["resourceVersion"]
        if kind == "BOOKMARK":
            return
        name = metadata.get("name")
        if not name:
            return
        with self.lock:
            if kind == "DELETED":
                self.cache.pop(name, None)
            else:
                self.cache[name] = obj
        self.post(self.object_id(name), "deleted" if kind == "DELETED" else "object", obj)


def _status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, WatchError) else http_status(exc)


class WatchError(Exception):
    """An ERROR event inside a watch stream (410 Gone means: relist)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class _Stream:
    """A streaming response that is always released, even when we stop reading early."""

    def __init__(self, response: Any, lines: Any):
        self.response, self.lines = response, lines

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.response.close()
        self.response.release_conn()


class KfpPoller(_Source):
    """One shared poller of KFP runs: many runs per `list_runs` request."""

    PAGE = 100
    PARALLEL = 4

    def __init__(self, kfp: Any, interval: float, namespace: str | None = None):
        super().__init__(f"poll {kfp.host}" + (f" namespace {namespace}" if namespace else ""))
        self.kfp = kfp
        self.interval = interval
        self.namespace = namespace
        self.last: dict[str, dict[str, Any]] = {}

    def _on_subscribe(self, object_id: str, sub: Subscriber) -> None:
        run = self.last.get(object_id.removeprefix("kfp/"))
        if run is not None:
            sub.post((object_id, "object", run))

    def _serve(self) -> None:
        while not self.should_stop():
            with self.lock:
                ids = [oid.removeprefix("kfp/") for oid in self.subs]
            started = time.monotonic()
            delay = self.interval * random.uniform(0.8, 1.2)  # jitter: processes do not poll in step
            try:
                if ids:
                    self._poll(ids)
                self.errors = 0
            except Exception as exc:  # keep polling; waiters hear about it after ERROR_LIMIT failures
                delay = max(delay, self.failed(exc))
            self.wake.clear()
            if self.wake.wait(max(0.0, delay - (time.monotonic() - started))):
                time.sleep(0.05)  # let a burst of new subscribers arrive, then ask for all of them at once

    def _poll(self, ids: list[str]) -> None:
        chunks = [ids[start : start + self.PAGE] for start in range(0, len(ids), self.PAGE)]
        with ThreadPoolExecutor(
            min(self.PARALLEL, len(chunks))
        ) as pool:  # a cycle is as slow as its slowest page
            pages = list(pool.map(self._list, chunks))
        found = {run["run_id"]: run for page in pages for run in page}
        self.last = {k: v for k, v in self.last.items() if k in found}
        for run_id in ids:
            run = found.get(run_id) or self._fetch(run_id)
            if run is None:
                self.post(f"kfp/{run_id}", "missing", None)
                continue
            if _changed(self.last.get(run_id), run):
                self.last[run_id] = run
                self.post(f"kfp/{run_id}", "object", run)

    def _list(self, chunk: list[str]) -> list[dict[str, Any]]:
        predicate = {"key": "run_id", "operation": "IN", "string_values": {"values": chunk}}
        body = self.kfp.request(
            self.kfp.runs().run_service_list_runs,
            filter=json.dumps({"predicates": [predicate]}),
            page_size=len(chunk),
            **({"namespace": self.namespace} if self.namespace else {}),
        )
        return body.get("runs") or []

    def _fetch(self, run_id: str) -> dict[str, Any] | None:
        """A run the list did not return (another namespace, or deleted)."""
        try:
            return self.kfp.request(self.kfp.runs().run_service_get_run, run_id)
        except Exception as exc:
            if http_status(exc) == 404:
                return None
            raise


def _changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    keys = ("state", "error", "finished_at", "plugins_output")
    return before is None or any(before.get(k) != after.get(k) for k in keys)


_REGISTRY: dict[tuple[str, ...], _Source] = {}
_REGISTRY_LOCK = threading.Lock()


def shared(key: tuple[str, ...], make: Callable[[], _Source]) -> _Source:
    """The process-wide source for `key`, created on first use."""
    with _REGISTRY_LOCK:
        source = _REGISTRY.get(key)
        if source is None:
            source = _REGISTRY[key] = make()
        return source
