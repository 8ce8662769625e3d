"""Katib Experiment manifests (kubeflow.org/v1beta1).

Katib's CRD has no structural schema, so its webhooks are the whole validation: this module reads
the manifest into dataclasses, with the validator's rules (`katib_validator`, v0.19) and the
suggestion services' setting checks, and applies the defaulting webhook's defaults to the stored
manifest. The verdict is about the manifest, not where it runs: NAS, PBT and ConfigMap trial
templates are accepted here; the local backend says at submit what it cannot run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c
from shared.specs import katib_validator as v
from shared.specs.model import (
    AlgorithmSpec,
    ExperimentSpec,
    ParameterSpec,
)

API_VERSION = "kubeflow.org/v1beta1"
_SPEC_FIELDS = (
    "algorithm",
    "earlyStopping",
    "maxFailedTrialCount",
    "maxTrialCount",
    "metricsCollectorSpec",
    "nasConfig",
    "objective",
    "parallelTrialCount",
    "parameters",
    "resumePolicy",
    "trialTemplate",
)

# ---------------------------------------------------------------- algorithm settings (reference §2.5)

Check = Callable[[str, str], None]


def _integer(minimum: int) -> Check:
    def check(value: str, path: str) -> None:
        if c.number(value, path, integral=True) < minimum:
            raise SpecError(path, f"must be an integer >= {minimum}, got {value!r}")

    return check


def _real(low: float, high: float | None = None) -> Check:
    """A number strictly between low and high."""

    def check(value: str, path: str) -> None:
        x = c.number(value, path)
        if x <= low or (high is not None and x >= high):
            bounds = f"in ({low:g}, {high:g})" if high is not None else f"> {low:g}"
            raise SpecError(path, f"must be a number {bounds}, got {value!r}")

    return check


def _choice(*allowed: str) -> Check:
    def check(value: str, path: str) -> None:
        if value not in allowed:
            raise SpecError(path, f"must be one of {', '.join(allowed)}, got {value!r}")

    return check


def _text(value: str, path: str) -> None:
    if not value:
        raise SpecError(path, "must not be empty")


SETTINGS: dict[str, dict[str, Check] | None] = {  # None: settings the service reads freely
    "random": {"random_state": _integer(0)},
    "tpe": {
        "gamma": _real(0, 1),
        "prior_weight": _real(0),
        "n_EI_candidates": _integer(1),
        "random_state": _integer(0),
    },
    "grid": {"seed": _integer(0)},
    "multivariate-tpe": {
        "n_startup_trials": _integer(0),
        "n_ei_candidates": _integer(1),
        "seed": _integer(0),
    },
    "bayesianoptimization": {
        "base_estimator": _choice("GP", "RF", "ET", "GBRT"),
        "n_initial_points": _integer(0),
        "acq_func": _choice("gp_hedge", "LCB", "EI", "PI"),
        "acq_optimizer": _choice("auto", "sampling", "lbfgs"),
        "random_state": _integer(0),
    },
    "cmaes": {
        "random_state": _integer(0),
        "sigma": _real(0),
        "restart_strategy": _choice("none", "ipop", "bipop"),
    },
    "sobol": {"random_state": _integer(0)},
    "hyperband": {"r_l": _real(0), "resource_name": _text, "eta": _real(1)},
    "pbt": {
        "suggestion_trial_dir": _text,
        "n_population": _integer(5),
        "truncation_threshold": _real(0, 1),
        "resample_probability": _real(0, 1),
    },
    "enas": None,
    "darts": None,
}
EARLY_STOPPING_SETTINGS: dict[str, Check] = {"min_trials_required": _integer(1), "start_step": _integer(1)}


def parse_experiment(
    manifest: Mapping[str, Any], base_dir: str | None = None, *, params: Mapping[str, str] | None = None
) -> ExperimentSpec:
    """A Katib Experiment manifest as a user would `kubectl apply` it -> ExperimentSpec."""
    doc = c.substitute_params(manifest, params)  # a fresh tree: defaults are written into it below
    c.header(doc, API_VERSION, ("Experiment",))
    name, namespace = c.metadata(doc)
    c.check_name(name, "metadata.name", max_len=40, rule="Katib experiment names")
    spec = c.mapping(doc, "spec", "", required=True)
    assert spec is not None
    c.reject_unknown(spec, _SPEC_FIELDS, "spec", "an Experiment spec")

    parallel, max_trials, max_failed = v.validate_trial_counts(spec)
    objective = v.validate_objective(spec)
    parameters = v.validate_parameters(spec)
    algorithm = _algorithm(spec, parameters)
    resume = c.string(
        spec, "resumePolicy", "spec", default="Never", choices=("Never", "LongRunning", "FromVolume")
    )
    collectors = v.default_metrics_collector(spec)
    collector_kind, metrics_format = v.validate_metrics_collector(collectors)
    template = v.validate_trial_template(spec, {p.name for p in parameters})

    # The defaulting webhook's work, so the stored manifest is what the cluster would hold.
    defaulted = doc["spec"]
    defaulted["parallelTrialCount"] = parallel
    defaulted["resumePolicy"] = resume
    defaulted["objective"]["metricStrategies"] = [
        {"name": m, "value": s} for m, s in objective.metric_strategies
    ]
    defaulted["metricsCollectorSpec"] = collectors
    trial = defaulted["trialTemplate"]
    trial["successCondition"] = template.success_condition
    trial["failureCondition"] = template.failure_condition
    labels = v.TRIAL_DEFAULTS.get(template.trial_spec.get("kind"), (None, None))[1]
    if labels and "primaryPodLabels" not in trial:
        trial["primaryPodLabels"] = dict(labels)

    return ExperimentSpec(
        name=name,
        namespace=namespace,
        objective=objective,
        algorithm=algorithm,
        parameters=parameters,
        trial_template=template,
        manifest=doc,
        base_dir=c.resolve_base_dir(base_dir),
        parallel_trial_count=parallel,
        max_trial_count=max_trials,
        max_failed_trial_count=max_failed,
        early_stopping=_early_stopping(spec),
        metrics_format=metrics_format,
        metrics_collector=collector_kind,
        resume_policy=resume,
    )


def _settings(
    raw: Mapping[str, Any], path: str, known: Mapping[str, Check] | None, owner: str
) -> tuple[tuple[str, str], ...]:
    result = []
    for spath, name, entry in v.named_entries(raw, "algorithmSettings", path):
        if known is None:
            result.append((name, c.string(entry, "value", spath) or ""))
            continue
        if name not in known:
            raise SpecError(
                c.join(spath, "name"), f"unknown setting {name!r} for {owner} (known: {c.names(known)})"
            )
        value = c.string(entry, "value", spath, required=True)
        known[name](value, c.join(spath, "value"))
        result.append((name, value))
    return tuple(result)


def _algorithm(spec: Mapping[str, Any], parameters: tuple[ParameterSpec, ...]) -> AlgorithmSpec:
    path = "spec.algorithm"
    raw = c.mapping(spec, "algorithm", "spec", required=True)
    assert raw is not None
    c.reject_unknown(raw, ("algorithmName", "algorithmSettings"), path, "algorithm")
    name = c.string(raw, "algorithmName", path, required=True)
    where = c.join(path, "algorithmName")
    if name not in SETTINGS:
        raise SpecError(where, f"unknown algorithm {name!r}; expected one of {', '.join(SETTINGS)}")
    algorithm = AlgorithmSpec(name=name, settings=_settings(raw, path, SETTINGS[name], f"algorithm {name!r}"))

    if name == "hyperband":
        resource = algorithm.setting("resource_name")
        if resource is None:
            raise SpecError(
                c.join(path, "algorithmSettings"), "hyperband requires the setting 'resource_name'"
            )
        if resource not in {p.name for p in parameters}:
            raise SpecError(
                c.join(path, "algorithmSettings"),
                f"resource_name {resource!r} is not a search-space parameter",
            )
    if name == "grid":
        for i, p in enumerate(parameters):
            if p.parameter_type == "double" and p.step is None:
                raise SpecError(
                    f"spec.parameters[{i}].feasibleSpace.step",
                    f"the grid algorithm needs a step for double parameter {p.name!r}",
                )
    if name == "cmaes" and sum(p.parameter_type in ("double", "int") for p in parameters) < 2:
        raise SpecError("spec.parameters", "cmaes needs at least two int or double parameters")
    return algorithm


def _early_stopping(spec: Mapping[str, Any]) -> AlgorithmSpec | None:
    path = "spec.earlyStopping"
    raw = c.mapping(spec, "earlyStopping", "spec")
    if raw is None:
        return None
    c.reject_unknown(raw, ("algorithmName", "algorithmSettings"), path, "earlyStopping")
    name = c.string(raw, "algorithmName", path, required=True, choices=("medianstop",))
    return AlgorithmSpec(name=name, settings=_settings(raw, path, EARLY_STOPPING_SETTINGS, "medianstop"))


