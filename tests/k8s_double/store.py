"""The double's object store: one resourceVersion sequence, a bounded event history, and waiters.

Like etcd behind an apiserver, every write gets the next resourceVersion and an event; watches
resume from any resourceVersion still in the history, and an older one is "too old" (410 Gone).
The history is bounded (`history_size`), and `compact()` drops it at once, so expiry really happens.
"""

from __future__ import annotations

import bisect
import copy
import json
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FIRST_RV = 1000


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    rv: int
    plural: str
    namespace: str
    name: str
    type: str  # ADDED, MODIFIED, DELETED
    labels: dict[str, str]
    body: str  # the object as JSON at this version


def parse_selector(selector: str) -> list[tuple[str, str, set[str]]]:
    """`k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6` -> [(key, op, values)]; raises ValueError."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    out = []
    for raw in (t.strip() for t in terms):
        if not raw:
            continue
        for op in (" notin ", " in "):
            if op in raw:
                key, values = raw.split(op, 1)
                values = values.strip()
                if not (values.startswith("(") and values.endswith(")")):
                    raise ValueError(f"unable to parse requirement: {raw!r}")
                out.append((key.strip(), op.strip(), {v.strip() for v in values[1:-1].split(",") if v.strip()}))
                break
        else:
            if "!=" in raw:
                key, value = raw.split("!=", 1)
                out.append((key.strip(), "!=", {value.strip()}))
            elif "=" in raw:
                key, value = raw.split("==", 1) if "==" in raw else raw.split("=", 1)
                out.append((key.strip(), "=", {value.strip()}))
            elif raw.startswith("!"):
                out.append((raw[1:].strip(), "!exists", set()))
            else:
                out.append((raw, "exists", set()))
    return out


def selector_matches(terms: list[tuple[str, str, set[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in terms:
        present = key in labels
        if op == "=" and labels.get(key) not in values:
            return False
        if op == "!=" and present and labels[key] in values:
            return False
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


class Store:
    """All objects of every kind, under one lock; `cond` wakes watchers and followers on every write."""

    def __init__(self, history_size: int = 2000) -> None:
        self.cond = threading.Condition()
        # A real cluster's etcd revision is never 0 (and "0" means "any version" to a list or watch),
        # so even an empty double lists at a real revision, and revisions before it are compacted.
        self.rv = FIRST_RV
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[Event] = []
        self.history_size = history_size
        self.compacted_rv = FIRST_RV  # watches from a resourceVersion below this are too old
        self.pod_logs: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.events_at: dict[str, list[tuple[float, str]]] = defaultdict(list)

    # -- reads (callers hold cond or accept a racy snapshot)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None, selector: str = "") -> list[dict[str, Any]]:
        terms = parse_selector(selector) if selector else []
        return [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items())
                if p == plural and (namespace is None or ns == namespace)
                and selector_matches(terms, o["metadata"].get("labels") or {})]

    def events_since(self, rv: int) -> list[Event]:
        start = bisect.bisect_right(self.history, rv, key=lambda e: e.rv)
        return self.history[start:]

    # -- writes (take the lock themselves; re-entrant use from controllers holding cond is fine)

    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            meta = obj["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            if plural != "pods":
                meta.setdefault("generation", 1)
            return self._write(plural, obj, "ADDED")

    def update(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            return self._write(plural, obj, "MODIFIED")

    def delete(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.pop((plural, namespace, name), None)
            if obj is None:
                return None
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(plural, obj, "DELETED")
            self.record_change(plural, obj, "Deleted")
            return copy.deepcopy(obj)

    def request_delete(self, plural: str, namespace: str, name: str, foreground: bool = False) -> dict[str, Any] | None:
        """A delete as the apiserver does it: the object goes at once without finalizers; with some
        (foreground deletion adds `foregroundDeletion`) it only gets a deletionTimestamp and stays until
        their owners remove them. None when there is no such object."""
        with self.cond:
            current = self.get(plural, namespace, name)
            if current is None:
                return None
            meta = current["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            if foreground and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if not finalizers:
                return self.delete(plural, namespace, name)
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 0
                meta["finalizers"] = finalizers
                current = self.update(plural, current)
                self.record_change(plural, current, "Deleting")
            return current

    def _write(self, plural: str, obj: dict[str, Any], event_type: str) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        self.objects[(plural, meta["namespace"], meta["name"])] = copy.deepcopy(obj)
        self._record(plural, obj, event_type)
        return copy.deepcopy(obj)

    def _record(self, plural: str, obj: dict[str, Any], event_type: str) -> None:
        meta = obj["metadata"]
        self.history.append(Event(self.rv, plural, meta["namespace"], meta["name"], event_type,
                                  dict(meta.get("labels") or {}), json.dumps(obj)))
        if len(self.history) > 2 * self.history_size:
            self.compact(keep=self.history_size)
        self.cond.notify_all()

    def compact(self, keep: int = 0) -> None:
        """Forget all but the newest `keep` events: older resourceVersions become too old to watch from."""
        with self.cond:
            dropped = self.history[: len(self.history) - keep] if keep else self.history
            if dropped:
                self.compacted_rv = max(self.compacted_rv, dropped[-1].rv)
            self.history = self.history[len(self.history) - keep:] if keep else []
            if not keep:
                self.compacted_rv = self.rv

    def append_log(self, namespace: str, pod: str, line: str) -> None:
        with self.cond:
            self.pod_logs[(namespace, pod)].append(line)
            self.cond.notify_all()

    def record_change(self, plural: str, obj: dict[str, Any], what: str) -> None:
        """Note when an object's observable state changed (benchmarks measure the delay to the waiter)."""
        meta = obj["metadata"]
        self.events_at[f"{plural}/{meta['namespace']}/{meta['name']}"].append((time.monotonic(), what))
