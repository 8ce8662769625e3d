"""MlflowModelPromotionOperator: the nightly loop's last step, as a task.

The rules are the core's (`shared.promotion`); this is the glue: the key from the task instance (a
retry registers no second version and decides once), the MLflow URI from the `kubeflow` connection,
the decision to XCom, and an Asset event on a new champion.

Asset events: the operator's outlet is the alias `champion_alias(model_name)`; only a promotion
adds an event to it, for the asset `champion_asset(model_name)`. So a deployment DAG with
`schedule=[champion_asset("commodity-forecaster")]` runs on every new champion and never on a
rejected challenger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias

from airflow_provider.compat import AirflowException, BaseOperator
from airflow_provider.connection import DEFAULT_CONN_ID
from airflow_provider.hooks.kubeflow import KubeflowHook

if TYPE_CHECKING:
    from airflow.sdk import Context

XCOM_KEYS = ("model_name", "model_version", "model_uri", "decision", "champion_version", "previous_champion_version",
             "metric", "value", "champion_value", "baseline_value", "reason")


def champion_asset(model_name: str) -> Asset:
    """The asset that changes when the registered model gets a new champion."""
    return Asset(name=f"mlflow-model/{model_name}@champion", uri=f"x-mlflow-model://{model_name}/champion")


def champion_alias(model_name: str) -> AssetAlias:
    return AssetAlias(name=f"mlflow-model/{model_name}@champion-events")


class MlflowModelPromotionOperator(BaseOperator):
    """Register the model a training run logged; move the `champion` alias only if it wins.

    :param model_name: the registered model.
    :param run_id: the training task's MLflow run, e.g.
        `"{{ ti.xcom_pull(task_ids='train', key='mlflow_run_id') }}"`. Templated.
    :param evaluate: the evaluation command (a string split like a shell would, or argv), run once
        per model with `{model_uri}` filled in; it prints `<metric>=<value>`. Templated.
    :param evaluate_spec: instead of `evaluate`, a TrainingJob or PipelineRun file (relative to the DAG
        file) taking `${params.model_uri}`, run as work once per model on the connection's backend
        under the key `<task key>/evaluate/<role>`, so a retry adopts it; it logs the metric to the
        MLflow run handed to it. `evaluate_params`: its other parameters. Both templated.
    :param metric, greater_is_better, margin, baseline, artifact_path, alias: see `kubeflow-tasks promote`.
    :param kubeflow_conn_id: the connection whose MLflow tracking URI holds the registry.
    """

    template_fields = ("run_id", "evaluate", "margin", "baseline", "evaluate_spec", "evaluate_params")
    ui_color = "#e8f0d8"

    def __init__(
        self,
        *,
        model_name: str,
        run_id: str,
        evaluate: str | Sequence[str] | None = None,
        metric: str = "rmse",
        greater_is_better: bool = False,
        margin: float | str = 0.0,
        baseline: str = "naive",
        artifact_path: str = "model",
        alias: str = "champion",
        evaluate_timeout: float | None = None,
        kubeflow_conn_id: str = DEFAULT_CONN_ID,
        evaluate_spec: str | None = None,
        evaluate_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [champion_alias(model_name)])
        super().__init__(**kwargs)
        self.model_name = model_name
        self.run_id = run_id
        # a list renders item by item
        self.evaluate = evaluate if evaluate is None or isinstance(evaluate, str) else list(evaluate)
        self.evaluate_spec = evaluate_spec
        self.evaluate_params = dict(evaluate_params or {})
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.margin = margin
        self.baseline = baseline
        self.artifact_path = artifact_path
        self.alias = alias
        self.evaluate_timeout = evaluate_timeout
        self.kubeflow_conn_id = kubeflow_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        import os

        from airflow_provider.operators.base import KubeflowBaseOperator
        from shared.errors import SpecError
        from shared.mlflow_handoff import resolve_tracking_uri
        from shared.promotion import PROMOTED, promote, promotion_spec

        spec = promotion_spec(
            model_name=self.model_name,
            source_run_id=self.run_id,
            evaluate=self.evaluate,
            metric=self.metric,
            greater_is_better=self.greater_is_better,
            margin=self.margin,
            baseline=self.baseline,
            artifact_path=self.artifact_path,
            alias=self.alias,
            evaluate_timeout=self.evaluate_timeout,
            working_dir=os.path.dirname(os.path.abspath(self.dag.fileloc)) if self.has_dag() else None,
            evaluate_spec=self.evaluate_spec,
            evaluate_params=self.evaluate_params or None,
        )
        options = KubeflowHook(self.kubeflow_conn_id).options
        uri = resolve_tracking_uri(options.mlflow_tracking_uri)
        if not uri:
            raise SpecError("mlflow_tracking_uri", "required: set it on the connection or $MLFLOW_TRACKING_URI")
        backend = KubeflowHook.backend_for(options) if spec.evaluate_spec else None  # the connection's, as for the other work
        try:
            decision = promote(spec, KubeflowBaseOperator._key(context), uri, progress=self.log.info, backend=backend)
        except SpecError:
            raise
        except Exception as exc:  # our errors carry one clean line; keep it the task's failure message
            raise AirflowException(str(exc)) from None
        result = decision.to_dict()
        ti = context["ti"]
        for key in XCOM_KEYS:
            if result.get(key) is not None:
                ti.xcom_push(key=key, value=result[key])
        if decision.decision == PROMOTED:
            extra = {k: result[k] for k in ("model_name", "model_version", "model_uri", "metric", "value")}
            context["outlet_events"][champion_alias(self.model_name)].add(champion_asset(self.model_name), extra=extra)
        return result
