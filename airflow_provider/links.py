"""Extra links: the KFP run, the MLflow run, the Katib experiment.

The operator pushes each URL to XCom right after submitting (under `xcom_key`), so the links work
while the task still runs or is deferred; `get_link` only reads that value back.
"""

from __future__ import annotations

from typing import Any

from airflow_provider.compat import BaseOperatorLink

XCOM_KFP_RUN_URL = "kfp_run_url"
XCOM_MLFLOW_RUN_URL = "mlflow_run_url"
XCOM_KATIB_EXPERIMENT_URL = "katib_experiment_url"


class _XComUrlLink(BaseOperatorLink):
    """A link whose URL the operator stored in XCom under `xcom_key`."""

    @property
    def xcom_key(self) -> str:
        raise NotImplementedError

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(key=self.xcom_key, ti_key=ti_key)
        return value if isinstance(value, str) and value.startswith(("http://", "https://", "file://")) else ""


class KubeflowPipelineRunLink(_XComUrlLink):
    name = "KFP run"

    @property
    def xcom_key(self) -> str:
        return XCOM_KFP_RUN_URL


class MlflowRunLink(_XComUrlLink):
    name = "MLflow run"

    @property
    def xcom_key(self) -> str:
        return XCOM_MLFLOW_RUN_URL


class KatibExperimentLink(_XComUrlLink):
    name = "Katib experiment"

    @property
    def xcom_key(self) -> str:
        return XCOM_KATIB_EXPERIMENT_URL
