"""The Kubernetes backend: Kubeflow's own APIs on a real cluster.

Training jobs (PyTorchJob, TFJob, `kubeflow.org/v1`) and Katib experiments (`kubeflow.org/v1beta1`)
are custom resources created through the `kubernetes` client; pipeline runs go to the KFP v2beta1
API through `kfp_server_api`. Handle ids say where the work is:

- `<namespace>/<plural>/<name>` for a custom resource, e.g. `team-a/pytorchjobs/train-1a2b3c4d-1`;
- `kfp/<run_id>` for a KFP run.

Idempotency: a CR carries the label `kubeflow-tasks.dev/key-hash` and the annotations
`kubeflow-tasks.dev/key` and `kubeflow-tasks.dev/attempt`, and its name is deterministic in (spec
name, key, attempt); a KFP run has the display name `<name>-<key hash>-<attempt>` and its key in
the description. Waiting uses the process-wide shared watches and KFP poller of `hub`. Importing
this module loads neither `kubernetes` nor `kfp`: clients are built on the first request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import hub, ids, manifests, naming, pipelines, states
from shared.backends.kubernetes.access import Cluster, ClusterOptions, Kfp, KfpOptions, call, read_body
from shared.errors import BackendError, NotFound, SpecError
from shared.retry import http_status
from shared.specs.model import PipelineRunSpec, Spec
from shared.status import Handle, Kind, State, Status

KFP_PREFIX = "kfp/"
_DELETED_BY_US: set[str] = set()  # handle ids this process deleted: their 404 means CANCELLED


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
        kfp_host: str | None = None,
        kfp_token_file: str | None = None,
        *,
        allowed_namespaces: Sequence[str] | str | None = None,
        in_cluster: bool | None = None,
        host: str | None = None,
        token: str | None = None,
        verify_ssl: bool = True,
        kfp_token: str | None = None,
        kfp_ui_url: str | None = None,
        kfp_namespace: str | None = None,
        kfp_mlflow_plugin: bool = False,
        kfp_poll_interval: float = 3.0,
        request_timeout: float = 30.0,
        cancel_timeout: float = 60.0,
        log_poll_interval: float = 2.0,
    ):
        """Nothing is read or sent here: a scheduler may build backends at parse time."""
        if isinstance(allowed_namespaces, str):
            allowed_namespaces = [n.strip() for n in allowed_namespaces.split(",") if n.strip()]
        self.allowed = tuple(allowed_namespaces) if allowed_namespaces else None
        if namespace and self.allowed and namespace not in self.allowed:
            raise SpecError(
                "namespace", f"{namespace!r} is not one of the allowed namespaces ({', '.join(self.allowed)})"
            )
        self.cluster = Cluster(
            ClusterOptions(kubeconfig, context, namespace, in_cluster, host, token, verify_ssl),
            request_timeout,
        )
        self.kfp = Kfp(
            KfpOptions(kfp_host, kfp_token, kfp_token_file, kfp_ui_url, kfp_namespace), request_timeout
        )
        self.experiments = pipelines.Experiments(self.kfp)
        self.kfp_mlflow_plugin = kfp_mlflow_plugin
        self.kfp_poll_interval = kfp_poll_interval
        self.request_timeout = request_timeout
        self.cancel_timeout = cancel_timeout
        self.log_poll_interval = log_poll_interval
        self._used_namespaces: set[str] = set()

    # ------------------------------------------------------------------ namespaces

    def namespace_for(self, spec: Spec) -> str:
        """The spec's namespace, else the configured one; outside the allow-list is bad input."""
        namespace = spec.namespace or self.cluster.namespace
        self._check_allowed(namespace)
        return namespace

    def _check_allowed(self, namespace: str) -> None:
        if self.allowed and namespace not in self.allowed:
            raise SpecError(
                "metadata.namespace",
                f"{namespace!r} is not one of the allowed namespaces ({', '.join(self.allowed)})",
            )

    def _search_namespaces(self) -> list[str]:
        """Where `find` and `list` look: the configured namespace, the allow-list, and what we used."""
        return list(
            dict.fromkeys([self.cluster.namespace, *(self.allowed or ()), *sorted(self._used_namespaces)])
        )

    # ------------------------------------------------------------------ submit

    def submit(self, spec: Spec, key: str, attempt: int, context: SubmitContext) -> Handle:
        if isinstance(spec, PipelineRunSpec):
            return self._submit_run(spec, key, attempt, context)
        namespace = self.namespace_for(spec)
        self._used_namespaces.add(namespace)
        resource = manifests.resource_of(spec)
        body = manifests.build(spec, key, attempt, namespace, context)
        api = self.cluster.custom()
        try:
            obj = read_body(
                call(
                    api.create_namespaced_custom_object,
                    resource.group,
                    resource.version,
                    namespace,
                    resource.plural,
                    body,
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                )
            )
        except Exception as exc:
            status = http_status(exc)
            if status == 409:  # another process (or our own lost answer) created it: adopt if it is ours
                obj = self.get_object(namespace, resource.plural, body["metadata"]["name"])
                found = (obj.get("metadata", {}).get("annotations") or {}).get(naming.KEY_ANNOTATION)
                if found != key:
                    raise BackendError(
                        f"{resource.kind} {namespace}/{body['metadata']['name']} exists with another key"
                    ) from None
            elif status in (400, 422):
                raise _invalid(exc) from None
            else:
                raise
        return self._cr_handle(resource, obj)

    def _submit_run(self, spec: PipelineRunSpec, key: str, attempt: int, context: SubmitContext) -> Handle:
        display_name = naming.run_display_name(spec.name, key, attempt)
        namespace = spec.namespace or self.kfp.options.namespace
        if spec.namespace:
            self._check_allowed(spec.namespace)
        experiment_plugin = context.mlflow.get("experiment_id") if self.kfp_mlflow_plugin else None
        body = pipelines.run_body(  # compiled and checked before anything is sent
            spec,
            display_name=display_name,
            key=key,
            env=context.env,
            mlflow_plugin_experiment=experiment_plugin,
        )
        if spec.experiment:
            body["experiment_id"] = self.experiments.id_for(spec.experiment, namespace)
        api = self.kfp.runs()
        run = pipelines.create_once_then_find(
            lambda: self.kfp.request(api.run_service_create_run, body, retry=False),
            lambda: self._find_run(pipelines.equals("display_name", display_name), key, namespace),
        )
        return self._run_handle(run, key)

    # ------------------------------------------------------------------ find and get

    def find(self, key: str, kind: Kind | None = None) -> Handle | None:
        if kind is Kind.PIPELINE:
            return self._find_run_handle(key)
        found: list[Handle] = []
        resources = manifests.FOR_KIND.get(kind, ()) if kind else tuple(manifests.RESOURCES.values())
        selector = f"{naming.KEY_HASH_LABEL}={naming.key_hash(key)}"
        for namespace in self._search_namespaces():
            for resource in resources:
                for obj in self._list_objects(namespace, resource, selector):
                    if (obj["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION) == key:
                        found.append(self._cr_handle(resource, obj))
        if not found and kind is None and self.kfp.configured:
            return self._find_run_handle(key)
        return max(found, key=lambda h: h.attempt) if found else None

    def _find_run_handle(self, key: str) -> Handle | None:
        namespace = self.kfp.options.namespace
        run = self._find_run(
            pipelines.substring("display_name", f"-{naming.key_hash(key)[:16]}-"), key, namespace
        )
        return self._run_handle(run, key) if run else None

    def _find_run(self, filter_: str, key: str, namespace: str | None) -> dict[str, Any] | None:
        """The newest attempt (then the oldest run of it) among runs matching the filter and key."""
        kwargs = {"namespace": namespace} if namespace else {}
        body = self.kfp.request(
            self.kfp.runs().run_service_list_runs, filter=filter_, page_size=100, **kwargs
        )
        runs = [r for r in body.get("runs") or [] if pipelines.key_of(r) == key]
        if not runs:
            return None
        newest = max(naming.attempt_of_display_name(r.get("display_name", "")) for r in runs)
        runs = [r for r in runs if naming.attempt_of_display_name(r.get("display_name", "")) == newest]
        return min(runs, key=lambda r: (str(r.get("created_at") or ""), r["run_id"]))

    def get(self, id: str) -> Handle:
        if id.startswith(KFP_PREFIX):
            run = self._get_run(id.removeprefix(KFP_PREFIX))
            return self._run_handle(run, pipelines.key_of(run) or "")
        namespace, plural, name = _split(id)
        return self._cr_handle(manifests.BY_PLURAL[plural], self.get_object(namespace, plural, name))

    def list(self) -> Sequence[Handle]:
        handles = []
        for namespace in self._search_namespaces():
            for resource in manifests.RESOURCES.values():
                objects = self._list_objects(namespace, resource, naming.KEY_HASH_LABEL)
                handles += [self._cr_handle(resource, obj) for obj in objects]
        if self.kfp.configured:
            kwargs = {"namespace": self.kfp.options.namespace} if self.kfp.options.namespace else {}
            body = self.kfp.request(
                self.kfp.runs().run_service_list_runs, page_size=100, sort_by="created_at desc", **kwargs
            )
            handles += [
                self._run_handle(r, key) for r in body.get("runs") or [] if (key := pipelines.key_of(r))
            ]
        return handles

    # ------------------------------------------------------------------ status and cancel

    def status(self, handle: Handle) -> Status:
        if handle.id.startswith(KFP_PREFIX):
            try:
                run = self._get_run(handle.id.removeprefix(KFP_PREFIX))
            except NotFound:
                return states.deleted_status(None, cancelled=False)
            return states.kfp_status(run, handle.url)
        namespace, plural, name = _split(handle.id)
        try:
            obj = self.get_object(namespace, plural, name)
        except NotFound:
            return states.deleted_status(None, cancelled=handle.id in _DELETED_BY_US)
        return states.status_of(plural, obj)

    def cancel(self, handle: Handle) -> Status:
        if handle.id.startswith(KFP_PREFIX):
            return self._cancel_run(handle)
        status = self.status(handle)
        if status.terminal:
            return status
        namespace, plural, name = _split(handle.id)
        resource = manifests.BY_PLURAL[plural]
        api = self.cluster.custom()
        _DELETED_BY_US.add(handle.id)
        marker = {"metadata": {"annotations": {naming.CANCELLED_ANNOTATION: "true"}}}
        args = (resource.group, resource.version, namespace, plural, name)
        for method, extra in (
            (api.patch_namespaced_custom_object, (marker,)),  # so other processes see CANCELLED too
            (api.delete_namespaced_custom_object, ()),
        ):
            kwargs: dict[str, Any] = {"_request_timeout": self.request_timeout, "_preload_content": False}
            if method == api.delete_namespaced_custom_object:
                kwargs["propagation_policy"] = "Foreground"  # an Experiment's trials go with it
            try:
                call(method, *args, *extra, **kwargs)
            except Exception as exc:
                if http_status(exc) == 404:
                    break
                if method == api.delete_namespaced_custom_object or http_status(exc) is None:
                    raise
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

    def _cancel_run(self, handle: Handle) -> Status:
        status = self.status(handle)
        if status.terminal:
            return status
        run_id = handle.id.removeprefix(KFP_PREFIX)
        self.kfp.request(self.kfp.runs().run_service_terminate_run, run_id)
        deadline = time.monotonic() + self.cancel_timeout
        delay = 0.1
        while time.monotonic() < deadline:  # termination is asynchronous: CANCELING, then a final state
            status = self.status(handle)
            if status.terminal:
                return status
            time.sleep(delay)
            delay = min(2.0, delay * 2)
        return status

    # ------------------------------------------------------------------ logs and watch

    def logs(self, handle: Handle, follow: bool = False) -> Iterator[str]:
        from shared.backends.kubernetes import logs

        if handle.id.startswith(KFP_PREFIX):
            return logs.run_lines(self, handle, follow)
        if handle.resource == "Experiment":
            return logs.trial_lines(self, handle, follow)
        return logs.job_lines(self, handle, follow)

    async def watch(self, handles: Sequence[Handle]) -> AsyncIterator[tuple[Handle, Status]]:
        """Statuses from the shared watches and poller; a waiter costs no requests of its own."""
        sub = hub.Subscriber(asyncio.get_running_loop())
        by_id = {h.id: h for h in handles}
        sources = {oid: self._source(oid) for oid in by_id}
        for oid, source in sources.items():
            source.subscribe(oid, sub)
        last: dict[str, Status] = {}
        try:
            while by_id:
                oid, what, payload = await sub.queue.get()
                handle = by_id.get(oid)
                if handle is None:
                    continue
                status = await self._event_status(handle, what, payload)
                if last.get(oid) != status:
                    last[oid] = status
                    yield handle, status
                if status.terminal:
                    del by_id[oid]
        finally:
            for oid, source in sources.items():
                source.unsubscribe(oid, sub)

    def _source(self, handle_id: str) -> hub._Source:
        if handle_id.startswith(KFP_PREFIX):
            return hub.shared(
                ("kfp", self.kfp.identity), lambda: hub.KfpPoller(self.kfp, self.kfp_poll_interval)
            )
        namespace, plural, _ = _split(handle_id)
        r = manifests.BY_PLURAL[plural]
        return hub.shared(
            ("cr", self.cluster.identity, namespace, plural),
            lambda: hub.CrWatch(self.cluster, namespace, r.group, r.version, plural),
        )

    async def _event_status(self, handle: Handle, what: str, payload: Any) -> Status:
        if what == "error":
            raise BackendError(str(payload))
        if what == "missing":
            return await asyncio.to_thread(self.status, handle)
        if handle.id.startswith(KFP_PREFIX):
            return states.kfp_status(payload, handle.url)
        if what == "deleted":
            return states.deleted_status(payload, cancelled=handle.id in _DELETED_BY_US)
        return states.status_of(_split(handle.id)[1], payload)

    def fingerprint(self, handle: Handle) -> str | None:
        """The spec fingerprint annotated on a custom resource (KFP runs carry none: trusted)."""
        if handle.id.startswith(KFP_PREFIX):
            return None
        namespace, plural, name = _split(handle.id)
        annotations = self.get_object(namespace, plural, name)["metadata"].get("annotations") or {}
        return annotations.get(manifests.FINGERPRINT_ANNOTATION)

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

    def _list_objects(
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

    def _get_run(self, run_id: str) -> dict[str, Any]:
        try:
            return self.kfp.request(self.kfp.runs().run_service_get_run, ids.check_kfp_run_id(run_id))
        except Exception as exc:
            if http_status(exc) == 404:
                raise NotFound(f"no KFP run {run_id}") from None
            raise

    def _cr_handle(self, resource: manifests.Resource, obj: dict[str, Any]) -> Handle:
        metadata = obj["metadata"]
        annotations = metadata.get("annotations") or {}
        return Handle(
            backend=self.name,
            kind=resource.work,
            id=f"{metadata['namespace']}/{resource.plural}/{metadata['name']}",
            key=annotations.get(naming.KEY_ANNOTATION, ""),
            attempt=int(annotations.get(naming.ATTEMPT_ANNOTATION, 1)),
            name=metadata["name"],
            namespace=metadata["namespace"],
            resource=resource.kind,
        )

    def _run_handle(self, run: dict[str, Any], key: str) -> Handle:
        display_name = run.get("display_name") or ""
        return Handle(
            backend=self.name,
            kind=Kind.PIPELINE,
            id=f"{KFP_PREFIX}{run['run_id']}",
            key=key,
            attempt=naming.attempt_of_display_name(display_name),
            name=display_name,
            namespace=self.kfp.options.namespace,
            url=self.kfp.run_url(run["run_id"]),
            resource="PipelineRun",
        )


def _split(handle_id: str) -> tuple[str, str, str]:
    return ids.split_cr_id(handle_id, manifests.BY_PLURAL)  # names checked before any URL is built


def _invalid(exc: BaseException) -> SpecError:
    """A 422/400 from the API server or a webhook, as the one-line field error the user can act on."""
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        body = {}
    causes = (body.get("details") or {}).get("causes") or [{}]
    field = causes[0].get("field") or ""
    message = causes[0].get("message") or body.get("message") or str(exc)
    return SpecError(field, f"rejected by the cluster: {message}")
