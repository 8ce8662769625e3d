"""Katib Experiment manifests (kubeflow.org/v1beta1).

Katib's CRD has no structural schema, so its webhooks are the whole validation; this module
mirrors them (v0.19 experiment validator, suggestion services' setting checks) and applies the
defaulting webhook's defaults to the stored manifest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c
from shared.specs.model import (
    AlgorithmSpec,
    ExperimentSpec,
    ObjectiveSpec,
    ParameterSpec,
    TrialParameterSpec,
    TrialTemplateSpec,
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
UNSUPPORTED_ALGORITHMS = ("enas", "darts", "pbt")
COLLECTOR_KINDS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "Push")
DISTRIBUTIONS = ("uniform", "logUniform", "normal", "logNormal")
_TRIAL_PARAM_RE = re.compile(r"\$\{trialParameters\.([^}]*)\}")
_META_REF_RE = re.compile(r"\$\{trialSpec\.(Name|Namespace|Kind|APIVersion|(Labels|Annotations)\[[^\]]+\])\}")

# Trial kinds Katib treats as jobs: they need a primaryContainerName.
JOB_LIKE_KINDS = ("Job", "PyTorchJob", "TFJob", "XGBoostJob", "MPIJob", "PaddleJob", "JAXJob")


def _conditions(success: str) -> tuple[str, str]:
    return (
        f'status.conditions.#(type=="{success}")#|#(status=="True")#',
        'status.conditions.#(type=="Failed")#|#(status=="True")#',
    )


# Katib's defaulting webhook: (successCondition, failureCondition), primaryPodLabels per trial kind.
_KUBEFLOW_LABELS = {"training.kubeflow.org/job-role": "master"}
TRIAL_DEFAULTS: dict[str, tuple[tuple[str, str], dict[str, str] | None]] = {
    "Job": (_conditions("Complete"), None),
    **{
        kind: (_conditions("Succeeded"), _KUBEFLOW_LABELS)
        for kind in ("PyTorchJob", "TFJob", "XGBoostJob", "MPIJob")
    },
    "TrainJob": (
        _conditions("Complete"),
        {"jobset.sigs.k8s.io/replicatedjob-name": "node", "batch.kubernetes.io/job-completion-index": "0"},
    ),
}

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


SETTINGS: dict[str, dict[str, Check]] = {
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
    if spec.get("nasConfig") is not None:
        raise SpecError("spec.nasConfig", "neural architecture search is not supported by kubeflow-tasks")

    objective = _objective(spec)
    parameters = _parameters(spec)
    algorithm = _algorithm(spec, parameters)
    parallel = c.integer(spec, "parallelTrialCount", "spec", default=3, minimum=1)
    max_trials = c.integer(spec, "maxTrialCount", "spec", minimum=1)
    max_failed = c.integer(spec, "maxFailedTrialCount", "spec", minimum=0)
    if max_trials is not None and max_failed is not None and max_failed > max_trials:
        raise SpecError(
            "spec.maxFailedTrialCount", f"must be <= spec.maxTrialCount ({max_trials}), got {max_failed}"
        )
    if max_trials is not None and spec.get("parallelTrialCount") is not None and parallel > max_trials:
        raise SpecError(
            "spec.parallelTrialCount", f"must be <= spec.maxTrialCount ({max_trials}), got {parallel}"
        )
    resume = c.string(
        spec, "resumePolicy", "spec", default="Never", choices=("Never", "LongRunning", "FromVolume")
    )
    collector_kind, metrics_format = _metrics_collector(spec)
    template = _trial_template(spec, {p.name for p in parameters})

    # The defaulting webhook's work, so the stored manifest is what the cluster would hold.
    defaulted = doc["spec"]
    defaulted["parallelTrialCount"] = parallel
    defaulted["resumePolicy"] = resume
    defaulted["objective"]["metricStrategies"] = [
        {"name": m, "value": v} for m, v in objective.metric_strategies
    ]
    mcs = defaulted["metricsCollectorSpec"] = defaulted.get("metricsCollectorSpec") or {}
    mcs["collector"] = {**(mcs.get("collector") or {}), "kind": collector_kind}
    trial = defaulted["trialTemplate"]
    trial["successCondition"] = template.success_condition
    trial["failureCondition"] = template.failure_condition
    labels = TRIAL_DEFAULTS.get(template.trial_spec["kind"], (None, None))[1]
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
        resume_policy=resume,
    )


def _objective(spec: Mapping[str, Any]) -> ObjectiveSpec:
    path = "spec.objective"
    obj = c.mapping(spec, "objective", "spec", required=True)
    assert obj is not None
    c.reject_unknown(
        obj,
        ("type", "goal", "objectiveMetricName", "additionalMetricNames", "metricStrategies"),
        path,
        "objective",
    )
    kind = c.string(obj, "type", path, required=True, choices=("minimize", "maximize"))
    metric = c.string(obj, "objectiveMetricName", path, required=True)
    goal = obj.get("goal")
    if goal is not None and (isinstance(goal, bool) or not isinstance(goal, int | float)):
        raise SpecError(c.join(path, "goal"), f"must be a number, got {c.type_name(goal)} {goal!r}")
    extra = c.string_list(obj, "additionalMetricNames", path)
    if metric in extra:
        raise SpecError(
            c.join(path, "additionalMetricNames"), f"must not repeat the objective metric {metric!r}"
        )
    metrics = (metric, *extra)
    strategies: dict[str, str] = {}
    for spath, sname, entry in _named_entries(obj, "metricStrategies", path):
        if sname not in metrics:
            raise SpecError(
                c.join(spath, "name"), f"unknown metric {sname!r} (metrics: {', '.join(metrics)})"
            )
        strategies[sname] = c.string(entry, "value", spath, required=True, choices=("min", "max", "latest"))
    strategies.setdefault(metric, "min" if kind == "minimize" else "max")
    return ObjectiveSpec(
        type=kind,
        objective_metric_name=metric,
        goal=None if goal is None else float(goal),
        additional_metric_names=extra,
        metric_strategies=tuple((m, strategies.get(m, "latest")) for m in metrics),
    )


def _named_entries(
    obj: Mapping[str, Any], key: str, path: str
) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(path, name, entry) of each `{name, value}` entry of a Katib list such as algorithmSettings."""
    for i, entry in enumerate(c.items(obj, key, path)):
        epath = c.join(c.join(path, key), i)
        if not isinstance(entry, Mapping):
            raise SpecError(epath, f"must be a mapping with name and value, got {c.type_name(entry)}")
        yield epath, c.string(entry, "name", epath, required=True), entry


