"""Katib trials' runs: one nested run per trial (tag `mlflow.parentRunId`), ended with its metrics.

Best effort: a trial must not fail because of an MLflow outage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

from shared.mlflow_client import (
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    TRIAL_STATUSES,
    TRIAL_TAG,
    best_effort,
    clean_value,
    metric_batch,
)
from shared.mlflow_env import ParentRun


def start_trial_run(
    mlflow_ctx: Mapping[str, str], *, trial_name: str, parameters: Mapping[str, Any]
) -> str | None:
    """Create a trial's nested run in the parent's experiment, with the trial's parameters.

    Returns the run id, or None when MLflow failed (the trial then runs without a run of its own;
    a trial must not fail because of an MLflow outage).
    """
    from mlflow.entities import Param

    parent = ParentRun.from_context(mlflow_ctx)

    def create(client: MlflowClient) -> str:
        run = client.create_run(
            parent.experiment_id,
            run_name=trial_name,
            tags={PARENT_RUN_TAG: parent.run_id, RUN_NAME_TAG: trial_name, TRIAL_TAG: trial_name},
        )
        params = [Param(name, clean_value(value, parent.tracking_uri)) for name, value in parameters.items()]
        if params:
            client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    return best_effort(parent.tracking_uri, f"create the run of trial {trial_name!r}", create)


def trial_env(mlflow_ctx: Mapping[str, str], trial_run_id: str | None) -> dict[str, str]:
    """The hand-off variables for a trial's processes: they resume the trial's own run.

    Without a trial run (MLflow failed when it was to be created) the trial gets no hand-off.
    """
    if not trial_run_id:
        return {}
    parent = ParentRun.from_context(mlflow_ctx)
    return ParentRun(parent.tracking_uri, trial_run_id, parent.experiment_id).env()


def finish_trial_run(
    mlflow_ctx: Mapping[str, str], run_id: str | None, *, metrics: Mapping[str, float], state: str
) -> None:
    """Log the trial's final metrics and end its run with `state` (FINISHED, FAILED or KILLED)."""
    if state not in TRIAL_STATUSES:
        raise ValueError(f"state: expected one of {sorted(TRIAL_STATUSES)}, got {state!r}")
    if not run_id:
        return
    tracking_uri = ParentRun.from_context(mlflow_ctx).tracking_uri

    def finish(client: MlflowClient) -> None:
        if metrics:
            client.log_batch(run_id, metrics=metric_batch(metrics))
        client.set_terminated(run_id, state)

    best_effort(tracking_uri, f"end trial run {run_id}", finish)
