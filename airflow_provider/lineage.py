"""OpenLineage facets for a finished operator, used when the OpenLineage provider is installed.

The provider's listener asks each operator for `get_openlineage_facets_on_complete`; ours answers
with the Kubeflow work as a job facet (`kubeflow`: KFP run, PyTorchJob, TFJob or Katib experiment,
its name and namespace), its remote id as the run's external query id, and the MLflow run that
recorded it as an output dataset. This module is only imported from that method, so without the
provider nothing here is loaded. (No registered model: these operators register none.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import attr
from airflow.providers.common.compat.openlineage.facet import ExternalQueryRunFacet, OutputDataset
from airflow.providers.openlineage.extractors import OperatorLineage
from openlineage.client.facet_v2 import JobFacet

if TYPE_CHECKING:
    from shared.operations import Submission

SCHEMA_URL = "https://kubeflow-tasks.dev/spec/facets/KubeflowJobFacet.json"  # our facet; no public schema yet


@attr.define
class KubeflowJobFacet(JobFacet):
    """The Kubeflow work a task ran: its kind, name and place (the facet key is `kubeflow`).

    A facet of its own: the Airflow integration fills the standard `jobType` facet with "TASK".
    """

    resource: str  # PipelineRun, PyTorchJob, TFJob or Experiment
    name: str
    namespace: str | None = None
    backend: str = ""
    url: str | None = None

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_URL


def operator_lineage(submission: Submission | None) -> Any:
    """The `OperatorLineage` of a try that submitted or adopted `submission` (empty without one)."""
    if submission is None:
        return OperatorLineage()
    handle = submission.handle
    resource = handle.resource or {"pipeline": "PipelineRun"}.get(handle.kind.value, handle.kind.value)
    outputs = []
    mlflow = submission.mlflow
    if mlflow.get("run_id"):
        outputs.append(
            OutputDataset(
                namespace=_public_uri(mlflow.get("tracking_uri", "")) or "mlflow",
                name=f"experiments/{mlflow.get('experiment_id', '')}/runs/{mlflow['run_id']}",
            )
        )
    return OperatorLineage(
        outputs=outputs,
        run_facets={"externalQuery": ExternalQueryRunFacet(externalQueryId=handle.id, source=handle.backend)},
        job_facets={
            "kubeflow": KubeflowJobFacet(
                resource=resource, name=handle.name, namespace=handle.namespace, backend=handle.backend, url=handle.url
            )
        },
    )


def _public_uri(uri: str) -> str:
    """The tracking URI without credentials (a lineage namespace is shown to everyone)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if parts.scheme else uri
