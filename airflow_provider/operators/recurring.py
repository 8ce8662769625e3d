"""KubeflowRecurringRunOperator: keep one KFP recurring run per key from a DAG.

The rules are the core's (`shared.backends.kubernetes.recurring`): applying the same again changes
nothing, a change replaces, `disable` / `delete` do what they say. The key defaults to the DAG and
task ids, so every run of the DAG applies the same recurring run. A bad cron fails when the DAG is
parsed; the local backend refuses (its scheduler, this Airflow, is the recurrence).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider.connection import DEFAULT_CONN_ID
from airflow_provider.hooks.kubeflow import KubeflowHook

if TYPE_CHECKING:
    from airflow.sdk import Context


class KubeflowRecurringRunOperator(BaseOperator):
    """Create, keep, replace, disable or delete the KFP recurring run of `spec` for `key`.

    :param spec: a PipelineRun document or compiled pipeline file (relative to the DAG file). Templated.
    :param cron: five fields (minute first) or KFP's six (second first). Required unless `delete`.
    :param spec_params: pipeline parameters (turned into text by shared.params). Templated; `params` keeps Airflow's meaning.
    :param key: default `<dag_id>/<task_id>`.
    """

    template_fields = ("spec", "spec_params")

    def __init__(
        self,
        *,
        spec: str,
        cron: str | None = None,
        spec_params: Mapping[str, Any] | None = None,
        key: str | None = None,
        max_concurrency: int = 1,
        no_catchup: bool = False,
        disable: bool = False,
        delete: bool = False,
        pipeline_version: str | None = None,
        kubeflow_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        from shared.backends.kubernetes.recurring import schedule_of

        super().__init__(**kwargs)
        self.schedule = schedule_of(cron, max_concurrency, no_catchup, disable, delete)  # checked at parse time
        self.cron = self.schedule.cron if self.schedule else None
        self.max_concurrency = max_concurrency
        self.spec = spec
        self.spec_params = dict(spec_params or {})
        self.key = key
        self.no_catchup = no_catchup
        self.disable = disable
        self.delete = delete
        self.pipeline_version = pipeline_version
        self.kubeflow_conn_id = kubeflow_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        import os

        from shared.backends.kubernetes.recurring import apply_recurring_run
        from shared.errors import SpecError
        from shared.params import texts
        from shared.specs import load_spec

        base_dir = os.path.dirname(os.path.abspath(self.dag.fileloc)) if self.has_dag() else os.getcwd()
        path = self.spec if os.path.isabs(self.spec) else os.path.join(base_dir, self.spec)
        spec = load_spec(path, kind="pipeline", params=texts(self.spec_params))
        options = KubeflowHook(self.kubeflow_conn_id).options
        if options.backend != "kubernetes":
            raise SpecError(
                "backend", "the local backend has no recurring runs: this Airflow is the recurrence (schedule the DAG)"
            )
        backend = KubeflowHook.backend_for(options)
        namespace = spec.namespace or backend.kfp.options.namespace
        schedule = self.schedule
        experiment_id = backend.runs.experiments.id_for(spec.experiment, namespace) if spec.experiment and schedule else None
        applied = apply_recurring_run(
            backend.kfp,
            spec,
            self.key or f"{self.dag_id}/{self.task_id}",
            schedule,
            namespace=namespace,
            experiment_id=experiment_id,
            version_name=self.pipeline_version,
        )
        self.log.info("recurring run %s: %s", applied.action, applied.recurring_run_id or list(applied.removed))
        return applied.to_dict()
