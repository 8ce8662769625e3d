"""KFP runs through the v2beta1 API: create once, find by display name, read, terminate.

Multi-user KFP (every full Kubeflow install with Profiles, detected from `healthz`) keeps runs in
a profile namespace: listing needs it and a run must belong to an experiment of it, so every call
names the namespace, and a missing one is bad input before anything is sent. Ids are `kfp/<run_id>`.
Runs have no labels, so a run has the display name `<name>-<key hash>-<attempt>` and its key and
spec fingerprint in the description (see `pipelines.describe`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import ids, naming, pipelines, states
from shared.backends.kubernetes.access import Kfp
from shared.errors import NotFound
from shared.retry import http_status
from shared.specs.model import PipelineRunSpec
from shared.status import Handle, Kind, Status

KFP_PREFIX = "kfp/"
BACKEND_NAME = "kubernetes"
DEFAULT_EXPERIMENT = "Default"  # where kfp.Client puts a run whose experiment is not named


class PipelineRuns:
    """Runs on one KFP API server, in the namespace the options name (multi-user KFP)."""

    def __init__(self, kfp: Kfp, cancel_timeout: float, mlflow_plugin: bool = False):
        self.kfp = kfp
        self.cancel_timeout = cancel_timeout
        self.mlflow_plugin = mlflow_plugin
        self.experiments = pipelines.Experiments(kfp)

    def submit(
        self, spec: PipelineRunSpec, key: str, attempt: int, namespace: str | None, context: SubmitContext
    ) -> Handle:
        display_name = naming.run_display_name(spec.name, key, attempt)
        namespace = self.kfp.namespace_for(namespace)
        experiment_plugin = context.mlflow.get("experiment_id") if self.mlflow_plugin else None
        body = pipelines.run_body(  # compiled (or looked up) and checked before anything is sent
            spec,
            display_name=display_name,
            key=key,
            env=context.env,
            mlflow_plugin_experiment=experiment_plugin,
            fingerprint=context.fingerprint,
            uploaded=self.uploaded(spec, namespace),
        )
        # Multi-user KFP refuses a run outside an experiment of its namespace; kfp.Client falls back
        # to the namespace's `Default` experiment (get-or-create), and so do we, in either mode.
        body["experiment_id"] = self.experiments.id_for(spec.experiment or DEFAULT_EXPERIMENT, namespace)
        api = self.kfp.runs()
        run = pipelines.create_once_then_find(
            lambda: self.kfp.request(api.run_service_create_run, body, retry=False),
            lambda: self._find(pipelines.equals("display_name", display_name), key, namespace),
        )
        return self.handle(run, key, namespace)

    def uploaded(self, spec: PipelineRunSpec, namespace: str | None) -> tuple[Any, dict[str, Any]] | None:
        """For a run of an uploaded pipeline: its version and PipelineSpec (SpecError when missing)."""
        if not spec.pipeline_name:
            return None
        from shared.backends.kubernetes import uploaded

        return uploaded.resolve(self.kfp, spec, namespace)

    def dry_run(self, spec: PipelineRunSpec, namespace: str | None, env: Mapping[str, str]) -> None:
        """What KFP has no dry run for, checked before anything is opened or created: the uploaded
        pipeline and version exist and take these parameters (a file or function is checked at submit)."""
        if spec.pipeline_name:
            from shared.specs.pipeline_ir import pipeline_arguments

            _, pipeline = self.uploaded(spec, self.kfp.namespace_for(namespace))
            pipeline_arguments(pipeline, spec.parameters, env)

    def find(self, key: str, namespace: str | None) -> Handle | None:
        namespace = self.kfp.namespace_for(namespace)
        run = self._find(
            pipelines.substring("display_name", f"-{naming.key_hash(key)[:16]}-"), key, namespace
        )
        return self.handle(run, key, namespace) if run else None

    def _find(self, filter_: str, key: str, namespace: str | None) -> dict[str, Any] | None:
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

    def get(self, handle_id: str, namespace: str | None) -> Handle:
        run = self.get_run(handle_id.removeprefix(KFP_PREFIX))
        return self.handle(run, pipelines.key_of(run) or "", namespace)

    def fingerprint(self, handle: Handle) -> str | None:
        """The spec fingerprint in the run's description; None for a run made before we stored it."""
        return pipelines.field_of(self.get_run(handle.id.removeprefix(KFP_PREFIX)), "fingerprint")

    def list(self, namespace: str | None) -> list[Handle]:
        namespace = self.kfp.namespace_for(namespace)
        kwargs = {"namespace": namespace} if namespace else {}
        body = self.kfp.request(
            self.kfp.runs().run_service_list_runs, page_size=100, sort_by="created_at desc", **kwargs
        )
        return [
            self.handle(r, key, namespace) for r in body.get("runs") or [] if (key := pipelines.key_of(r))
        ]

    def status(self, handle: Handle) -> Status:
        try:
            run = self.get_run(handle.id.removeprefix(KFP_PREFIX))
        except NotFound:
            return states.deleted_status(None, cancelled=False)
        return states.kfp_status(run, handle.url)

    def request_cancel(self, handle: Handle) -> Status:
        """Ask the server to terminate the run; returns the status before (termination is asynchronous)."""
        status = self.status(handle)
        if not status.terminal:
            self.kfp.request(self.kfp.runs().run_service_terminate_run, handle.id.removeprefix(KFP_PREFIX))
        return status

    def cancel(self, handle: Handle) -> Status:
        status = self.request_cancel(handle)
        if status.terminal:
            return status
        deadline = time.monotonic() + self.cancel_timeout
        delay = 0.1
        while time.monotonic() < deadline:  # termination is asynchronous: CANCELING, then a final state
            status = self.status(handle)
            if status.terminal:
                return status
            time.sleep(delay)
            delay = min(2.0, delay * 2)
        return status

    def get_run(self, run_id: str) -> dict[str, Any]:
        try:
            return self.kfp.request(self.kfp.runs().run_service_get_run, ids.check_kfp_run_id(run_id))
        except Exception as exc:
            if http_status(exc) == 404:
                raise NotFound(f"no KFP run {run_id}") from None
            raise

    def handle(self, run: dict[str, Any], key: str, namespace: str | None) -> Handle:
        display_name = run.get("display_name") or ""
        return Handle(
            backend=BACKEND_NAME,
            kind=Kind.PIPELINE,
            id=f"{KFP_PREFIX}{run['run_id']}",
            key=key,
            attempt=naming.attempt_of_display_name(display_name),
            name=display_name,
            namespace=namespace,
            url=self.kfp.run_url(run["run_id"]),
            resource="PipelineRun",
        )
