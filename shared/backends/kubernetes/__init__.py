"""The Kubernetes backend: Kubeflow's own APIs on a real cluster.

Training jobs (PyTorchJob, TFJob, `kubeflow.org/v1`) and Katib experiments (`kubeflow.org/v1beta1`)
are custom resources created through the `kubernetes` client (`resources`); pipeline runs go to the
KFP v2beta1 API through `kfp_server_api` (`runs`). This module holds the configuration, the
namespace rules and the waiting both share. Handle ids say where the work is:

- `<namespace>/<plural>/<name>` for a custom resource, e.g. `team-a/pytorchjobs/train-1a2b3c4d-1`;
- `kfp/<run_id>` for a KFP run.

Idempotency: a CR carries the label `kubeflow-tasks.dev/key-hash` and the annotations
`kubeflow-tasks.dev/key` and `kubeflow-tasks.dev/attempt`, and its name is deterministic in (spec
name, key, attempt); a KFP run has the display name `<name>-<key hash>-<attempt>` and its key in
the description. Both carry the spec fingerprint (`shared.fingerprint`), and a key is looked up
across every kind (`find`). Waiting uses the process-wide shared watches and KFP poller of `hub`.
Importing this module loads neither `kubernetes` nor `kfp`: clients are built on the first request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import hub, manifests, outcomes, states
from shared.backends.kubernetes.access import Cluster, ClusterOptions, Kfp, KfpOptions
from shared.backends.kubernetes.resources import CustomResources, deleted_by_us, remember_end, split_id
from shared.backends.kubernetes.runs import KFP_PREFIX, PipelineRuns
from shared.errors import ApiError, BackendError, SpecError
from shared.specs.model import PipelineRunSpec, Spec
from shared.status import Handle, Kind, Status

__all__ = ["KFP_PREFIX", "KubernetesBackend"]
log = logging.getLogger(__name__)


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
        kfp_cookies: str | None = None,
        kfp_ssl_ca_cert: str | None = None,
        kfp_proxy: str | None = None,
        kfp_verify_ssl: bool = True,
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
        # A profile namespace holds both the jobs and the KFP runs: `namespace` applies to runs too.
        kfp_options = KfpOptions(
            kfp_host,
            kfp_token,
            kfp_token_file,
            kfp_ui_url,
            kfp_namespace or namespace,
            kfp_cookies,
            kfp_ssl_ca_cert,
            kfp_proxy,
            kfp_verify_ssl,
        )
        self.kfp = Kfp(kfp_options, request_timeout)
        self.resources = CustomResources(self.cluster, request_timeout, cancel_timeout)
        self.runs = PipelineRuns(self.kfp, cancel_timeout, kfp_mlflow_plugin)
        self.kfp_poll_interval = kfp_poll_interval
        self.request_timeout = request_timeout
        self.cancel_timeout = cancel_timeout
        self.log_poll_interval = log_poll_interval
        self._used_namespaces: set[str] = set()

    def connect(self) -> None:
        """Load the configuration and build the clients now. Blocking (an exec-plugin credential such
        as EKS's or GKE's runs a program): async callers run it in a thread before they use us."""
        try:
            self.cluster.api_client()
        except SpecError:
            pass  # a KFP-only configuration: the cluster is reported missing when it is needed
        if self.kfp.configured:
            self.kfp.api_client()

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
            if spec.namespace:
                self._check_allowed(spec.namespace)
            return self.runs.submit(spec, key, attempt, spec.namespace or self.kfp.options.namespace, context)
        namespace = self.namespace_for(spec)
        self._used_namespaces.add(namespace)
        return self.resources.submit(spec, key, attempt, namespace, context)

    def dry_run(self, spec: Spec, key: str, attempt: int, context: SubmitContext) -> None:
        """A server-side dry run of a custom resource (a KFP run has none: its body is checked locally,
        and an uploaded pipeline's version is looked up)."""
        if isinstance(spec, PipelineRunSpec):
            if spec.namespace:
                self._check_allowed(spec.namespace)
            self.runs.dry_run(spec, spec.namespace or self.kfp.options.namespace, context.env)
        else:
            self.resources.dry_run(spec, key, attempt, self.namespace_for(spec), context)

    # ------------------------------------------------------------------ find and get

    def find(self, key: str, kind: Kind | None = None, namespace: str | None = None) -> Handle | None:
        """The newest work under `key`, whatever its kind: a key holds one kind of work, and the
        operations layer refuses a task of another kind, so every kind is looked at (custom
        resources of each kind we create and, when KFP is configured, its runs).

        `kind` is the task's own (None: a lookup by key): errors reading it are the caller's, while
        another kind the cluster does not serve (404) or hides from us (403) holds nothing (see
        `CustomResources.find`; KFP runs likewise when KFP refuses us, 401/403/404, or is in
        multi-user mode with no namespace named; a KFP out of reach is an error, as the key cannot
        be judged without it). `namespace` (the manifest's) is searched first: a new process knows
        no namespace it used. Cost: one list per kind and namespace plus one KFP list, per submission.
        """
        if namespace:
            self._check_allowed(namespace)
        found = self._find_resources(key, kind, namespace)
        run = self._find_run(key, kind, namespace)
        if run is not None:
            found.append(run)
        # On a tie (only work made before keys held one kind), the other kind: it is refused, never adopted.
        return max(found, key=lambda h: (h.attempt, h.kind is not kind), default=None)

    def _find_resources(self, key: str, kind: Kind | None, namespace: str | None) -> list[Handle]:
        try:
            self.cluster.api_client()  # built once per backend
        except SpecError:
            runs_only = kind is Kind.PIPELINE or (kind is None and self.kfp.configured)
            if runs_only and not self.cluster.options_given:  # a KFP-only configuration: no cluster
                return []
            raise
        namespaces = list(dict.fromkeys([*([namespace] if namespace else []), *self._search_namespaces()]))
        return self.resources.find(key, namespaces, own=kind)

    def _find_run(self, key: str, kind: Kind | None, namespace: str | None) -> Handle | None:
        if kind is Kind.PIPELINE:
            return self.runs.find(key, namespace or self.kfp.options.namespace)
        if not self.kfp.configured:
            return None
        try:
            return self.runs.find(key, namespace or self.kfp.options.namespace)
        except SpecError as exc:
            if exc.path != "namespace":  # a KFP misconfiguration is the user's to fix
                raise
            log.warning("looking up key %r: KFP runs skipped: %s", key, exc)  # multi-user, no namespace
        except ApiError as exc:
            if exc.status not in (401, 403, 404):  # out of reach or failing: the key cannot be judged
                raise
            log.warning("looking up key %r: KFP runs skipped: %s", key, exc)
        return None

    def get(self, id: str) -> Handle:
        if id.startswith(KFP_PREFIX):
            return self.runs.get(id, self.kfp.options.namespace)
        return self.resources.get(id)

    def list(self) -> Sequence[Handle]:
        handles = self.resources.list(self._search_namespaces())
        if self.kfp.configured:
            handles += self.runs.list(self.kfp.options.namespace)
        return handles

    # ------------------------------------------------------------------ status and cancel

    def status(self, handle: Handle) -> Status:
        return self._part(handle).status(handle)

    def cancel(self, handle: Handle) -> Status:
        return self._part(handle).cancel(handle)

    def request_cancel(self, handle: Handle) -> Status:
        """Start cancelling without waiting for the end (a waiter sees the end through `watch`)."""
        return self._part(handle).request_cancel(handle)

    def _part(self, handle: Handle) -> CustomResources | PipelineRuns:
        return self.runs if handle.id.startswith(KFP_PREFIX) else self.resources

    # ------------------------------------------------------------------ logs and watch

    def startup_problem(self, handle: Handle) -> str | None:
        """Why the work's pods do not start (a training job's), or None."""
        from shared.backends.kubernetes import logs

        if handle.kind is not Kind.TRAINING_JOB:
            return None
        return logs.startup_problem(self, handle)

    def log_tail(self, handle: Handle, lines: int) -> list[str]:
        """The last `lines` lines, reading no more than that from the API (a job's pod log may be huge)."""
        from collections import deque

        from shared.backends.kubernetes import logs

        if handle.id.startswith(KFP_PREFIX) or handle.resource == "Experiment":
            return list(deque(self.logs(handle), maxlen=lines))
        return list(logs.job_lines(self, handle, follow=False, tail=lines))

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
        # Finding a source may build the client (kubeconfig, exec plugin): never on the event loop.
        sources = await asyncio.to_thread(
            lambda: {oid: self._source(oid, h.namespace) for oid, h in by_id.items()}
        )
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

    def _source(self, handle_id: str, namespace: str | None = None) -> hub._Source:
        if handle_id.startswith(KFP_PREFIX):  # multi-user KFP lists runs per namespace: one poller each
            return hub.shared(
                ("kfp", self.kfp.identity, namespace or ""),
                lambda: hub.KfpPoller(self.kfp, self.kfp_poll_interval, namespace),
            )
        namespace, plural, _ = split_id(handle_id)
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
        plural = split_id(handle.id)[1]
        if what == "deleted":
            status = states.deleted_status(payload, cancelled=deleted_by_us(handle.id), plural=plural)
        else:
            status = states.status_of(plural, payload)
            if outcomes.holds(payload) and (status.terminal or payload["metadata"].get("deletionTimestamp")):
                # record the end before our finalizer goes (requests: never on the event loop)
                return await asyncio.to_thread(self.resources.observed, plural, payload)
        if status.terminal:
            remember_end(handle.id, status)
        return status

    def fingerprint(self, handle: Handle) -> str | None:
        """The spec fingerprint stored with the work: a custom resource's annotation, a KFP run's
        description line. None (trusted) for work made before fingerprints were stored."""
        if handle.id.startswith(KFP_PREFIX):
            return self.runs.fingerprint(handle)
        return self.resources.fingerprint(handle)

    # ------------------------------------------------------------------ requests

    def get_object(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        """The custom resource as the API server returns it; NotFound when it does not exist."""
        return self.resources.get_object(namespace, plural, name)
