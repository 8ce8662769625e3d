"""The glue every Kubeflow operator shares; the rules themselves are the core's (`shared.operations`).

One task try:
1. the spec is resolved and validated (a bad field fails the task before anything is submitted);
2. `submit_or_adopt` with the key (dag_id, task_id, run_id, map_index), preferring the remote id the
   task state store (Airflow 3.3+) remembers from an earlier try: a retry adopts running or
   succeeded work, and submits a new attempt after a remote failure; the first try after a clear
   (`lifecycle.first_try_of_sequence`) also reruns a success, unless `rerun_on_clear=False`;
3. ids, URLs and the MLflow run id go to XCom at once, before any waiting;
4. sync: wait with the work's log in the task log. `execution_timeout` calls `on_kill`, which
   cancels; a SIGTERM cancels only when the server no longer has the task instance running (a
   user's mark-failed, mark-success or clear), and otherwise (a worker shutting down) fails the try
   and leaves the work for the next try to adopt. Deferrable: hand the wait to `KubeflowRunTrigger`
   with the absolute deadline `ti.start_date + execution_timeout`, and on resume fail or finish in
   `execute_complete`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider.compat import AIRFLOW_VERSION, TRIGGER_ON_KILL, AirflowException, BaseOperator, conf
from airflow_provider.connection import DEFAULT_CONN_ID, ConnectionOptions
from airflow_provider.hooks.kubeflow import KubeflowHook
from airflow_provider.links import XCOM_MLFLOW_RUN_URL
from airflow_provider.operators.lifecycle import RUNNING, first_try_of_sequence, on_sigterm, server_state
from shared.status import Kind

if TYPE_CHECKING:
    from airflow.sdk import Context

    from shared.backends.base import Backend
    from shared.operations import Outcome, Submission
    from shared.specs import Spec
    from shared.status import Handle, Status

STATE_STORE_KEY = "kubeflow_remote_id"  # renaming it breaks adoption by in-flight retries
DEFER_TIMEOUT_MARGIN = 60.0  # the framework backstop fires this long after our own deadline
RESUME_LOG_LINES = 2000  # deferrable mode prints at most this many last log lines on resume


def raise_for_status(handle: Handle, status: Status) -> None:
    """Fail the task unless the work succeeded, with the work's own message."""
    if status.state.value != "SUCCEEDED":
        what = f"{handle.resource or handle.kind.value} {handle.name} ({handle.id})"
        raise AirflowException(f"{what} ended {status.state.value}: {status.message or status.raw_state}")


