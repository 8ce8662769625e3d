"""Custom resources (PyTorchJob, TFJob, Katib Experiment) through the `kubernetes` client.

Ids are `<namespace>/<plural>/<name>`. A CR carries the label `kubeflow-tasks.dev/key-hash` and
the annotations `kubeflow-tasks.dev/key` and `kubeflow-tasks.dev/attempt`; its name is
deterministic in (spec name, key, attempt), so a retried create meets its own earlier success as
409 AlreadyExists. A 404 we caused (our delete, marked by an annotation first) is CANCELLED; a job
removed by its `ttlSecondsAfterFinished` keeps the end recorded for it (`outcomes`); any other is
FAILED "deleted externally".

Looking up a key reads every kind we create (one list per kind and namespace), because a key holds
one kind of work: see `find` for what a kind the cluster does not serve or hides from us counts as.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import ids, manifests, naming, outcomes, states
from shared.backends.kubernetes.access import Cluster, call, read_body
from shared.errors import BackendError, NotFound, SpecError
from shared.retry import http_status
from shared.specs.model import ExperimentSpec, TrainingJobSpec
from shared.status import Handle, Kind, State, Status

BACKEND_NAME = "kubernetes"
log = logging.getLogger(__name__)
_DELETED_BY_US: set[str] = set()  # handle ids this process deleted: their 404 means CANCELLED


def split_id(handle_id: str) -> tuple[str, str, str]:
    """<namespace>/<plural>/<name>, each part checked as a DNS name before any URL is built (a name
    of `.` or `..` would otherwise address the whole collection)."""
    return ids.split_cr_id(handle_id, manifests.BY_PLURAL)


def deleted_by_us(handle_id: str) -> bool:
    return handle_id in _DELETED_BY_US


_ENDED: dict[str, Status] = {}  # the terminal status this process saw per handle id (newest last)
ENDED_KEPT = 10_000


def remember_end(handle_id: str, status: Status) -> None:
    """A job removed after it ended (ttlSecondsAfterFinished) keeps its end for this process."""
    _ENDED.pop(handle_id, None)
    _ENDED[handle_id] = status
    while len(_ENDED) > ENDED_KEPT:
        _ENDED.pop(next(iter(_ENDED)))


class CustomResources:
    """Create, find, read and delete our custom resources in one cluster."""

    def __init__(self, cluster: Cluster, request_timeout: float, cancel_timeout: float):
        self.cluster = cluster
        self.request_timeout = request_timeout
        self.cancel_timeout = cancel_timeout
        self.outcomes = outcomes.Outcomes(cluster, request_timeout)

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        spec: TrainingJobSpec | ExperimentSpec,
        key: str,
        attempt: int,
        namespace: str,
        context: SubmitContext,
    ) -> Handle:
        resource = manifests.resource_of(spec)
        body = _body(spec, key, attempt, namespace, context)
        return self.handle(resource, self._create_or_adopt(resource, namespace, body, key, dry_run=False))

    def dry_run(
        self,
        spec: TrainingJobSpec | ExperimentSpec,
        key: str,
        attempt: int,
        namespace: str,
        context: SubmitContext,
    ) -> None:
        """Let the API server judge the object (`dryRun=All`: schema, defaults, every webhook) without
        creating it; a refusal is the one-line field error, an existing object of ours is fine."""
        resource = manifests.resource_of(spec)
        body = _body(spec, key, attempt, namespace, context)
        self._create_or_adopt(resource, namespace, body, key, dry_run=True)

    def _create_or_adopt(
        self, resource: manifests.Resource, namespace: str, body: dict[str, Any], key: str, dry_run: bool
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            return read_body(
                call(
                    self.cluster.custom().create_namespaced_custom_object,
                    resource.group,
                    resource.version,
                    namespace,
                    resource.plural,
                    body,
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                    **({"dry_run": "All"} if dry_run else {}),
                )
            )
        except Exception as exc:
            status = http_status(exc)
            if status == 409:  # another process (or our own lost answer) created it: adopt if it is ours
                obj = self.get_object(namespace, resource.plural, name)
                found = (obj.get("metadata", {}).get("annotations") or {}).get(naming.KEY_ANNOTATION)
                if found != key:
                    raise BackendError(
                        f"{resource.kind} {namespace}/{name} exists with another key"
                    ) from None
                return obj
            if status in (400, 422) or (status == 403 and _webhook_denial(exc)):
                raise invalid(exc) from None
            raise

    # ------------------------------------------------------------------ find and get

    def find(self, key: str, namespaces: Sequence[str], own: Kind | None = None) -> list[Handle]:
        """Every attempt under `key` in any of `namespaces`, of every kind we create.

        `own` is the kind the caller is about to submit (None: a lookup by key). A kind the cluster
        does not serve (404 on its list: its CRD is not installed, e.g. no Katib) holds nothing. A
        kind we may not list (RBAC 403) holds nothing we can see unless it is `own`'s: then the
        403 is the caller's, as it was before other kinds were looked at. Why: a cluster that
        locks a kind away from us (Katib experiments for a team that only trains) must not break
        every submission; the price is that work of that kind under the key, made by someone
        allowed to, goes unnoticed (we could not see, adopt or cancel it either). Each skip is
        logged as a warning.
        """
        found: dict[str, Handle] = {}
        for namespace in namespaces:  # jobs removed by their TTL: their recorded ends (see `outcomes`)
            for handle, _, _ in self.outcomes.for_key(key, namespace):
                found[handle.id] = handle
        selector = f"{naming.KEY_HASH_LABEL}={naming.key_hash(key)}"
        for obj, resource in self._list_every_kind(namespaces, selector, own, f"key {key!r}"):
            if (obj["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION) == key:
                handle = self.handle(resource, obj)
                found[handle.id] = handle
        return list(found.values())

    def _list_every_kind(
        self, namespaces: Sequence[str], selector: str, own: Kind | None, what: str
    ) -> list[tuple[dict[str, Any], manifests.Resource]]:
        """Our objects of every kind in `namespaces`; kinds not served or not visible are skipped
        (see `find`), and a kind found not served is not asked for in the next namespace."""
        skipped: set[str] = set()
        found: list[tuple[dict[str, Any], manifests.Resource]] = []
        for namespace in namespaces:
            for resource in manifests.RESOURCES.values():
                if resource.plural in skipped:
                    continue
                try:
                    objects = self.list_objects(namespace, resource, selector)
                except Exception as exc:
                    status = http_status(exc)
                    if status == 404:
                        skipped.add(resource.plural)  # not served in any namespace
                        continue
                    if status == 403 and resource.work is not own:
                        log.warning("looking up %s: %s in %s skipped: %s", what, resource.kind, namespace, exc)
                        continue
                    raise
                found += [(obj, resource) for obj in objects]
        return found

    def get(self, handle_id: str) -> Handle:
        namespace, plural, name = split_id(handle_id)
        try:
            return self.handle(manifests.BY_PLURAL[plural], self.get_object(namespace, plural, name))
        except NotFound:
            record = self.outcomes.recorded(handle_id)
            if record is None:
                raise
            return record[0]

    def fingerprint(self, handle: Handle) -> str | None:
        """The spec fingerprint annotated on the object, or recorded for it once it is gone."""
        namespace, plural, name = split_id(handle.id)
        try:
            annotations = self.get_object(namespace, plural, name)["metadata"].get("annotations") or {}
        except NotFound:
            record = self.outcomes.recorded(handle.id)
            if record is None:
                raise
            return record[2] or None
        return annotations.get(manifests.FINGERPRINT_ANNOTATION)

    def list(self, namespaces: Sequence[str]) -> list[Handle]:
        """Our work of every kind the cluster serves and lets us see (see `find`)."""
        objects = self._list_every_kind(namespaces, naming.KEY_HASH_LABEL, None, "our work")
        return [self.handle(resource, obj) for obj, resource in objects]

    # ------------------------------------------------------------------ status and cancel

    def status(self, handle: Handle) -> Status:
        namespace, plural, name = split_id(handle.id)
        try:
            obj = self.get_object(namespace, plural, name)
        except NotFound:
            return self.vanished(handle)
        return self.observed(plural, obj)

    def observed(self, plural: str, obj: dict[str, Any]) -> Status:
        """The object's status; a terminal one is remembered, and settled if it holds our finalizer."""
        status = states.status_of(plural, obj)
        handle = self.handle(manifests.BY_PLURAL[plural], obj)
        if status.terminal:
            remember_end(handle.id, status)
        if outcomes.holds(obj):
            annotations = obj["metadata"].get("annotations") or {}
            self.outcomes.settle(handle, plural, obj, status, annotations.get(manifests.FINGERPRINT_ANNOTATION))
        return status

    def vanished(self, handle: Handle) -> Status:
        """A job that is gone: the end this process saw, else the recorded one, else how it went."""
        ended = _ENDED.get(handle.id)
        if ended is not None:
            return ended
        record = self.outcomes.recorded(handle.id)
        if record is not None:
            status = record[1]
            return Status(status.state, status.raw_state,
                          f"{status.message} (the object was removed since)".lstrip(), status.outputs)
        return states.deleted_status(None, cancelled=deleted_by_us(handle.id))

    def request_cancel(self, handle: Handle) -> Status:
        """Mark the object cancelled, release our finalizer and delete it (foreground); returns the
        status before the delete.

        Quick and bounded: it does not wait for the object to go (see `cancel`)."""
        namespace, plural, name = split_id(handle.id)
        try:
            obj = self.get_object(namespace, plural, name)
        except NotFound:
            return self.vanished(handle)
        status = self.observed(plural, obj)
        if status.terminal:
            return status
        resource = manifests.BY_PLURAL[plural]
        api = self.cluster.custom()
        _DELETED_BY_US.add(handle.id)
        marker = {"metadata": {"annotations": {naming.CANCELLED_ANNOTATION: "true"}}}
        args = (resource.group, resource.version, namespace, plural, name)
        try:  # so other processes see CANCELLED too; the delete goes ahead without it
            obj = read_body(call(api.patch_namespaced_custom_object, *args, marker,
                                 _request_timeout=self.request_timeout, _preload_content=False))
        except Exception as exc:
            if http_status(exc) == 404:
                return status
            if http_status(exc) is None:
                raise
        if outcomes.holds(obj):  # a cancelled job has nothing to keep: its delete must finish
            self.outcomes.release(handle, plural, obj)
        try:  # foreground: an Experiment's trials go with it
            call(api.delete_namespaced_custom_object, *args, propagation_policy="Foreground",
                 _request_timeout=self.request_timeout, _preload_content=False)
        except Exception as exc:
            if http_status(exc) != 404:
                raise
        return status

    def cancel(self, handle: Handle) -> Status:
        status = self.request_cancel(handle)
        if status.terminal:
            return status
        deadline = time.monotonic() + self.cancel_timeout
        delay = 0.05
        while time.monotonic() < deadline:
            status = self.status(handle)
            if status.raw_state == "Deleted":
                return status
            time.sleep(delay)
            delay = min(1.0, delay * 2)
        return Status(
            State.RUNNING, "Terminating", f"deleted {self.cancel_timeout:g}s ago, but the object remains"
        )

    # ------------------------------------------------------------------ requests

    def get_object(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        """The custom resource as the API server returns it; NotFound when it does not exist."""
        r = manifests.BY_PLURAL[plural]
        try:
            return read_body(
                call(
                    self.cluster.custom().get_namespaced_custom_object,
                    r.group,
                    r.version,
                    namespace,
                    plural,
                    name,
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                )
            )
        except Exception as exc:
            if http_status(exc) == 404:
                raise NotFound(f"no {r.kind} {namespace}/{name}") from None
            raise

    def list_objects(
        self, namespace: str, resource: manifests.Resource, selector: str
    ) -> list[dict[str, Any]]:
        body = read_body(
            call(
                self.cluster.custom().list_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=self.request_timeout,
            )
        )
        return list(body.get("items") or [])

    @staticmethod
    def handle(resource: manifests.Resource, obj: dict[str, Any]) -> Handle:
        metadata = obj["metadata"]
        annotations = metadata.get("annotations") or {}
        return Handle(
            backend=BACKEND_NAME,
            kind=resource.work,
            id=f"{metadata['namespace']}/{resource.plural}/{metadata['name']}",
            key=annotations.get(naming.KEY_ANNOTATION, ""),
            attempt=int(annotations.get(naming.ATTEMPT_ANNOTATION, 1)),
            name=metadata["name"],
            namespace=metadata["namespace"],
            resource=resource.kind,
        )


def _body(
    spec: TrainingJobSpec | ExperimentSpec, key: str, attempt: int, namespace: str, context: SubmitContext
) -> dict[str, Any]:
    """The object to create; one the operator removes after it ends keeps our finalizer (`outcomes`)."""
    body = manifests.build(spec, key, attempt, namespace, context)
    if outcomes.wants_finalizer(body):
        outcomes.add_finalizer(body)
    return body


def _webhook_denial(exc: BaseException) -> bool:
    """controller-runtime webhooks deny with 403 too; RBAC's 403 is not bad input."""
    return "admission webhook" in str(getattr(exc, "body", "") or "")


def invalid(exc: BaseException) -> SpecError:
    """A 422/400 from the API server or a webhook, as the one-line field error the user can act on.

    Schema and policy errors name the field in `details.causes` (a scale subresource's as a JSONPath,
    `.spec...`); a webhook's denial has no causes, only `admission webhook "..." denied the request:
    FIELD: REASON` in its message (so the real training operator answers).
    """
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        body = {}
    causes = (body.get("details") or {}).get("causes") or []
    if causes and causes[0].get("field"):
        return SpecError(causes[0]["field"].lstrip("."),
                         f"rejected by the cluster: {causes[0].get('message') or body.get('message')}")
    message = body.get("message") or str(exc)
    denial = message.split(" denied the request: ", 1)
    if len(denial) == 2:
        reason = denial[1].lstrip("[").rstrip("]")
        field, sep, rest = reason.partition(": ")
        if sep and " " not in field:
            return SpecError(field, f"rejected by the cluster: {rest}")
    return SpecError("", f"rejected by the cluster: {message}")
