"""The evaluation as work: a TrainingJob or PipelineRun the user names, run like every other task.

Each model is judged by one piece of work, submitted through `shared.operations` with the parameter
`model_uri` (`${params.model_uri}` in a manifest, a pipeline input of that name) and awaited. Its key
is the promotion's key plus the role of the model (`challenger`, `champion-v<n>`, `baseline`), so a
retried promotion adopts the evaluation its killed try started (or takes its success) instead of
running a second one. The work gets an MLflow run like any task (its upstream: the training run); the
metric is what it logged there. A deadline (`evaluate_timeout`) or a SIGTERM cancels the work.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import BackendError, SpecError
from shared.promotion.spec import PromotionSpec
from shared.status import Kind, State

MODEL_URI_PARAM = "model_uri"
_STAND_IN = "models:/stand-in/1"  # what checking the spec fills in for the model to judge


def check_evaluation_spec(
    path: str, params: Mapping[str, Any] | None, working_dir: str | None
) -> tuple[str, dict[str, str]]:
    """The spec file (absolute) and its parameters as text, checked now: it parses, it is a training job
    or a pipeline run, and it takes `model_uri` (else every model would be judged the same)."""
    import os

    from shared.params import texts
    from shared.specs import load_spec

    if not isinstance(path, str) or not path.strip():
        raise SpecError("evaluate_spec", f"expected the path of a TrainingJob or PipelineRun file, got {path!r}")
    values = texts(params)
    if MODEL_URI_PARAM in values:
        raise SpecError("evaluate_params", f"{MODEL_URI_PARAM!r} is set for each model by the promotion; leave it out")
    full = os.path.abspath(os.path.join(working_dir or os.getcwd(), os.path.expanduser(path)))
    spec = _load(load_spec, full, values, _STAND_IN)
    if spec.kind is Kind.EXPERIMENT:  # (a compiled pipeline without a `model_uri` input failed to load)
        raise SpecError("evaluate_spec", "an evaluation is a training job or a pipeline run, not an experiment")
    return full, values


def _load(load_spec: Any, path: str, values: Mapping[str, str], model_uri: str) -> Any:
    try:
        return load_spec(path, params={**values, MODEL_URI_PARAM: model_uri})
    except SpecError as exc:
        if exc.path == "params" and MODEL_URI_PARAM in exc.detail:
            raise SpecError(
                "evaluate_spec", f"must take the model to judge: put ${{params.{MODEL_URI_PARAM}}} in the manifest"
            ) from None
        raise SpecError(f"evaluate_spec: {exc.path}" if exc.path else "evaluate_spec", exc.detail) from None


def evaluate_as_work(
    spec: PromotionSpec,
    model_uri: str,
    role: str,
    key: str,
    tracking_uri: str,
    backend: Any,
    progress: Callable[[str], None] = lambda _m: None,
) -> float:
    """Run (or adopt) the evaluation of one model and read its metric from the work's MLflow run."""
    from shared.operations import run_async
    from shared.specs import load_spec

    assert spec.evaluate_spec is not None
    work = _load(load_spec, spec.evaluate_spec, spec.evaluate_params, model_uri)

    def submitted(submission: Any) -> None:
        handle = submission.handle
        verb = "adopted" if submission.adopted else "submitted"
        progress(f"{role}: {verb} the evaluation {handle.resource or handle.kind.value} {handle.id} (key {handle.key})")

    outcome = _run(run_async, backend, work, f"{key}/evaluate/{role}", tracking_uri, spec, submitted)
    status, handle = outcome.status, outcome.submission.handle
    what = f"{handle.resource or handle.kind.value} {handle.id}"
    if status.state is not State.SUCCEEDED:
        raise BackendError(f"evaluate: {what} of {model_uri} ended {status.state.value}: {status.message or status.raw_state}")
    run_id = outcome.submission.mlflow_run_id
    value = _logged_metric(tracking_uri, run_id, spec.metric) if run_id else None
    if value is None:
        raise BackendError(f"evaluate: {what} of {model_uri} logged no {spec.metric} to its MLflow run {run_id}")
    return value


def _run(
    run_async: Any, backend: Any, work: Any, key: str, tracking_uri: str, spec: PromotionSpec, submitted: Any
) -> Any:
    """`run_async` to the end; a SIGTERM (a scheduler stopping the promotion) cancels the work first."""

    async def main() -> Any:
        cancel = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, cancel.set)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread: the scheduler's own kill applies
            pass
        outcome = await run_async(
            backend,
            work,
            key,
            mlflow_tracking_uri=tracking_uri,
            upstream_mlflow_run_id=spec.source_run_id,
            timeout=spec.evaluate_timeout,
            cancel_requested=cancel,
            on_submitted=submitted,
        )
        if cancel.is_set():
            raise SystemExit(1)  # what the promotion does on SIGTERM, now that the work is cancelled
        return outcome

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return asyncio.run(main())
    finally:
        if previous is not None:
            try:
                signal.signal(signal.SIGTERM, previous)  # asyncio resets it to the default on the way out
            except ValueError:
                pass


def _logged_metric(tracking_uri: str, run_id: str, metric: str) -> float | None:
    from mlflow.tracking import MlflowClient

    from shared.mlflow_client import client_defaults

    with client_defaults():
        value = MlflowClient(tracking_uri).get_run(run_id).data.metrics.get(metric)
    return None if value is None else float(value)