def _settings(
    raw: Mapping[str, Any], path: str, known: Mapping[str, Check], owner: str
) -> tuple[tuple[str, str], ...]:
    result = []
    for spath, name, entry in _named_entries(raw, "algorithmSettings", path):
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
    if name in UNSUPPORTED_ALGORITHMS:
        raise SpecError(
            where,
            f"{name!r} is a Katib algorithm that is not supported by kubeflow-tasks (use one of {', '.join(SETTINGS)})",
        )
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


def _parameters(spec: Mapping[str, Any]) -> tuple[ParameterSpec, ...]:
    raw = c.items(spec, "parameters", "spec", required=True)
    if not raw:
        raise SpecError("spec.parameters", "must list at least one parameter")
    result: list[ParameterSpec] = []
    for i, entry in enumerate(raw):
        p = _parameter(entry, f"spec.parameters[{i}]")
        if any(q.name == p.name for q in result):
            raise SpecError(f"spec.parameters[{i}].name", f"duplicate parameter name {p.name!r}")
        result.append(p)
    return tuple(result)


def _parameter(entry: Any, path: str) -> ParameterSpec:
    if not isinstance(entry, Mapping):
        raise SpecError(path, f"must be a mapping, got {c.type_name(entry)}")
    c.reject_unknown(entry, ("name", "parameterType", "feasibleSpace"), path, "a parameter")
    name = c.string(entry, "name", path, required=True)
    ptype = c.string(
        entry, "parameterType", path, required=True, choices=("double", "int", "discrete", "categorical")
    )
    fs = c.mapping(entry, "feasibleSpace", path, required=True)
    assert fs is not None
    fpath = c.join(path, "feasibleSpace")
    c.reject_unknown(fs, ("min", "max", "list", "step", "distribution"), fpath, "feasibleSpace")
    low, high, step = (c.string(fs, key, fpath) for key in ("min", "max", "step"))
    values = c.string_list(fs, "list", fpath)
    distribution = c.string(fs, "distribution", fpath, choices=DISTRIBUTIONS)
    integral = ptype == "int"
    if ptype in ("double", "int"):
        if values:
            raise SpecError(c.join(fpath, "list"), f"must be empty for a {ptype} parameter (use min and max)")
        for key, text in (("min", low), ("max", high)):
            if text is None:
                raise SpecError(c.join(fpath, key), f"required for a {ptype} parameter")
        lo, hi = (
            c.number(low, c.join(fpath, "min"), integral=integral),
            c.number(high, c.join(fpath, "max"), integral=integral),
        )
        if lo >= hi:
            raise SpecError(c.join(fpath, "min"), f"must be less than max ({high}), got {low}")
        if distribution in ("logUniform", "logNormal") and lo <= 0:
            raise SpecError(c.join(fpath, "min"), f"must be > 0 for a {distribution} distribution, got {low}")
        if step is not None and c.number(step, c.join(fpath, "step"), integral=integral) <= 0:
            raise SpecError(c.join(fpath, "step"), f"must be > 0, got {step}")
    else:
        for key, text in (("min", low), ("max", high), ("step", step)):
            if text is not None:
                raise SpecError(c.join(fpath, key), f"not allowed for a {ptype} parameter (use list)")
        if not values:
            raise SpecError(c.join(fpath, "list"), f"must list at least one value for a {ptype} parameter")
        if ptype == "discrete":
            for j, value in enumerate(values):
                c.number(value, c.join(c.join(fpath, "list"), j))
    return ParameterSpec(
        name=name, parameter_type=ptype, min=low, max=high, list=values, step=step, distribution=distribution
    )