class KubeflowBaseOperator(BaseOperator):
    """Submit (or adopt) one piece of Kubeflow work and wait for it.

    :param spec: a manifest file path (relative to the DAG file), a manifest mapping, or for
        pipelines a pipeline function or `package.module:function`. Templated.
    :param spec_params: values for `${params.NAME}` in a manifest, or the pipeline's parameters.
        Templated. (`params` keeps Airflow's meaning: the Jinja `params` of the task.)
    :param name: overrides the work's `metadata.name`. Templated.
    :param kubeflow_conn_id: the `kubeflow` connection; `kubeflow_default` (the default) means the
        local backend when no such connection exists. Templated.
    :param namespace: the namespace of the work (backend kubernetes) instead of the connection's;
        still subject to its allowed namespaces. Templated.
    :param labels: Kubernetes labels for the remote object (training jobs and experiments). Templated.
    :param annotations: Kubernetes annotations for the remote object (likewise). Templated.
    :param upstream_mlflow_run_id: the MLflow run of the previous task, recorded on this task's run
        so the lineage continues. Templated.
    :param deferrable: wait in the triggerer instead of a worker slot (recommended for long work).
    :param cancel_on_kill: cancel the work when a user stops the task or it times out.
    :param rerun_on_clear: a cleared task runs its work again (a new attempt) even when the last
        attempt succeeded; False hands the old success back. Retries adopt either way.
    :param startup_timeout: seconds (or a timedelta) the work's pods may take to run; past it (an image
        that does not pull, no node that fits, a crash loop) the work is cancelled and the task fails
        with the cluster's reason.
    """

    kind: ClassVar[Kind]
    resource: ClassVar[str | None] = None  # PyTorchJob / TFJob for the training-job operators
    template_fields = (
        "spec",
        "spec_params",
        "spec_name",
        "kubeflow_conn_id",
        "namespace",
        "labels",
        "annotations",
        "upstream_mlflow_run_id",
    )
    template_fields_renderers = {"spec": "json", "spec_params": "json"}
    ui_color = "#d6e4f5"

    def __init__(
        self,
        *,
        spec: Any,
        spec_params: Mapping[str, Any] | None = None,
        name: str | None = None,
        kubeflow_conn_id: str = DEFAULT_CONN_ID,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        upstream_mlflow_run_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        cancel_on_kill: bool = True,
        startup_timeout: float | timedelta | None = None,
        rerun_on_clear: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.spec_params = dict(spec_params or {})
        self.spec_name = name
        self.kubeflow_conn_id = kubeflow_conn_id
        self.namespace = namespace
        self.labels = dict(labels or {})
        self.annotations = dict(annotations or {})
        self.upstream_mlflow_run_id = upstream_mlflow_run_id
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self.startup_timeout = (
            startup_timeout.total_seconds() if isinstance(startup_timeout, timedelta) else startup_timeout
        )
        self.rerun_on_clear = rerun_on_clear
        self._backend: Backend | None = None
        self._submission: Submission | None = None

    # ------------------------------------------------------------------ preparing a try

    def _options(self) -> ConnectionOptions:
        options = KubeflowHook(self.kubeflow_conn_id).options
        if not self.namespace:
            return options
        if options.backend == "local":
            self.log.info("namespace %r does not apply to the local backend", self.namespace)
            return options
        return options.with_namespace(self.namespace)

    def _resolve_spec(self) -> Spec:
        import os

        from airflow_provider.specs import resolve_spec
        from shared.specs import require_resource

        base_dir = os.path.dirname(os.path.abspath(self.dag.fileloc)) if self.has_dag() else os.getcwd()
        spec = resolve_spec(
            self.kind,
            self.spec,
            params=self.spec_params,
            name=self.spec_name,
            base_dir=base_dir,
            labels=self.labels,
            annotations=self.annotations,
        )
        return require_resource(spec, self.resource, type(self).__name__)

    @staticmethod
    def _key(context: Context) -> str:
        from shared.keys import task_key

        ti = context["ti"]
        return task_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)

    @staticmethod
    def _labels(context: Context) -> dict[str, str]:
        ti = context["ti"]
        return {
            "scheduler": "airflow",
            "airflow.dag_id": ti.dag_id,
            "airflow.task_id": ti.task_id,
            "airflow.run_id": ti.run_id,
            "airflow.map_index": str(ti.map_index),
            "airflow.try_number": str(ti.try_number),
        }

    def _deadline(self, context: Context) -> float | None:
        """`ti.start_date + execution_timeout` as epoch seconds: the same in every process."""
        if not self.execution_timeout:
            return None
        start = getattr(context["ti"], "start_date", None)
        started = start.timestamp() if start is not None else time.time()
        return started + self.execution_timeout.total_seconds()

    # ------------------------------------------------------------------ execute

    def execute(self, context: Context) -> dict[str, Any]:
        from shared.mlflow_handoff import resolve_tracking_uri
        from shared.operations import finish, run_async, submit_or_adopt

        spec = self._resolve_spec()
        options = self._options()
        backend = self._backend = KubeflowHook.backend_for(options)
        store = context.get("task_state_store")
        if store is None:
            self.log.info("Airflow %s has no task state store (3.3+): a retry finds its work by key", AIRFLOW_VERSION)
        new_run = self.rerun_on_clear and first_try_of_sequence(context["ti"], self.retries)
        common = {
            "mlflow_tracking_uri": resolve_tracking_uri(options.mlflow_tracking_uri),
            "upstream_mlflow_run_id": self.upstream_mlflow_run_id or None,
            "credentials_secret": options.mlflow_credentials_secret,
            "mlflow_experiment": options.mlflow_experiment,
            "labels": self._labels(context),
            "known_id": store.get(STATE_STORE_KEY) if store is not None else None,
            "new_run": new_run,
        }
        key = self._key(context)
        if self.deferrable:
            submission = submit_or_adopt(backend, spec, key, **common)
            status = self._submitted(context, options, submission)
            if not status.terminal:
                self._defer(context, submission)
            finish(submission, status, spec)
            return self._complete(context, submission.handle, status)

        outcome = asyncio.run(self._run_sync(context, options, spec, key, common, run_async))
        return self._complete(context, outcome.submission.handle, outcome.status)

    async def _run_sync(
        self, context: Context, options: ConnectionOptions, spec: Spec, key: str, common: dict[str, Any], run_async: Any
    ) -> Outcome:
        """`run_async` until the work ends, or a SIGTERM: a user's stop cancels, a shutdown leaves it."""
        loop = asyncio.get_running_loop()
        cancel, terminated = asyncio.Event(), asyncio.Event()
        with on_sigterm(lambda: loop.call_soon_threadsafe(terminated.set)):
            run = asyncio.ensure_future(
                run_async(
                    self._backend,
                    spec,
                    key,
                    **common,
                    cancel_requested=cancel,
                    on_submitted=lambda submission: self._submitted(context, options, submission),
                    on_status=self._log_status,
                    on_log=lambda line: self.log.info("| %s", line),
                    startup_timeout=self.startup_timeout,
                )
            )
            signalled = asyncio.ensure_future(terminated.wait())
            await asyncio.wait({run, signalled}, return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            if not run.done():
                state = server_state(context["ti"])
                what = self._submission.handle.id if self._submission else "the work"
                if state in (RUNNING, None):
                    run.cancel()
                    raise AirflowException(
                        f"SIGTERM while the task instance is {state or 'of unknown state'} on the server "
                        f"(a worker shutting down, not a user's stop): {what} keeps running for the next try to adopt"
                    )
                if not self.cancel_on_kill:
                    run.cancel()
                    raise AirflowException(f"stopped by the user ({state}); cancel_on_kill=False leaves {what} running")
                self.log.info("SIGTERM and the task instance is %s on the server: cancelling the work", state)
                cancel.set()
            return await run

    def _log_status(self, status: Status) -> None:
        self.log.info("%s%s", status.state.value, f" ({status.raw_state})" if status.raw_state else "")

    def _submitted(self, context: Context, options: ConnectionOptions, submission: Submission) -> Status:
        """Remember the work (task state store, XCom) before any waiting; its current status."""
        assert self._backend is not None
        self._submission = submission
        handle = submission.handle
        status = self._backend.status(handle)
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_STORE_KEY, handle.id)
        verb = "adopted" if submission.adopted else "submitted"
        self.log.info("%s %s %s as %s (attempt %s)", verb, handle.resource, handle.name, handle.id, handle.attempt)
        values = {
            "remote_id": handle.id,
            "name": handle.name,
            "namespace": handle.namespace,
            "url": handle.url,
            "attempt": handle.attempt,
            "adopted": submission.adopted,
            "state": status.state.value,
            "mlflow_run_id": submission.mlflow_run_id,
            "mlflow_experiment_id": submission.mlflow.get("experiment_id"),
        }
        links = {
            XCOM_MLFLOW_RUN_URL: options.mlflow_run_url(submission.mlflow.get("experiment_id"), submission.mlflow_run_id),
            **self._link_values(options, handle),
        }
        ti = context["ti"]
        for key, value in values.items():
            if value is not None:
                ti.xcom_push(key=key, value=value)
        for key, url in links.items():  # "" when there is no page: the link reads its key, not an error
            ti.xcom_push(key=key, value=url or "")
        if submission.mlflow_run_id:
            self.log.info("MLflow run %s", submission.mlflow_run_id)
        return status

    def _link_values(self, options: ConnectionOptions, handle: Handle) -> dict[str, str | None]:
        """Kind-specific link URLs to push (see the subclasses)."""
        return {}

    def _output_xcoms(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """Kind-specific outputs to push under their own keys (see the subclasses)."""
        return {}

    def _complete(self, context: Context, handle: Handle, status: Status) -> dict[str, Any]:
        ti = context["ti"]
        ti.xcom_push(key="state", value=status.state.value)
        for key, value in self._output_xcoms(status.outputs).items():
            ti.xcom_push(key=key, value=value)
        raise_for_status(handle, status)
        mlflow = self._submission.mlflow_run_id if self._submission else None
        return {**handle.to_dict(), **status.to_dict(), "mlflow_run_id": mlflow}

    # ------------------------------------------------------------------ deferrable

    def _defer(self, context: Context, submission: Submission) -> None:
        from airflow_provider.triggers.kubeflow import KubeflowRunTrigger

        deadline = self._deadline(context)
        if not TRIGGER_ON_KILL and self.cancel_on_kill:
            self.log.info(
                "Airflow %s: marking this deferred task failed or clearing it leaves its work running "
                "(trigger on_kill needs Airflow 3.3); execution_timeout still cancels it",
                AIRFLOW_VERSION,
            )
        backstop = None if deadline is None else timedelta(seconds=max(deadline - time.time(), 0) + DEFER_TIMEOUT_MARGIN)
        self.log.info("deferring until %s %s is done", submission.handle.resource, submission.handle.id)
        self.defer(
            trigger=KubeflowRunTrigger(
                handle=submission.handle.to_dict(),
                kubeflow_conn_id=self.kubeflow_conn_id,
                deadline=deadline,
                startup_timeout=self.startup_timeout,
            ),
            method_name="execute_complete",
            kwargs={
                "adopted": submission.adopted,
                "mlflow_run_id": submission.mlflow_run_id,
                "mlflow_experiment_id": submission.mlflow.get("experiment_id"),
            },
            timeout=backstop,
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        adopted: bool = False,
        mlflow_run_id: str | None = None,
        mlflow_experiment_id: str | None = None,
    ) -> dict[str, Any]:
        """Resume after the trigger: print the work's log, end the MLflow run, fail or finish."""
        from shared.mlflow_handoff import resolve_tracking_uri
        from shared.operations import Submission, finish
        from shared.status import Handle, State, Status

        options = self._options()
        backend = self._backend = KubeflowHook.backend_for(options)
        handle = Handle.from_dict(event["handle"])
        uri = resolve_tracking_uri(options.mlflow_tracking_uri)
        mlflow = {"tracking_uri": uri, "run_id": mlflow_run_id, "experiment_id": mlflow_experiment_id or ""}
        self._submission = Submission(handle, adopted, mlflow if uri and mlflow_run_id else {})
        self._print_log_tail(backend, handle)
        if event["event"] == "error":
            raise AirflowException(f"waiting for {handle.resource} {handle.id} failed: {event['message']}")
        if event["event"] == "timeout":
            status = backend.cancel(handle)  # the trigger cancelled already; this re-checks the end state
            if status.state is not State.SUCCEEDED:  # it may have succeeded just before the deadline
                finish(self._submission, Status(State.CANCELLED, status.raw_state, event["message"], status.outputs))
                raise AirflowException(f"execution_timeout: {event['message']}")
        else:
            status = Status.from_dict(event["status"])
        self._log_status(status)
        finish(self._submission, status, self._spec_for_plots())
        return self._complete(context, handle, status)

    def _spec_for_plots(self) -> Spec | None:
        """After a deferral the spec is gone: an experiment's HPO plots need its search space, so it is
        resolved again; the work's outcome must not depend on that, so a failure only loses the plots."""
        if self.kind is not Kind.EXPERIMENT:
            return None
        try:
            return self._resolve_spec()
        except Exception as exc:
            self.log.warning("no HPO plots: the spec did not resolve again: %s", " ".join(str(exc).split())[:300])
            return None

    def _print_log_tail(self, backend: Backend, handle: Handle) -> None:
        """The work's last log lines, for people; a log we cannot read (no `pods/log` RBAC, the pod
        already cleaned up, a 5xx) is a warning, never the task's outcome."""
        try:
            tail = getattr(backend, "log_tail", None)
            lines = tail(handle, RESUME_LOG_LINES) if tail else deque(backend.logs(handle), maxlen=RESUME_LOG_LINES)
            for line in lines:
                self.log.info("| %s", line)
        except Exception as exc:
            self.log.warning("could not read the log of %s %s: %s", handle.resource, handle.id, " ".join(str(exc).split())[:300])
    # ------------------------------------------------------------------ lineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (when its provider is installed): the work as job facets, the MLflow run as output."""
        from airflow_provider.lineage import operator_lineage

        return operator_lineage(self._submission)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_complete(task_instance)

    # ------------------------------------------------------------------ kill

    def on_kill(self) -> None:
        """A timed-out sync task cancels its work (a SIGTERM is decided in `_run_sync`; a deferred
        task's stop is the trigger's `on_kill`)."""
        if not self.cancel_on_kill or self._submission is None or self._backend is None:
            return
        from shared.operations import finish

        handle = self._submission.handle
        status = self._backend.cancel(handle)
        self.log.info("cancelled %s %s: %s", handle.resource, handle.id, status.state.value)
        finish(self._submission, status)
