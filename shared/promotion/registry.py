"""Register a training run's model and decide, once per key, whether it becomes the champion.

Idempotent by key, like every other kind of work: the version is created with the key in its tags
(in the same request, so no retry can miss it), and a retried promotion finds it instead of
registering a second one. The decision is written before the alias moves, `kubeflow_tasks.decision`
last of the tags: a version with that tag is decided, and a retry only finishes what the decision
said (moving the alias if it still sits where it sat when the decision was made). A try killed
before the decision tag leaves an undecided version, which the retry evaluates again.

Only `MlflowClient` is used (no fluent API, nothing global changes); mlflow is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import BackendError, SpecError, TransientError
from shared.keys import key_digest
from shared.mlflow_client import KEY_HASH_TAG, KEY_TAG, client_defaults, display_uri, redact_for
from shared.promotion.decision import PROMOTED, decide
from shared.promotion.evaluation import evaluate
from shared.promotion.spec import PromotionSpec
from shared.retry import is_transient

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

TAG = "kubeflow_tasks."
DECISION_TAG = TAG + "decision"
METRIC_TAG = TAG + "metric"
VALUE_TAG = TAG + "value"
CHAMPION_VALUE_TAG = TAG + "champion_value"
BASELINE_VALUE_TAG = TAG + "baseline_value"
REASON_TAG = TAG + "reason"
PREVIOUS_CHAMPION_TAG = TAG + "previous_champion_version"
SOURCE_RUN_TAG = TAG + "source_run_id"
BEST_TRIAL_TAG = TAG + "best_trial"
HPO_RUN_TAG = TAG + "hpo_run_id"
PIPELINE_RUN_TAG = TAG + "pipeline_run_id"
PIPELINE_MLFLOW_RUN_TAG = TAG + "pipeline_mlflow_run_id"
UPSTREAM_TAG = TAG + "upstream_run_id"
NONE = "none"  # the champion value of the first version, which had no champion to beat
_LINEAGE_DEPTH = 20


@dataclass(frozen=True)
class Decision:
    """What the promotion did; `champion_version` holds the alias afterwards (None: no champion)."""

    model_name: str
    model_version: str
    decision: str
    metric: str
    value: float
    champion_value: float | None
    baseline_value: float
    reason: str
    champion_version: str | None
    previous_champion_version: str | None
    source_run_id: str
    registered_before: bool  # a previous try of this key registered the version
    decided_before: bool  # ... and decided it

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_uri": self.model_uri}


def promote(
    spec: PromotionSpec,
    key: str,
    tracking_uri: str,
    *,
    progress: Callable[[str], None] = lambda _m: None,
    backend: Any = None,
) -> Decision:
    """Register (or find, by key) the version, evaluate challenger, champion and baseline, decide once.

    `backend` runs an evaluation given as work (`spec.evaluate_spec`; default: the local backend)."""
    try:
        with client_defaults():
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            judge = _Judge(spec, key, tracking_uri, progress, backend)
            return _promote(client, spec, key, judge, progress)
    except (SpecError, BackendError):
        raise
    except Exception as exc:
        error = TransientError if is_transient(exc) else BackendError
        detail = redact_for(" ".join(str(exc).split()), tracking_uri)
        raise error(f"MLflow at {display_uri(tracking_uri)}: promotion of {spec.model_name!r} failed: {detail}") from None


def _promote(
    client: MlflowClient, spec: PromotionSpec, key: str, judge: _Judge, progress: Callable[[str], None]
) -> Decision:
    version = find_version(client, spec.model_name, key)
    registered_before = version is not None
    if version is None:
        version = _register(client, spec, key)
        progress(f"registered {spec.model_name} version {version.version} from run {spec.source_run_id}")
    else:
        progress(f"found {spec.model_name} version {version.version}, registered under this key before")
    tags = dict(version.tags or {})
    champion = champion_version(client, spec.model_name, spec.alias)

    if tags.get(DECISION_TAG):
        decision = _recorded(spec, version, tags, champion, registered_before)
        alias_unmoved = champion == decision.previous_champion_version  # as it was when we decided
        if decision.decision == PROMOTED and champion != version.version and alias_unmoved:
            client.set_registered_model_alias(spec.model_name, spec.alias, version.version)
            progress(f"alias {spec.alias!r} moved to version {version.version} (finishing the earlier decision)")
            decision = _replace_champion(decision, version.version)
        return decision

    if champion == version.version:  # an alias set by hand onto an undecided version: judge against no one
        champion = None
    challenger_uri = f"models:/{spec.model_name}/{version.version}"
    value = judge("challenger", challenger_uri)
    champion_value = None
    if champion is not None:
        champion_value = judge(f"champion-v{champion}", f"models:/{spec.model_name}/{champion}")
    baseline_value = judge("baseline", spec.baseline)
    verdict = decide(
        spec.metric,
        value,
        baseline_value,
        champion_value,
        greater_is_better=spec.greater_is_better,
        margin=spec.margin,
        champion_version=champion,
    )
    record = {
        METRIC_TAG: spec.metric,
        VALUE_TAG: repr(value),
        CHAMPION_VALUE_TAG: NONE if champion_value is None else repr(champion_value),
        BASELINE_VALUE_TAG: repr(baseline_value),
        REASON_TAG: verdict.reason,
        PREVIOUS_CHAMPION_TAG: champion or NONE,
    }
    for name, text in record.items():
        client.set_model_version_tag(spec.model_name, version.version, name, text)
    client.set_model_version_tag(spec.model_name, version.version, DECISION_TAG, verdict.decision)  # last: decided
    if verdict.decision == PROMOTED:
        client.set_registered_model_alias(spec.model_name, spec.alias, version.version)
    progress(f"version {version.version} {verdict.decision}: {verdict.reason}")
    return Decision(
        model_name=spec.model_name,
        model_version=version.version,
        decision=verdict.decision,
        metric=spec.metric,
        value=value,
        champion_value=champion_value,
        baseline_value=baseline_value,
        reason=verdict.reason,
        champion_version=version.version if verdict.decision == PROMOTED else champion,
        previous_champion_version=champion,
        source_run_id=spec.source_run_id,
        registered_before=registered_before,
        decided_before=False,
    )


@dataclass
class _Judge:
    """One model's metric: the user's command, or the evaluation run as work under `<key>/evaluate/<role>`."""

    spec: PromotionSpec
    key: str
    tracking_uri: str
    progress: Callable[[str], None]
    backend: Any = None

    def __call__(self, role: str, uri: str) -> float:
        if self.spec.evaluate_spec is None:
            value = evaluate(self.spec, uri, self.tracking_uri)
        else:
            from shared.promotion.work import evaluate_as_work

            if self.backend is None:
                from shared.backends import get_backend

                self.backend = get_backend("local")
            value = evaluate_as_work(self.spec, uri, role, self.key, self.tracking_uri, self.backend, self.progress)
        self.progress(f"{role} ({uri}): {self.spec.metric}={value:.6g}")
        return value


def _recorded(
    spec: PromotionSpec, version: ModelVersion, tags: Mapping[str, str], champion: str | None, registered_before: bool
) -> Decision:
    def number(name: str) -> float | None:
        text = tags.get(name, NONE)
        return None if text in ("", NONE) else float(text)

    previous = tags.get(PREVIOUS_CHAMPION_TAG, NONE)
    return Decision(
        model_name=spec.model_name,
        model_version=version.version,
        decision=tags[DECISION_TAG],
        metric=tags.get(METRIC_TAG, spec.metric),
        value=number(VALUE_TAG) or 0.0,
        champion_value=number(CHAMPION_VALUE_TAG),
        baseline_value=number(BASELINE_VALUE_TAG) or 0.0,
        reason=tags.get(REASON_TAG, ""),
        champion_version=champion,
        previous_champion_version=None if previous == NONE else previous,
        source_run_id=tags.get(SOURCE_RUN_TAG, spec.source_run_id),
        registered_before=registered_before,
        decided_before=True,
    )


def _replace_champion(decision: Decision, champion: str) -> Decision:
    return Decision(**{**asdict(decision), "champion_version": champion})


# ---------------------------------------------------------------------------- registry reads and writes


def find_version(client: MlflowClient, model_name: str, key: str) -> ModelVersion | None:
    """The version registered under `key`, if any (every page of the model's versions is read)."""
    digest = key_digest(key)
    token = None
    while True:
        page = client.search_model_versions(f"name = '{model_name}'", max_results=1000, page_token=token)
        for version in page:
            tags = version.tags or {}
            if tags.get(KEY_HASH_TAG) == digest and tags.get(KEY_TAG) == key:
                return version
        token = page.token
        if not token:
            return None


def champion_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version the alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _register(client: MlflowClient, spec: PromotionSpec, key: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    run = _source_run(client, spec.source_run_id)
    source, model_id = _logged_model(client, run, spec)
    try:
        client.create_registered_model(spec.model_name, description="Registered by kubeflow-tasks promote")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {KEY_TAG: key, KEY_HASH_TAG: key_digest(key), **lineage(client, run)}
    kwargs = {"model_id": model_id} if model_id else {}
    return client.create_model_version(
        spec.model_name, source, run_id=spec.source_run_id, tags=tags, await_creation_for=60, **kwargs
    )


def _source_run(client: MlflowClient, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise SpecError("run_id", f"no MLflow run {run_id!r} (expected the training job's run)") from None
        raise


def _logged_model(client: MlflowClient, run: Any, spec: PromotionSpec) -> tuple[str, str | None]:
    """(source, model id) of the model the run logged under `artifact_path`, as `mlflow.register_model` finds it.

    A model saved as plain run artifacts (an MLmodel file under the path) is registered from the
    run's artifact location; MLflow 3's `log_model` makes a logged model of its own (`models:/<id>`),
    the newest one of that name from this run counts (READY ones only: a failed log leaves one behind).
    """
    run_id = run.info.run_id
    found: list[Any] = []
    token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{spec.artifact_path}'", page_token=token
        )
        found += [model for model in page if model.source_run_id == run_id and str(model.status).endswith("READY")]
        token = page.token
        if not token:
            break
    if found:
        newest = max(found, key=lambda m: m.creation_timestamp or 0)
        # The artifact location, not `models:/<id>`: a local (SQLite) registry resolves that URI with
        # a client of the process-wide default tracking URI, which is not ours to set.
        return newest.artifact_location, newest.model_id
    names = {item.path for item in client.list_artifacts(run_id, spec.artifact_path)}
    if f"{spec.artifact_path}/MLmodel" in names:
        return f"{run.info.artifact_uri.rstrip('/')}/{spec.artifact_path}", None
    raise SpecError("artifact_path", f"run {run_id} logged no model named {spec.artifact_path!r}")


def lineage(client: MlflowClient, run: Any) -> dict[str, str]:
    """Where the model came from, following `kubeflow_tasks.upstream_run_id` back from the training run:
    the source run, the experiment's run and best trial, the upstream pipeline's run."""
    tags = {SOURCE_RUN_TAG: run.info.run_id}
    seen = {run.info.run_id}
    for _ in range(_LINEAGE_DEPTH):
        run_tags = run.data.tags
        kind = run_tags.get(TAG + "kind")
        if kind == "experiment" and HPO_RUN_TAG not in tags:
            tags[HPO_RUN_TAG] = run.info.run_id
            best = run_tags.get(TAG + "output.best_trial")
            if best:
                tags[BEST_TRIAL_TAG] = best
        if kind == "pipeline" and PIPELINE_MLFLOW_RUN_TAG not in tags:
            tags[PIPELINE_MLFLOW_RUN_TAG] = run.info.run_id
            if run_tags.get(TAG + "remote_id"):
                tags[PIPELINE_RUN_TAG] = run_tags[TAG + "remote_id"]
        upstream = run_tags.get(UPSTREAM_TAG)
        if not upstream or upstream in seen:
            break
        seen.add(upstream)
        run = client.get_run(upstream)
    return tags
