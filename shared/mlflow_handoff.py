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

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from shared.errors import BackendError, TransientError
from shared.keys import key_digest
from shared.retry import is_transient
from shared.status import State

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_EXPERIMENT = "kubeflow-tasks"
KEY_TAG = "kubeflow_tasks.key"
KEY_HASH_TAG = "kubeflow_tasks.key_sha256"
ATTEMPT_TAG = "kubeflow_tasks.attempt"
PREVIOUS_RUN_TAG = "kubeflow_tasks.previous_run_id"
STATE_TAG = "kubeflow_tasks.state"
MESSAGE_TAG = "kubeflow_tasks.message"
TRIAL_TAG = "kubeflow_tasks.trial"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

# MLflow's run statuses for our terminal states (KFP's MLflow plugin maps CANCELED to KILLED too).
RUN_STATUS = {State.SUCCEEDED: "FINISHED", State.FAILED: "FAILED", State.CANCELLED: "KILLED"}
_TRIAL_STATUSES = frozenset(RUN_STATUS.values())

# The server rejects tag values over 8000 and param values over 6000 characters.
_MAX_VALUE = 5000

# MLflow's own defaults (120 s timeout, 7 retries with a factor-2 backoff) hold a task for minutes
# when the server is down, and `set_terminated` prints the run's URL (with any credentials in the
# tracking URI) to stdout, which is where the CLI writes its results. These apply only while our calls
# run and only where the user set nothing.
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class _ClientDefaults:
    """Sets `_CLIENT_DEFAULTS` in os.environ while any of our MLflow calls runs, then removes them.

    MLflow's client reads these settings only from the environment, each time it needs them. The
    count lets calls from several threads overlap: the first sets, the last removes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._added: list[str] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                for name, value in _CLIENT_DEFAULTS.items():
                    if name not in os.environ:
                        os.environ[name] = value
                        self._added.append(name)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for name in self._added:
                        os.environ.pop(name, None)
                    self._added.clear()


_client_defaults = _ClientDefaults()


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


def _display_uri(tracking_uri: str) -> str:
    """The URI without user name and password, fit for messages."""
    parts = urlsplit(tracking_uri)
    if "@" not in parts.netloc:
        return tracking_uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _redact(text: str, tracking_uri: str) -> str:
    """`text` without the tracking token, password or the URI's credentials."""
    from shared.secrets import redact, split_uri

    split_uri(tracking_uri)  # remembers its password, if any
    return redact(text)


def _clean(value: Any, tracking_uri: str) -> str:
    return _redact(str(value), tracking_uri)[:_MAX_VALUE]


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    from shared.secrets import full_uri

    return MlflowClient(tracking_uri=full_uri(tracking_uri))


def _attempt(tracking_uri: str, what: str, call: Callable[[], T]) -> T | None:
    """`call()`; on any failure log a warning and return None."""
    try:
        return call()
    except Exception as exc:  # an MLflow outage must not fail the task
        log.warning(
            "MLflow at %s: could not %s: %s",
            _display_uri(tracking_uri),
            what,
            _redact(" ".join(str(exc).split()), tracking_uri),
        )
        return None


def _best_effort(tracking_uri: str, what: str, action: Callable[[MlflowClient], T]) -> T | None:
    """`action(client)` with our client defaults; on any failure log a warning and return None."""
    with _client_defaults():
        return _attempt(tracking_uri, what, lambda: action(_client(tracking_uri)))


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
        with _client_defaults():
            client = _client(tracking_uri)
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
                tags={name: _clean(value, tracking_uri) for name, value in run_tags.items()},
            )
            return ParentRun(clean_uri, run.info.run_id, experiment_id)
    except Exception as exc:
        error = TransientError if is_transient(exc) else BackendError
        detail = _redact(" ".join(str(exc).split()), tracking_uri)
        # `from None`: the original exception's text may carry the URI's credentials.
        raise error(
            f"MLflow at {_display_uri(tracking_uri)}: cannot open the run for key {key!r}: {detail}"
        ) from None


def _log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any], tracking_uri: str) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(name, _clean(value, tracking_uri)) for name, value in tags.items()])


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
    _best_effort(
        parent.tracking_uri,
        "tag the run with the remote work",
        lambda client: _log_tags(client, parent.run_id, tags, parent.tracking_uri),
    )


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
        params = [Param(name, _clean(value, parent.tracking_uri)) for name, value in parameters.items()]
        if params:
            client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    return _best_effort(parent.tracking_uri, f"create the run of trial {trial_name!r}", create)


def trial_env(mlflow_ctx: Mapping[str, str], trial_run_id: str | None) -> dict[str, str]:
    """The hand-off variables for a trial's processes: they resume the trial's own run.

    Without a trial run (MLflow failed when it was to be created) the trial gets no hand-off.
    """
    if not trial_run_id:
        return {}
    parent = ParentRun.from_context(mlflow_ctx)
    return ParentRun(parent.tracking_uri, trial_run_id, parent.experiment_id).env()


def _metric_batch(metrics: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(name, float(value), now, 0) for name, value in metrics.items()]


def finish_trial_run(
    mlflow_ctx: Mapping[str, str], run_id: str | None, *, metrics: Mapping[str, float], state: str
) -> None:
    """Log the trial's final metrics and end its run with `state` (FINISHED, FAILED or KILLED)."""
    if state not in _TRIAL_STATUSES:
        raise ValueError(f"state: expected one of {sorted(_TRIAL_STATUSES)}, got {state!r}")
    if not run_id:
        return
    tracking_uri = ParentRun.from_context(mlflow_ctx).tracking_uri

    def finish(client: MlflowClient) -> None:
        if metrics:
            client.log_batch(run_id, metrics=_metric_batch(metrics))
        client.set_terminated(run_id, state)

    _best_effort(tracking_uri, f"end trial run {run_id}", finish)


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
            _attempt(
                uri,
                "log the outputs as metrics",
                lambda: client.log_batch(run_id, metrics=_metric_batch(metrics)),
            )
        if params:
            batch = [Param(name, _clean(value, uri)) for name, value in params.items()]
            _attempt(uri, "log the outputs as params", lambda: client.log_batch(run_id, params=batch))
        tags[STATE_TAG] = state.value
        if message:
            tags[MESSAGE_TAG] = message
        _log_tags(client, run_id, tags, uri)
        client.set_terminated(run_id, status)

    _best_effort(uri, f"end run {run_id} as {status}", finish)
