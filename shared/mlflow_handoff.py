"""MLflow hand-off: the task's run, opened before submission and ended with the remote outcome.

The task creates (or adopts, by key and attempt) a run and hands it to the remote work through the
standard variables MLFLOW_TRACKING_URI / MLFLOW_RUN_ID / MLFLOW_EXPERIMENT_ID, so the work's own
`with mlflow.start_run():` resumes our run. Katib trials become nested runs (tag `mlflow.parentRunId`).

Only `MlflowClient` is used, never the fluent API, so nothing global changes in the caller's process
(no active run, no tracking URI set). mlflow is imported inside functions: `import shared` stays light.

Failure policy: `open_parent_run` raises, because a task must not submit work without the run it
promised to hand over. Everything after submission is best effort: an MLflow outage must not fail a
task whose work succeeded, so those calls log a warning (with secrets redacted) and return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import BackendError, TransientError
from shared.keys import key_digest
from shared.retry import is_transient
from shared.status import State

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

from shared.mlflow_client import (  # noqa: F401 - the tag names are part of this module's interface
    ATTEMPT_TAG,
    DEFAULT_EXPERIMENT,
    KEY_HASH_TAG,
    KEY_TAG,
    MESSAGE_TAG,
    PREVIOUS_RUN_TAG,
    RUN_NAME_TAG,
    RUN_STATUS,
    STATE_TAG,
    attempt_call,
    best_effort,
    clean_value,
    client_defaults,
    client_for,
    display_uri,
    log_tags,
    metric_batch,
    redact_for,
)
from shared.mlflow_env import ParentRun, resolve_experiment_name, resolve_tracking_uri  # noqa: F401
from shared.mlflow_trials import finish_trial_run, start_trial_run, trial_env  # noqa: F401


def _experiment_id(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # another task created it meanwhile
    if experiment is None or experiment.lifecycle_stage != "active":
        raise BackendError(f"experiment {name!r} is deleted; restore it or choose another experiment name")
    return experiment.experiment_id


def open_parent_run(
    tracking_uri: str,
    *,
    key: str,
    run_name: str,
    attempt: int | None = None,
    experiment_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> ParentRun:
    """Get or create the task's run in `experiment_name`; raises if MLflow cannot be reached.

    Runs are found by the tag `kubeflow_tasks.key` (searched through its hash). With `attempt`, the
    run of that attempt is adopted whatever its status (the backend adopts the remote work of the
    same attempt, running or succeeded). Without it, the newest run we have not ended (no `kubeflow_tasks.state` tag) is
    adopted: the work's own `with mlflow.start_run()` may already have marked it FINISHED while the
    remote work goes on. Otherwise a new run is created, linked to the key's newest run by
    `kubeflow_tasks.previous_run_id`. `tags` say where the run came from (scheduler, task) and must
    hold no secret; known secrets are redacted anyway. `experiment_name` defaults as
    `resolve_experiment_name` says. The returned run's URI holds no credentials.
    """
    from shared.secrets import split_uri

    clean_uri, _ = split_uri(tracking_uri)  # remembered: our own client still uses the full URI
    experiment_name = resolve_experiment_name(experiment_name)
    try:
        with client_defaults():
            client = client_for(tracking_uri)
            experiment_id = _experiment_id(client, experiment_name)
            runs = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{KEY_HASH_TAG}` = '{key_digest(key)}'",
                order_by=["attributes.start_time DESC"],
                max_results=100,
            )
            runs = [run for run in runs if run.data.tags.get(KEY_TAG) == key]
            if attempt is None:
                adopted = next((run for run in runs if STATE_TAG not in run.data.tags), None)
            else:
                adopted = next((run for run in runs if run.data.tags.get(ATTEMPT_TAG) == str(attempt)), None)
            if adopted is not None:
                return ParentRun(clean_uri, adopted.info.run_id, experiment_id)
            run_tags = {**(tags or {}), KEY_TAG: key, KEY_HASH_TAG: key_digest(key), RUN_NAME_TAG: run_name}
            if attempt is not None:
                run_tags[ATTEMPT_TAG] = str(attempt)
            if runs:
                run_tags[PREVIOUS_RUN_TAG] = runs[0].info.run_id
            run = client.create_run(
                experiment_id,
                run_name=run_name,
                tags={name: clean_value(value, tracking_uri) for name, value in run_tags.items()},
            )
            return ParentRun(clean_uri, run.info.run_id, experiment_id)
    except Exception as exc:
        error = TransientError if is_transient(exc) else BackendError
        detail = redact_for(" ".join(str(exc).split()), tracking_uri)
        # `from None`: the original exception's text may carry the URI's credentials.
        raise error(
            f"MLflow at {display_uri(tracking_uri)}: cannot open the run for key {key!r}: {detail}"
        ) from None


def set_remote_tags(parent: ParentRun, *, handle: Mapping[str, Any]) -> None:
    """Tag the run with where the work runs (a `Handle.to_dict()`): backend, kind, id, URL, namespace."""
    fields = {
        "backend": handle.get("backend"),
        "kind": handle.get("kind"),
        "remote_id": handle.get("id"),
        "remote_url": handle.get("url"),
        "namespace": handle.get("namespace"),
    }
    tags = {f"kubeflow_tasks.{name}": value for name, value in fields.items() if value not in (None, "")}
    best_effort(
        parent.tracking_uri,
        "tag the run with the remote work",
        lambda client: log_tags(client, parent.run_id, tags, parent.tracking_uri),
    )


def _named_values(value: Any, value_field: str) -> dict[str, Any]:
    """{name: value} from a mapping or from Katib's list form [{"name": …, "value"/"latest": …}]."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return {
            item["name"]: item.get(value_field, item.get("value"))
            for item in value
            if isinstance(item, Mapping) and "name" in item
        }
    return {}


