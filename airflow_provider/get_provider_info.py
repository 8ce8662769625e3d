"""What Airflow learns about this provider through the `apache_airflow_provider` entry point.

Read by every Airflow process (`airflow providers list`, the API server's connection form), so it
imports nothing but the connection-field table.
"""

from __future__ import annotations

from typing import Any

from airflow_provider import __version__
from airflow_provider.connection import CONN_TYPE, HIDDEN_FIELDS, PLACEHOLDERS, RELABELING, conn_fields

INTEGRATION = "Kubeflow"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "kubeflow-tasks",
        "name": "Kubeflow (kubeflow-tasks)",
        "description": "Kubeflow Pipelines runs, Katib experiments and training jobs (PyTorchJob, TFJob), "
        "idempotent across retries, cancelled on kill and timeout, with MLflow lineage.",
        "versions": [__version__],
        "integrations": [{"integration-name": INTEGRATION, "external-doc-url": "https://www.kubeflow.org/docs/"}],
        "operators": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider.operators.kubeflow", "airflow_provider.operators.registry",
                                                                     "airflow_provider.operators.recurring"]}],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider.sensors.kubeflow"]}],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider.hooks.kubeflow"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider.triggers.kubeflow"]}],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": "airflow_provider.hooks.kubeflow.KubeflowHook",
                "hook-name": "Kubeflow",
                "conn-fields": conn_fields(),
                "ui-field-behaviour": {
                    "hidden-fields": HIDDEN_FIELDS,
                    "relabeling": RELABELING,
                    "placeholders": PLACEHOLDERS,
                },
            }
        ],
        "extra-links": [
            "airflow_provider.links.KubeflowPipelineRunLink",
            "airflow_provider.links.MlflowRunLink",
            "airflow_provider.links.KatibExperimentLink",
        ],
    }
