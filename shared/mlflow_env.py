"""The environment hand-off: which MLflow server and experiment, and the run the work resumes.

The work's own `with mlflow.start_run():` resumes our run from MLFLOW_TRACKING_URI / MLFLOW_RUN_ID /
MLFLOW_EXPERIMENT_ID. The URI never carries credentials (shared.secrets); they travel apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from shared.mlflow_client import DEFAULT_EXPERIMENT


def resolve_tracking_uri(explicit: str | None) -> str | None:
    """The explicit URI, else $MLFLOW_TRACKING_URI, else None (None means: make no MLflow calls)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or None


def resolve_experiment_name(explicit: str | None) -> str:
    """The explicit name, else $MLFLOW_EXPERIMENT_NAME (MLflow's own variable), else `kubeflow-tasks`."""
    return explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class ParentRun:
    """The task's run, as handed to the work and passed between processes.

    `tracking_uri` never holds credentials (see shared.secrets): they travel as `secret_env()`.
    """

    tracking_uri: str
    run_id: str
    experiment_id: str

    def env(self) -> dict[str, str]:
        """The variables with which the work's `mlflow.start_run()` resumes this run."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_RUN_ID": self.run_id,
            "MLFLOW_EXPERIMENT_ID": self.experiment_id,
        }

    def secret_env(self) -> dict[str, str]:
        """MLflow's credential variables for the work; never written to a file or an object."""
        from shared.secrets import credentials_for

        return credentials_for(self.tracking_uri)

    def context(self) -> dict[str, str]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "experiment_id": self.experiment_id}

    @classmethod
    def from_context(cls, mapping: Mapping[str, str]) -> ParentRun:
        return cls(
            tracking_uri=mapping["tracking_uri"],
            run_id=mapping["run_id"],
            experiment_id=mapping["experiment_id"],
        )