def _metrics_collector(spec: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    path = "spec.metricsCollectorSpec"
    raw = c.mapping(spec, "metricsCollectorSpec", "spec") or {}
    collector = c.mapping(raw, "collector", path) or {}
    kind = c.string(collector, "kind", c.join(path, "collector"), default="StdOut", choices=COLLECTOR_KINDS)
    source = c.mapping(raw, "source", path) or {}
    spath = c.join(path, "source")
    filter_ = c.mapping(source, "filter", spath) or {}
    fpath = c.join(spath, "filter")
    formats = c.string_list(filter_, "metricsFormat", fpath)
    for i, regex in enumerate(formats):
        where = c.join(c.join(fpath, "metricsFormat"), i)
        try:
            groups = re.compile(regex).groups
        except re.error as exc:
            raise SpecError(where, f"not a valid regular expression: {exc}") from None
        if groups < 2:
            raise SpecError(where, "must capture the metric name and value (two groups)")
    return kind, formats


def _early_stopping(spec: Mapping[str, Any]) -> AlgorithmSpec | None:
    path = "spec.earlyStopping"
    raw = c.mapping(spec, "earlyStopping", "spec")
    if raw is None:
        return None
    c.reject_unknown(raw, ("algorithmName", "algorithmSettings"), path, "earlyStopping")
    name = c.string(raw, "algorithmName", path, required=True, choices=("medianstop",))
    return AlgorithmSpec(name=name, settings=_settings(raw, path, EARLY_STOPPING_SETTINGS, "medianstop"))


def _trial_template(spec: Mapping[str, Any], search_space: set[str]) -> TrialTemplateSpec:
    path = "spec.trialTemplate"
    raw = c.mapping(spec, "trialTemplate", "spec", required=True)
    assert raw is not None
    c.reject_unknown(
        raw,
        (
            "retain",
            "trialSpec",
            "configMap",
            "trialParameters",
            "primaryPodLabels",
            "primaryContainerName",
            "successCondition",
            "failureCondition",
        ),
        path,
        "trialTemplate",
    )
    if (raw.get("trialSpec") is None) == (raw.get("configMap") is None):
        raise SpecError(path, "must set exactly one of trialSpec and configMap")
    if raw.get("configMap") is not None:
        raise SpecError(
            c.join(path, "configMap"),
            "trial templates from a ConfigMap are not supported by kubeflow-tasks; inline it as trialSpec",
        )
    trial = c.mapping(raw, "trialSpec", path, required=True)
    assert trial is not None
    tpath = c.join(path, "trialSpec")
    c.string(trial, "apiVersion", tpath, required=True)
    kind = c.string(trial, "kind", tpath, required=True)

    declared = _trial_parameters(raw, path, search_space)
    _check_uses(trial, tpath, declared, c.join(path, "trialParameters"))

    container = c.string(raw, "primaryContainerName", path)
    if kind in JOB_LIKE_KINDS and not container:
        raise SpecError(c.join(path, "primaryContainerName"), f"required for a {kind} trial")
    if container:
        found = _container_names(trial)
        if container not in found:
            raise SpecError(
                c.join(path, "primaryContainerName"),
                f"no container named {container!r} in trialSpec (found: {c.names(found)})",
            )

    (success, failure), _ = TRIAL_DEFAULTS.get(kind, ((None, None), None))
    success = c.string(raw, "successCondition", path, default=success)
    failure = c.string(raw, "failureCondition", path, default=failure)
    for key, value in (("successCondition", success), ("failureCondition", failure)):
        if not value:
            raise SpecError(c.join(path, key), f"required for a {kind} trial (Katib has no default for it)")
    return TrialTemplateSpec(
        trial_parameters=declared,
        trial_spec=trial,
        primary_container_name=container,
        success_condition=success,
        failure_condition=failure,
        retain=c.boolean(raw, "retain", path),
    )


def _trial_parameters(
    raw: Mapping[str, Any], path: str, search_space: set[str]
) -> tuple[TrialParameterSpec, ...]:
    lpath = c.join(path, "trialParameters")
    entries = c.items(raw, "trialParameters", path, required=True)
    result: list[TrialParameterSpec] = []
    for i, entry in enumerate(entries):
        epath = c.join(lpath, i)
        if not isinstance(entry, Mapping):
            raise SpecError(epath, f"must be a mapping with name and reference, got {c.type_name(entry)}")
        name = c.string(entry, "name", epath, required=True)
        reference = c.string(entry, "reference", epath, required=True)
        if any(p.name == name for p in result):
            raise SpecError(c.join(epath, "name"), f"duplicate trial parameter {name!r}")
        if reference not in search_space and not _META_REF_RE.fullmatch(reference):
            raise SpecError(
                c.join(epath, "reference"),
                f"unknown parameter {reference!r} (search space: {c.names(search_space)}; or a meta key such as ${{trialSpec.Name}})",
            )
        result.append(
            TrialParameterSpec(
                name=name, reference=reference, description=c.string(entry, "description", epath) or ""
            )
        )
    return tuple(result)


def _check_uses(trial: Any, path: str, declared: tuple[TrialParameterSpec, ...], list_path: str) -> None:
    """Every `${trialParameters.x}` in the trial spec is declared, and every declared one is used."""
    known = {p.name for p in declared}
    used: set[str] = set()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            for name in _TRIAL_PARAM_RE.findall(value):
                if name not in known:
                    raise SpecError(
                        where, f"uses undeclared trial parameter {name!r} (declared: {c.names(known)})"
                    )
                used.add(name)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, c.join(where, str(k)))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, c.join(where, i))

    walk(trial, path)
    for i, p in enumerate(declared):
        if p.name not in used:
            raise SpecError(
                f"{list_path}[{i}].name",
                f"trial parameter {p.name!r} is not used in trialSpec (as ${{trialParameters.{p.name}}})",
            )


def _container_names(value: Any) -> set[str]:
    """Names of every container in a trial spec, whatever its kind (Job, PyTorchJob, ...)."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "containers" and isinstance(item, list):
                found.update(
                    x["name"] for x in item if isinstance(x, Mapping) and isinstance(x.get("name"), str)
                )
            else:
                found |= _container_names(item)
    elif isinstance(value, list):
        for item in value:
            found |= _container_names(item)
    return found
