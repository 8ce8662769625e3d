"""The four operators: one per kind of Kubeflow work, differing only in kind, links and outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider.connection import ConnectionOptions
from airflow_provider.links import (
    XCOM_KATIB_EXPERIMENT_URL,
    XCOM_KFP_RUN_URL,
    KatibExperimentLink,
    KubeflowPipelineRunLink,
    MlflowRunLink,
)
from airflow_provider.operators.base import KubeflowBaseOperator
from shared.status import Handle, Kind


class KubeflowPipelineRunOperator(KubeflowBaseOperator):
    """A Kubeflow Pipelines run: `spec=` a PipelineRun document, a compiled pipeline YAML, a
    pipeline function or `package.module:function`; `params=` the pipeline's parameters.

    Or, instead of `spec`, `pipeline_name=` a pipeline uploaded to KFP and optionally
    `pipeline_version=` one of its versions (default: the newest), as `kfp run submit
    --pipeline-name` (Kubernetes backend; both templated). The version is looked up, and the
    parameters checked against it, before anything is submitted."""

    kind = Kind.PIPELINE
    operator_extra_links = (KubeflowPipelineRunLink(), MlflowRunLink())

    def __init__(
        self, *, spec: Any = None, pipeline_name: str | None = None, pipeline_version: str | None = None, **kwargs: Any
    ) -> None:
        from shared.errors import SpecError
        from shared.specs.builders import uploaded_pipeline_manifest

        if (spec is None) == (pipeline_name is None):
            raise SpecError("spec", "give spec= or pipeline_name= (a pipeline uploaded to KFP), one of them")
        if pipeline_version is not None and pipeline_name is None:
            raise SpecError("pipeline_version", "applies with pipeline_name=")
        if pipeline_name is not None:  # a PipelineRun document: `spec` is templated, so are these
            spec = uploaded_pipeline_manifest(pipeline_name, version=pipeline_version)
        super().__init__(spec=spec, **kwargs)

    def _link_values(self, options: ConnectionOptions, handle: Handle) -> dict[str, str | None]:
        return {XCOM_KFP_RUN_URL: handle.url}

    def _output_xcoms(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"outputs": dict(outputs.get("outputs") or {})}


class KatibExperimentOperator(KubeflowBaseOperator):
    """A Katib Experiment. The best trial's parameters and metrics go to XCom (`best_parameters`,
    `best_metrics`, `best_trial`), so the next task can template
    `{{ ti.xcom_pull(task_ids='hpo', key='best_parameters')['learning_rate'] }}`."""

    kind = Kind.EXPERIMENT
    operator_extra_links = (KatibExperimentLink(), MlflowRunLink())

    def _link_values(self, options: ConnectionOptions, handle: Handle) -> dict[str, str | None]:
        return {XCOM_KATIB_EXPERIMENT_URL: options.katib_experiment_url(handle.name, handle.namespace)}

    def _output_xcoms(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {name: outputs[name] for name in ("best_parameters", "best_metrics", "best_trial") if name in outputs}


class PyTorchJobOperator(KubeflowBaseOperator):
    """A PyTorchJob (kubeflow.org/v1): the manifest you would `kubectl apply`."""

    kind = Kind.TRAINING_JOB
    resource = "PyTorchJob"
    operator_extra_links = (MlflowRunLink(),)


class TFJobOperator(KubeflowBaseOperator):
    """A TFJob (kubeflow.org/v1): the manifest you would `kubectl apply`."""

    kind = Kind.TRAINING_JOB
    resource = "TFJob"
    operator_extra_links = (MlflowRunLink(),)
