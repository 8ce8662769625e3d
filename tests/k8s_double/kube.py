"""The part of the Kubernetes API the backend uses: Kubeflow CRs, pods, pod logs, Status errors.

Semantics follow ../shared/specs/CONVENTIONS.md: status subresource, resourceVersion on every
write, generation on spec changes, 409 on a stale resourceVersion, watches with bookmarks and
410 for a compacted resourceVersion, foreground/background/orphan deletion with a garbage
collector (in controllers.py) that removes dependents by ownerReferences.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .server import CUT, TRUE_WORDS, Request, Response, Stream
from .store import Store, now_rfc3339, parse_selector, selector_matches
from .validation import Admission, AdmissionError, prune


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = {r.plural: r for r in (
    Resource("kubeflow.org", "v1", "PyTorchJob", "pytorchjobs"),
    Resource("kubeflow.org", "v1", "TFJob", "tfjobs"),
    Resource("kubeflow.org", "v1beta1", "Experiment", "experiments"),
    Resource("kubeflow.org", "v1beta1", "Trial", "trials"),
    Resource("", "v1", "Pod", "pods"),
    Resource("", "v1", "ConfigMap", "configmaps", status_subresource=False),
)}
ADMITTED = {"pytorchjobs", "tfjobs", "experiments", "trials"}
WRITABLE = ADMITTED | {"configmaps"}  # what clients may create and update (pods are the controllers')
KUEUE_MANAGED = {"pytorchjobs", "tfjobs"}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

CR_PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/(?:namespaces/(?P<ns>[^/]+)/)?(?P<plural>[^/]+)"
                     r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
CORE_PATH = re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
TERMINAL_POD_PHASES = ("Succeeded", "Failed")


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class KubeError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.response = Response(code, status_body(code, reason, message, details))


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = _merge_patch(result.get(k), v)
    return result


def _json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op["op"] == "test":
            value = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if value != op["value"]:
                raise KubeError(422, "Invalid", f"the server rejected our request due to an error in our request: test failed at {op['path']}")
        else:
            raise KubeError(400, "BadRequest", f"unsupported json patch op {op['op']}")
    return doc


class KubeApi:
    """Routes Kubernetes API requests to the store; the controllers change status behind it."""

    def __init__(self, store: Store, admission: Admission, stopping: threading.Event) -> None:
        self.store, self.admission, self.stopping = store, admission, stopping
        self.tokens: set[str] = set()
        self.bookmark_interval = 1.0
        self.watch_cut_after = 2  # events sent before a "watch-cut" fault breaks the stream
        self.policy_webhooks: list[Any] = []  # see _policy_webhooks
        self.dry_runs = 0  # dry-run creates answered (they leave nothing in the store)
        self.absent: set[str] = set()  # plurals whose CRD is "not installed": every request is a 404
        self.forbidden: set[str] = set()  # plurals RBAC keeps from us: every request is a 403

    # -- App protocol

    def authorized(self, req: Request) -> bool:
        auth = req.headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def unauthorized(self) -> Response:
        return Response(401, status_body(401, "Unauthorized", "Unauthorized"))

    def error(self, status: int, message: str, retry_after: int | None = None) -> Response:
        reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}.get(status, "InternalError")
        details = {"retryAfterSeconds": retry_after} if retry_after else None
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        return Response(status, status_body(status, reason, message, details), headers=headers)

    def stream_kind(self, req: Request) -> str | None:
        """"watch" for a watch, "follow" for a followed pod log, else None (which faults can hit it)."""
        if req.query.get("watch") in TRUE_WORDS:
            return "watch"
        return "follow" if req.path.endswith("/log") and req.query.get("follow") in TRUE_WORDS else None

    def handle(self, req: Request, fault: str | None) -> Response | Stream:
        try:
            return self._route(req, fault)
        except KubeError as err:
            return err.response
        except AdmissionError as err:
            return Response(err.code, err.status)

    # -- routing

    def _route(self, req: Request, fault: str | None) -> Response | Stream:
        path = req.path.rstrip("/") or "/"
        if path == "/version":
            return Response(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-kubeflow-tasks-double",
                                  "platform": "linux/amd64"})
        if path == "/api":
            return Response(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return Response(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "kubeflow.org", "versions": [{"groupVersion": f"kubeflow.org/{v}", "version": v}
                                                      for v in ("v1", "v1beta1")],
                 "preferredVersion": {"groupVersion": "kubeflow.org/v1", "version": "v1"}}]})
        match = CR_PATH.match(path) or CORE_PATH.match(path)
        if not match:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        parts = match.groupdict()
        res = RESOURCES.get(parts["plural"])
        if res is None or (path.startswith("/apis/") and (parts["group"], parts["version"]) != (res.group, res.version)):
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        ns, name, sub = parts["ns"], parts["name"], parts["sub"]
        if res.plural in self.absent:  # what kube-apiserver answers for a resource no CRD defines
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if res.plural in self.forbidden:  # kube-apiserver's RBAC denial, word for word
            verb = {"GET": "list" if name is None else "get", "POST": "create", "DELETE": "delete"}.get(req.method, "patch")
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            raise KubeError(403, "Forbidden", f'{res.qualified} is forbidden: User "double" cannot {verb} resource '
                            f'"{res.plural}" in API group "{res.group}"{where}',
                            {"group": res.group, "kind": res.plural})
        if name is None:
            if req.method == "GET":
                return self._watch(req, res, ns, fault) if self.stream_kind(req) == "watch" else self._list(req, res, ns)
            if req.method == "POST" and ns and res.plural in WRITABLE:
                return self._create(req, res, ns)
            raise KubeError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if ns is None:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if sub == "log" and res.plural == "pods" and req.method == "GET":
            return self._log(req, ns, name, fault)
        if sub not in (None, "status"):
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if req.method == "GET":
            return Response(200, self._get(res, ns, name))
        if req.method in ("PUT", "PATCH") and res.plural in WRITABLE:
            return self._update(req, res, ns, name, status_only=sub == "status")
        if req.method == "DELETE" and sub is None:
            return self._delete(req, res, ns, name)
        raise KubeError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    # -- reads

    def _not_found(self, res: Resource, name: str) -> KubeError:
        return KubeError(404, "NotFound", f'{res.qualified} "{name}" not found',
                         {"name": name, "group": res.group, "kind": res.plural})

    def _get(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        obj = self.store.get(res.plural, ns, name)
        if obj is None:
            raise self._not_found(res, name)
        return obj

    @staticmethod
    def _flag(req: Request, name: str) -> bool:
        try:
            return req.flag(name)
        except ValueError as err:
            raise KubeError(400, "BadRequest", str(err)) from None

    def _selectors(self, req: Request) -> tuple[list, list]:
        try:
            labels = parse_selector(req.query.get("labelSelector", ""))
        except ValueError as err:
            raise KubeError(400, "BadRequest", f"unable to parse requirement: {err}") from None
        fields = []
        for term in filter(None, req.query.get("fieldSelector", "").split(",")):
            key, _, value = term.partition("==" if "==" in term else "=")
            if key not in ("metadata.name", "metadata.namespace"):
                raise KubeError(400, "BadRequest", f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"')
            fields.append((key.split(".")[1], value))
        return labels, fields

    @staticmethod
    def _fields_match(fields: list[tuple[str, str]], ns: str, name: str) -> bool:
        return all((ns if k == "namespace" else name) == v for k, v in fields)

    def _list(self, req: Request, res: Resource, ns: str | None) -> Response:
        labels, fields = self._selectors(req)
        limit = int(req.query.get("limit") or 0)
        start = 0
        with self.store.cond:
            rv = self.store.rv
            token = req.query.get("continue")
            if token:
                try:
                    state = json.loads(base64.urlsafe_b64decode(token))
                except ValueError:
                    raise KubeError(400, "BadRequest", "continue key is not valid") from None
                if state["rv"] < self.store.compacted_rv:
                    raise KubeError(410, "Expired", "The provided continue parameter is too old to display a consistent "
                                    "list result. You can start a new list without the continue parameter, or use the "
                                    "continue token in this response to retrieve the remainder of the results.")
                start = state["start"]
            items = [o for o in self.store.list(res.plural, ns)
                     if selector_matches(labels, o["metadata"].get("labels") or {})
                     and self._fields_match(fields, o["metadata"]["namespace"], o["metadata"]["name"])]
        page = items[start:start + limit] if limit else items[start:]
        more = bool(limit) and start + limit < len(items)
        cont = base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": start + limit}).encode()).decode() if more else ""
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
        return Response(200, {"apiVersion": res.api_version, "kind": f"{res.kind}List", "metadata": meta, "items": page})

    def _watch(self, req: Request, res: Resource, ns: str | None, fault: str | None) -> Stream:
        labels, fields = self._selectors(req)
        rv_param = req.query.get("resourceVersion", "")
        bookmarks = self._flag(req, "allowWatchBookmarks")
        timeout = float(req.query.get("timeoutSeconds") or 1800)
        return Stream(self._watch_events(res, ns, labels, fields, rv_param, bookmarks, timeout, fault))

    @staticmethod
    def _line(event_type: str, obj_json: str) -> bytes:
        return b'{"type":"%s","object":%s}\n' % (event_type.encode(), obj_json.encode())

    def _expired(self, rv: int) -> bytes:
        body = status_body(410, "Expired", f"too old resource version: {rv} ({self.store.compacted_rv + 1})")
        return self._line("ERROR", json.dumps(body))

    def _watch_events(self, res: Resource, ns: str | None, labels: list, fields: list, rv_param: str,
                      bookmarks: bool, timeout: float, fault: str | None) -> Iterator[bytes]:
        store = self.store
        deadline = time.monotonic() + timeout
        if fault == "410":
            yield self._expired(int(rv_param) if rv_param.isdigit() else store.rv)
            return
        initial: list[str] = []
        with store.cond:
            if rv_param not in ("", "0"):
                if not rv_param.isdigit():
                    yield self._line("ERROR", json.dumps(status_body(400, "BadRequest", f'invalid resource version "{rv_param}"')))
                    return
                last = int(rv_param)
                if last < store.compacted_rv:
                    yield self._expired(last)
                    return
            else:
                last = store.rv
                initial = [json.dumps(o) for o in store.list(res.plural, ns)
                           if selector_matches(labels, o["metadata"].get("labels") or {})
                           and self._fields_match(fields, o["metadata"]["namespace"], o["metadata"]["name"])]
        sent = 0
        for body in initial:
            yield self._line("ADDED", body)
            sent += 1
            if fault == "watch-cut" and sent >= self.watch_cut_after:
                yield CUT
                return
        cut_at = time.monotonic() + 0.5
        next_bookmark = time.monotonic() + self.bookmark_interval
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            if fault == "watch-cut" and now >= cut_at:
                yield CUT
                return
            wait = min(deadline, next_bookmark if bookmarks else deadline, cut_at if fault else deadline) - now
            with store.cond:
                if store.rv <= last and not self.stopping.is_set():
                    store.cond.wait(timeout=max(0.0, min(wait, 0.5)))
                if last < store.compacted_rv:
                    yield self._expired(last)
                    return
                events = store.events_since(last)
                last = store.rv
            for ev in events:
                if (ev.plural == res.plural and (ns is None or ev.namespace == ns)
                        and selector_matches(labels, ev.labels) and self._fields_match(fields, ev.namespace, ev.name)):
                    yield self._line(ev.type, ev.body)
                    sent += 1
                    if fault == "watch-cut" and sent >= self.watch_cut_after:
                        yield CUT
                        return
            if bookmarks and time.monotonic() >= next_bookmark:
                mark = {"kind": res.kind, "apiVersion": res.api_version, "metadata": {"resourceVersion": str(last)}}
                yield self._line("BOOKMARK", json.dumps(mark))
                next_bookmark = time.monotonic() + self.bookmark_interval

    # -- writes

    def _create(self, req: Request, res: Resource, ns: str) -> Response:
        obj = req.json()
        if not isinstance(obj, dict):
            raise KubeError(400, "BadRequest", "the body of the request was in an unknown format")
        if obj.get("kind") != res.kind or obj.get("apiVersion") != res.api_version:
            raise KubeError(400, "BadRequest", f"the API version in the data ({obj.get('apiVersion')}) does not match "
                            f"the expected API version ({res.api_version})" if obj.get("kind") == res.kind else
                            f"Object 'Kind' is {obj.get('kind')!r}, expected {res.kind!r}")
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            raise KubeError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise KubeError(422, "Invalid", f'{res.kind}.{res.group} "" is invalid: metadata.name: Required value: '
                                "name or generateName is required", {"kind": res.kind, "group": res.group, "causes": [
                                    {"reason": "FieldValueRequired", "message": "Required value: name or generateName is required",
                                     "field": "metadata.name"}]})
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        meta["namespace"] = ns
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation", "managedFields"):
            meta.pop(key, None)
        obj.pop("status", None)  # the status subresource: create ignores .status
        dry_run = self._dry_run(req)
        if res.plural in KUEUE_MANAGED and (meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL):
            # Kueue's mutating webhook (jobframework ApplyDefaultForSuspend): queued jobs start suspended.
            obj.setdefault("spec", {}).setdefault("runPolicy", {})["suspend"] = True
        warnings: list[str] = []
        if res.plural in ADMITTED:
            warnings = self.admission.admit(res.plural, res.kind, res.group, obj, req.query.get("fieldValidation", ""))
            self._policy_webhooks(res, obj)
        with self.store.cond:
            if self.store.objects.get((res.plural, ns, meta["name"])) is not None:
                raise KubeError(409, "AlreadyExists", f'{res.qualified} "{meta["name"]}" already exists',
                                {"name": meta["name"], "group": res.group, "kind": res.plural})
            if dry_run:  # validated, defaulted, admitted, and nothing stored (no resourceVersion, no event)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now_rfc3339())
                meta.setdefault("generation", 1)
                self.dry_runs += 1
                return Response(201, obj)
            created = self.store.create(res.plural, obj)
            self.store.record_change(res.plural, created, "Added")
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else {}
        return Response(201, created, headers=headers)

    @staticmethod
    def _dry_run(req: Request) -> bool:
        """`dryRun=All` as the apiserver takes it (any other value is refused; absent means a real write)."""
        value = req.query.get("dryRun")
        if value is None:
            return False
        if value != "All":
            raise KubeError(400, "BadRequest", f'Invalid dryRun value: "{value}": supported values: "All"')
        return True

    def _policy_webhooks(self, res: Resource, obj: dict[str, Any]) -> None:
        """Extra validating webhooks (a cluster's policy engine): `deny(plural, obj)` -> (field, message) or None."""
        for deny in self.policy_webhooks:
            found = deny(res.plural, obj)
            if found:
                field, message = found
                text = f'admission webhook "policy.example.com" denied the request: {field}: {message}'
                raise KubeError(422, "Invalid", text, {"name": obj["metadata"].get("name", ""), "group": res.group,
                                "kind": res.kind, "causes": [{"reason": "FieldValueInvalid", "field": field,
                                                              "message": message}]})

    def _update(self, req: Request, res: Resource, ns: str, name: str, status_only: bool) -> Response:
        body = req.json()
        with self.store.cond:
            current = self.store.objects.get((res.plural, ns, name))
            if current is None:
                raise self._not_found(res, name)
            current = copy.deepcopy(current)
            if req.method == "PATCH":
                ctype = req.headers.get("content-type", "").split(";")[0]
                if ctype == "application/json-patch+json":
                    new = _json_patch(current, body)
                elif ctype in ("application/merge-patch+json", "application/json"):
                    new = _merge_patch(current, body)
                else:
                    raise KubeError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                    "accepted media types include: application/json-patch+json, application/merge-patch+json")
                sent_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
            else:
                new = body
                sent_rv = (new.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise KubeError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": the object '
                                "has been modified; please apply your changes to the latest version and try again",
                                {"name": name, "group": res.group, "kind": res.plural})
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise KubeError(400, "BadRequest", "the name of the object does not match the name on the URL")
            if status_only:
                updated = copy.deepcopy(current)
                updated["status"] = new.get("status")
                for key in ("labels", "annotations"):
                    if key in meta:
                        updated["metadata"][key] = meta[key]
                prune(updated, self.admission.schemas.get(res.plural)[0])
            else:
                updated = new
                for key in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace"):
                    if key in current["metadata"]:
                        updated["metadata"][key] = current["metadata"][key]
                    else:
                        updated["metadata"].pop(key, None)
                if "status" in current:
                    updated["status"] = current["status"]
                else:
                    updated.pop("status", None)
                if res.plural in ADMITTED:
                    self._admit_update(res, current, updated, req.query.get("fieldValidation", ""))
                if updated.get("spec") != current.get("spec"):
                    updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
                self._no_new_finalizers(res, current, updated)
            if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get("finalizers"):
                self.store.delete(res.plural, ns, name)
                return Response(200, updated)
            stored = self.store.update(res.plural, updated)
            if status_only and stored.get("status") != current.get("status"):
                self.store.record_change(res.plural, stored, "StatusWritten")
        return Response(200, stored)

    @staticmethod
    def _no_new_finalizers(res: Resource, current: dict[str, Any], updated: dict[str, Any]) -> None:
        """The apiserver's rule: an object being deleted may lose finalizers, never gain one."""
        if not current["metadata"].get("deletionTimestamp"):
            return
        had = current["metadata"].get("finalizers") or []
        added = [f for f in updated["metadata"].get("finalizers") or [] if f not in had]
        if added:
            quoted = ", ".join(f'"{f}"' for f in added)
            message = ("metadata.finalizers: Forbidden: no new finalizers can be added if the object is being "
                       f"deleted, found new finalizers []string{{{quoted}}}")
            raise KubeError(422, "Invalid", f'{res.kind}.{res.group} "{current["metadata"]["name"]}" is invalid: '
                            f"{message}", {"causes": [{"reason": "FieldValueForbidden", "field": "metadata.finalizers",
                                                       "message": message.split(": ", 1)[1]}]})

    def _admit_update(self, res: Resource, current: dict[str, Any], updated: dict[str, Any], field_validation: str) -> None:
        if res.plural == "experiments":
            editable = ("parallelTrialCount", "maxTrialCount", "maxFailedTrialCount")
            old = {k: v for k, v in (current.get("spec") or {}).items() if k not in editable}
            new = {k: v for k, v in (updated.get("spec") or {}).items() if k not in editable}
            if old != new:
                raise AdmissionError(self.admission.webhook_status, status_body(
                    self.admission.webhook_status, "Invalid" if self.admission.webhook_status == 422 else "Forbidden",
                    'admission webhook "validator.experiment.katib.kubeflow.org" denied the request: spec: Forbidden: '
                    "only spec.parallelTrialCount, spec.maxTrialCount and spec.maxFailedTrialCount are editable",
                    {"name": current["metadata"]["name"], "group": res.group, "kind": res.kind, "causes": [
                        {"reason": "FieldValueForbidden", "field": "spec", "message": "Forbidden: only spec.parallelTrialCount, "
                         "spec.maxTrialCount and spec.maxFailedTrialCount are editable"}]}))
        elif res.plural in ("pytorchjobs", "tfjobs"):
            old_q = ((current["spec"].get("runPolicy") or {}).get("schedulingPolicy") or {}).get("queue")
            new_q = (((updated.get("spec") or {}).get("runPolicy") or {}).get("schedulingPolicy") or {}).get("queue")
            if old_q != new_q:
                raise KubeError(422, "Invalid", f'{res.kind}.{res.group} "{current["metadata"]["name"]}" is invalid: '
                                "spec.runPolicy.schedulingPolicy.queue: Invalid value: \"string\": spec.runPolicy."
                                "schedulingPolicy.queue is immutable", {"causes": [{"reason": "FieldValueInvalid",
                                "field": "spec.runPolicy.schedulingPolicy.queue", "message": "Invalid value: \"string\": "
                                "spec.runPolicy.schedulingPolicy.queue is immutable"}]})
        self.admission.admit(res.plural, res.kind, res.group, updated, field_validation)

    def _delete(self, req: Request, res: Resource, ns: str, name: str) -> Response:
        options = req.json() if req.body else {}
        policy = req.query.get("propagationPolicy") or (options or {}).get("propagationPolicy") or "Background"
        if policy not in ("Foreground", "Background", "Orphan"):
            raise KubeError(400, "BadRequest", f'propagationPolicy: Unsupported value: "{policy}"')
        with self.store.cond:
            current = self.store.get(res.plural, ns, name)
            if current is None:
                raise self._not_found(res, name)
            meta = current["metadata"]
            if policy == "Orphan" and res.plural != "pods":
                for dep in self.store.objects.values():
                    refs = dep["metadata"].get("ownerReferences") or []
                    if any(r.get("uid") == meta["uid"] for r in refs):
                        dep["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != meta["uid"]]
            gone = not meta.get("finalizers") and policy != "Foreground"
            current = self.store.request_delete(res.plural, ns, name, foreground=policy == "Foreground")
        return Response(200 if gone else 202, current)

    # -- pod logs

    def _log(self, req: Request, ns: str, name: str, fault: str | None) -> Response | Stream:
        pod = self._get(RESOURCES["pods"], ns, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = req.query.get("container")
        if container is None:
            if len(containers) > 1:
                raise KubeError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: "
                                f"[{' '.join(containers)}]")
            container = containers[0]
        if container not in containers:
            raise KubeError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if pod["status"].get("phase") == "Pending":
            raise KubeError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating')
        key = (ns, name)
        if not self._flag(req, "follow"):
            lines = list(self.store.pod_logs.get(key, []))
            tail = req.query.get("tailLines")
            if tail:
                lines = lines[-int(tail):] if int(tail) else []
            return Response(200, "".join(line + "\n" for line in lines).encode(), content_type="text/plain")
        return Stream(self._follow(key, cut=fault == "watch-cut"), content_type="text/plain")

    def _follow(self, key: tuple[str, str], cut: bool) -> Iterator[bytes]:
        """Log lines as they are written, until the pod ends (or, with `cut`, a broken stream after the first piece)."""
        store, sent = self.store, 0
        while not self.stopping.is_set():
            with store.cond:
                lines = store.pod_logs.get(key, [])
                fresh = lines[sent:]
                pod = store.objects.get(("pods", key[0], key[1]))
                done = pod is None or pod["status"].get("phase") in TERMINAL_POD_PHASES
                if not fresh and not done:
                    store.cond.wait(timeout=0.5)
                    continue
            sent += len(fresh)
            if fresh:
                yield "".join(line + "\n" for line in fresh).encode()
                if cut:
                    yield CUT
                    return
            if done and sent >= len(store.pod_logs.get(key, [])):
                return