def _as_float(value: Any) -> float | None:
    """A number, or a string holding one (Katib reports metric values as strings); else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _outputs_to_mlflow(outputs: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """Split the work's outputs into (params, metrics, tags) for the run.

    `best_parameters` become params `best.<name>`, `best_metrics` and other numeric outputs become
    metrics, other string outputs tags `kubeflow_tasks.output.<name>`; nested structures are skipped.
    """
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for name, value in outputs.items():
        if name == "best_parameters":
            params.update({f"best.{k}": str(v) for k, v in _named_values(value, "value").items()})
        elif name == "best_metrics":
            numbers = {k: _as_float(v) for k, v in _named_values(value, "latest").items()}
            metrics.update({k: v for k, v in numbers.items() if v is not None})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[name] = float(value)
        elif isinstance(value, str):
            tags[f"kubeflow_tasks.output.{name}"] = value
    return params, metrics, tags


def finish_parent_run(
    parent: ParentRun, *, state: State, message: str = "", outputs: Mapping[str, Any] | None = None
) -> None:
    """End the task's run with the remote outcome: outputs logged, state tagged, status set.

    The status is set even when the run is already terminal: the work's `with mlflow.start_run()`
    ends our run FINISHED when its block exits, but the remote outcome is what counts. Calling it
    again with the same state does nothing.
    """
    if state not in RUN_STATUS:
        raise ValueError(f"state: expected a terminal state, got {state.value}")
    status = RUN_STATUS[state]
    uri = parent.tracking_uri
    run_id = parent.run_id

    def finish(client: MlflowClient) -> None:
        from mlflow.entities import Param

        run = client.get_run(run_id)
        if run.data.tags.get(STATE_TAG) == state.value and run.info.status == status:
            return
        params, metrics, tags = _outputs_to_mlflow(outputs or {})
        # Separate batches: a param the work already logged with another value must not cost the
        # metrics, the state tag or the status.
        if metrics:
            attempt_call(
                uri,
                "log the outputs as metrics",
                lambda: client.log_batch(run_id, metrics=metric_batch(metrics)),
            )
        if params:
            batch = [Param(name, clean_value(value, uri)) for name, value in params.items()]
            attempt_call(uri, "log the outputs as params", lambda: client.log_batch(run_id, params=batch))
        tags[STATE_TAG] = state.value
        if message:
            tags[MESSAGE_TAG] = message
        log_tags(client, run_id, tags, uri)
        client.set_terminated(run_id, status)

    best_effort(uri, f"end run {run_id} as {status}", finish)
