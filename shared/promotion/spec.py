"""What a promotion is asked to do: which run's model, how to judge it, and by how much it must win.

Validated here, before MLflow or the evaluator is contacted, so bad input is one line naming the field.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from shared.errors import SpecError

MODEL_URI_PLACEHOLDER = "{model_uri}"
NAIVE = "naive"
# MLflow's registered model names are free text, but they end up in URIs (models:/<name>@champion),
# filter strings and DolphinScheduler parameters: keep them to what needs no quoting anywhere.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,255}")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,255}")
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")


@dataclass(frozen=True)
class PromotionSpec:
    """Register the model a training run logged and promote it when it wins.

    `evaluate` is the argv of the evaluation the user names; `{model_uri}` in it is replaced by the
    URI of the model to judge (the challenger, the champion, then `baseline`), and the same URI is in
    `$KUBEFLOW_TASKS_MODEL_URI`. It prints `<metric>=<value>` (Katib's StdOut format); the last
    such line counts. The challenger is promoted when it beats the champion by more than `margin`
    (in metric units) and beats the baseline.

    Or `evaluate_spec`: a TrainingJob manifest or a PipelineRun document, run as work like the rest
    (`shared.promotion.work`) once per model with the parameter `model_uri` (and `evaluate_params`);
    the metric is what it logged to the MLflow run handed to it.
    """

    model_name: str
    source_run_id: str
    evaluate: tuple[str, ...] = ()
    metric: str = "rmse"
    greater_is_better: bool = False
    margin: float = 0.0
    baseline: str = NAIVE
    artifact_path: str = "model"
    alias: str = "champion"
    evaluate_timeout: float | None = None
    working_dir: str | None = None
    evaluate_spec: str | None = None
    evaluate_params: Mapping[str, str] = field(default_factory=dict)

    def model_uri(self) -> str:
        """Where the training run logged the model."""
        return f"runs:/{self.source_run_id}/{self.artifact_path}"


def parse_evaluate(value: str | Sequence[str], field: str = "evaluate") -> tuple[str, ...]:
    """The evaluation command as argv: a list as is, a string split like a shell would (never run by one)."""
    if isinstance(value, str):
        try:
            argv = tuple(shlex.split(value))
        except ValueError as exc:
            raise SpecError(field, f"cannot split the command: {exc}") from None
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        argv = tuple(value)
    else:
        raise SpecError(field, "expected a command (a string or a list of strings)")
    if not argv:
        raise SpecError(field, "expected a command, got nothing")
    if not any(MODEL_URI_PLACEHOLDER in word for word in argv):
        raise SpecError(field, f"the command must take the model to judge: put {MODEL_URI_PLACEHOLDER} in it")
    return argv


def promotion_spec(
    *,
    model_name: str,
    source_run_id: str,
    evaluate: str | Sequence[str] | None = None,
    metric: str = "rmse",
    greater_is_better: bool = False,
    margin: float | str = 0.0,
    baseline: str = NAIVE,
    artifact_path: str = "model",
    alias: str = "champion",
    evaluate_timeout: float | None = None,
    working_dir: str | None = None,
    evaluate_spec: str | None = None,
    evaluate_params: Mapping[str, Any] | None = None,
) -> PromotionSpec:
    """A checked PromotionSpec; every failure is a SpecError naming the field."""
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name):
        raise SpecError(
            "model_name", f"expected letters, digits, '_', '.', '-' (starting with a letter or digit), got {model_name!r}"
        )
    if not isinstance(source_run_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", source_run_id or ""):
        raise SpecError("run_id", f"expected the MLflow run id of the training job, got {source_run_id!r}")
    if not isinstance(metric, str) or not _METRIC.fullmatch(metric):
        raise SpecError("metric", f"expected a metric name, got {metric!r}")
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or re.fullmatch(r"[vV]\d+", alias):
        raise SpecError("alias", f"expected an MLflow alias (letters, digits, '_', '-'; not v<number>), got {alias!r}")
    try:
        margin_value = float(margin)
    except (TypeError, ValueError):
        raise SpecError("margin", f"expected a number >= 0, got {margin!r}") from None
    if not math.isfinite(margin_value) or margin_value < 0:
        raise SpecError("margin", f"expected a number >= 0, got {margin!r}")
    if not isinstance(artifact_path, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", artifact_path):
        raise SpecError("artifact_path", f"expected the artifact path of the logged model, got {artifact_path!r}")
    if not isinstance(baseline, str) or not baseline:
        raise SpecError("baseline", f"expected {NAIVE!r} or a model URI, got {baseline!r}")
    if evaluate_timeout is not None and not (evaluate_timeout > 0):
        raise SpecError("evaluate_timeout", f"expected a positive duration, got {evaluate_timeout!r}")
    if (evaluate is None) == (evaluate_spec is None):
        raise SpecError("evaluate", "give the evaluation: a command (evaluate) or a spec run as work (evaluate_spec), one of them")
    params = {}
    if evaluate_spec is not None:
        from shared.promotion.work import check_evaluation_spec

        evaluate_spec, params = check_evaluation_spec(evaluate_spec, evaluate_params, working_dir)
    elif evaluate_params:
        raise SpecError("evaluate_params", "applies with evaluate_spec")
    return PromotionSpec(
        model_name=model_name,
        source_run_id=source_run_id,
        evaluate=parse_evaluate(evaluate) if evaluate is not None else (),
        evaluate_spec=evaluate_spec,
        evaluate_params=params,
        metric=metric,
        greater_is_better=bool(greater_is_better),
        margin=margin_value,
        baseline=baseline,
        artifact_path=artifact_path,
        alias=alias,
        evaluate_timeout=evaluate_timeout,
        working_dir=working_dir,
    )


def from_mapping(values: Mapping[str, Any]) -> PromotionSpec:
    """A PromotionSpec from keyword values (an operator's arguments, a task's fields); unknown names are errors."""
    allowed = {f.name for f in fields(PromotionSpec)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SpecError(unknown[0], f"unknown field; a promotion has: {', '.join(sorted(allowed))}")
    return promotion_spec(**values)
