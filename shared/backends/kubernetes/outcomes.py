"""The outcome of a training job the operator removes after it ends (`ttlSecondsAfterFinished`).

Why: a retry usually comes because its waiter was killed. By then the job may have succeeded and
been removed by its TTL, and a vanished object says nothing: the retry would train again. So a job
created with a TTL carries our finalizer `kubeflow-tasks.dev/keep-outcome`: the operator's delete
only marks it (deletionTimestamp) and it stays readable with its final status. Whoever of ours first
sees it terminal (a waiter's watch or status, a retry's status) writes the outcome to a ConfigMap
beside it, `kubeflow-tasks-outcome-<plural>-<name>`, and only then removes the finalizer; a failed
write leaves the finalizer, so the object stays and nothing is lost. Our own cancel removes the
finalizer too. When the object is gone, `status` and `find` read the record. Records older than
`RETENTION` are pruned (at most once per `PRUNE_INTERVAL` and namespace, when one is written).

Katib Experiments are never removed by Katib (it has no TTL for them; `retain` is about a trial's
own resources), so they never get the finalizer. Objects without our finalizer are never patched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.backends.kubernetes import manifests, naming
from shared.backends.kubernetes.access import Cluster, call, read_body
from shared.retry import http_status
from shared.status import Handle, Status

log = logging.getLogger(__name__)

FINALIZER = f"{naming.DOMAIN}/keep-outcome"
RECORD_LABEL = f"{naming.DOMAIN}/outcome"  # on every record: what pruning lists
RECORD_PREFIX = "kubeflow-tasks-outcome-"
RETENTION = timedelta(days=7)  # longer than any retry schedule waits; a later retry trains again
PRUNE_INTERVAL = 3600.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_pruned_at: dict[tuple[str, str], float] = {}
_pruned_lock = threading.Lock()


def wants_finalizer(body: dict[str, Any]) -> bool:
    """A training job that asks the operator to remove it after it ends."""
    run_policy = (body.get("spec") or {}).get("runPolicy") or {}
    return body.get("kind") in ("PyTorchJob", "TFJob") and run_policy.get("ttlSecondsAfterFinished") is not None


def add_finalizer(body: dict[str, Any]) -> None:
    finalizers = body["metadata"].setdefault("finalizers", [])
    if FINALIZER not in finalizers:
        finalizers.append(FINALIZER)


def holds(obj: dict[str, Any]) -> bool:
    return FINALIZER in ((obj.get("metadata") or {}).get("finalizers") or [])


def record_name(plural: str, name: str) -> str:
    return f"{RECORD_PREFIX}{plural}-{name}"


class Outcomes:
    """Records in the namespace of each job; every call is bounded by `request_timeout`."""

    def __init__(self, cluster: Cluster, request_timeout: float):
        self.cluster = cluster
        self.request_timeout = request_timeout

    # ------------------------------------------------------------------ settling a terminal job

    def settle(self, handle: Handle, plural: str, obj: dict[str, Any], status: Status, fingerprint: str | None) -> None:
        """Record the end of a terminal job that holds our finalizer, then release it; release it from
        a running job someone deletes (there is no end to keep, and the delete must finish).

        Never raises: the caller has its status either way, and a job whose end we could not record
        keeps its finalizer (it stays readable; the next look settles it)."""
        deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp"))
        if not holds(obj) or not (status.terminal or deleting):
            return
        if status.terminal:
            try:
                self.write(handle, status, fingerprint, uid=obj["metadata"].get("uid", ""))
            except Exception as exc:
                log.warning("could not record the outcome of %s (it keeps finalizer %s): %s",
                            handle.id, FINALIZER, exc)
                return
        try:
            self.release(handle, plural, obj)
        except Exception as exc:
            log.warning("could not remove finalizer %s from %s: %s", FINALIZER, handle.id, exc)

    def write(self, handle: Handle, status: Status, fingerprint: str | None, uid: str = "") -> None:
        """Create the record; one that exists already (another process was first) is the same end."""
        namespace = handle.namespace or handle.id.split("/", 1)[0]
        plural, name = handle.id.split("/")[1:]
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": record_name(plural, name),
                "namespace": namespace,
                "labels": {naming.KEY_HASH_LABEL: naming.key_hash(handle.key), RECORD_LABEL: "true"},
                "annotations": {naming.KEY_ANNOTATION: handle.key},
            },
            "data": {
                "key": handle.key,
                "handle": json.dumps(handle.to_dict(), sort_keys=True),
                "status": json.dumps(status.to_dict(), sort_keys=True, default=str),
                "fingerprint": fingerprint or "",
                "uid": uid,
                "recorded-at": datetime.now(UTC).strftime(_TIME_FORMAT),
            },
        }
        try:
            call(self.cluster.core().create_namespaced_config_map, namespace, body,
                 _preload_content=False, _request_timeout=self.request_timeout)
        except Exception as exc:
            if http_status(exc) != 409:
                raise
        self.prune(namespace)

    def release(self, handle: Handle, plural: str, obj: dict[str, Any]) -> None:
        """Remove our finalizer, guarded by the object's resourceVersion so a concurrent change of the
        list (another controller's finalizer) is never clobbered: a conflict re-reads and retries."""
        resource = manifests.BY_PLURAL[plural]
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        api = self.cluster.custom()
        args = (resource.group, resource.version, namespace, plural, name)
        for _ in range(5):
            meta = obj["metadata"]
            finalizers = meta.get("finalizers") or []
            if FINALIZER not in finalizers:
                return
            patch = {"metadata": {"resourceVersion": meta["resourceVersion"],
                                  "finalizers": [f for f in finalizers if f != FINALIZER]}}
            try:
                call(api.patch_namespaced_custom_object, *args, patch,
                     _preload_content=False, _request_timeout=self.request_timeout)
                return
            except Exception as exc:
                if http_status(exc) == 404:
                    return
                if http_status(exc) != 409:
                    raise
            try:
                obj = read_body(call(api.get_namespaced_custom_object, *args,
                                     _preload_content=False, _request_timeout=self.request_timeout))
            except Exception as exc:
                if http_status(exc) == 404:
                    return
                raise
        raise RuntimeError(f"the finalizers of {handle.id} kept changing")

    # ------------------------------------------------------------------ reading records

    def recorded(self, handle_id: str) -> tuple[Handle, Status, str] | None:
        """(handle, status, fingerprint) recorded for a job, None without a record (or no right to read it)."""
        namespace, plural, name = handle_id.split("/")
        try:
            body = read_body(call(self.cluster.core().read_namespaced_config_map, record_name(plural, name),
                                  namespace, _preload_content=False, _request_timeout=self.request_timeout))
        except Exception as exc:
            if http_status(exc) in (403, 404):
                return None
            raise
        return _parse(body)

    def for_key(self, key: str, namespace: str) -> list[tuple[Handle, Status, str]]:
        """Every record of `key` in `namespace` (none when we may not list ConfigMaps there)."""
        selector = f"{naming.KEY_HASH_LABEL}={naming.key_hash(key)},{RECORD_LABEL}=true"
        try:
            body = read_body(call(self.cluster.core().list_namespaced_config_map, namespace,
                                  label_selector=selector, _preload_content=False,
                                  _request_timeout=self.request_timeout))
        except Exception as exc:
            if http_status(exc) == 403:
                log.debug("may not list outcome records in %s: %s", namespace, exc)
                return []
            raise
        found = [_parse(item) for item in body.get("items") or []]
        return [f for f in found if f is not None and f[0].key == key]

    def prune(self, namespace: str) -> None:
        """Delete records older than RETENTION; at most once per PRUNE_INTERVAL per namespace."""
        slot = (self.cluster.identity, namespace)
        with _pruned_lock:
            if time.monotonic() - _pruned_at.get(slot, -PRUNE_INTERVAL) < PRUNE_INTERVAL:
                return
            _pruned_at[slot] = time.monotonic()
        core = self.cluster.core()
        try:
            body = read_body(call(core.list_namespaced_config_map, namespace, label_selector=f"{RECORD_LABEL}=true",
                                  _preload_content=False, _request_timeout=self.request_timeout))
            oldest = datetime.now(UTC) - RETENTION
            for item in body.get("items") or []:
                meta = item["metadata"]
                if not meta["name"].startswith(RECORD_PREFIX) or _recorded_at(item) >= oldest:
                    continue
                try:
                    call(core.delete_namespaced_config_map, meta["name"], namespace,
                         _preload_content=False, _request_timeout=self.request_timeout)
                except Exception as exc:
                    if http_status(exc) != 404:
                        raise
        except Exception as exc:  # pruning is housekeeping: it never fails the work
            log.warning("could not prune outcome records in %s: %s", namespace, exc)


def _recorded_at(item: dict[str, Any]) -> datetime:
    try:
        return datetime.strptime((item.get("data") or {}).get("recorded-at", ""), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)  # not ours to judge: keep it


def _parse(body: dict[str, Any]) -> tuple[Handle, Status, str] | None:
    data = body.get("data") or {}
    try:
        handle = Handle.from_dict(json.loads(data["handle"]))
        status = Status.from_dict(json.loads(data["status"]))
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring malformed outcome record %s", (body.get("metadata") or {}).get("name"))
        return None
    return handle, status, data.get("fingerprint", "")
