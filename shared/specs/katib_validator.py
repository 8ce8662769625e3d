"""Katib's admission webhooks for an Experiment: the validator (`validator.go`, v0.19) and the
defaulter's trial and collector defaults, one function per rule group, named after Katib's.

Katib's CRD has no structural schema, so these webhooks are the whole of what a cluster checks.
`experiment.py` calls them in Katib's order (trial counts, objective, algorithm, trial template,
search space, metrics collector); each reads its part into the spec dataclasses and raises the
first error as a `SpecError` naming the field. The suggestion services' setting checks are not
here: they belong to each algorithm's service (`experiment.SETTINGS`).

Where Katib checks nothing (a trial kind other than batch/v1 Job is "not validated"), nothing is
checked here either, beyond our own lookup of the primary container where the kind tells it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c
from shared.specs import pod_fields
from shared.specs.model import ObjectiveSpec, ParameterSpec, TrialParameterSpec, TrialTemplateSpec

METRICS_COLLECTOR_PATH = "spec.metricsCollectorSpec"
SOURCE_PATH = f"{METRICS_COLLECTOR_PATH}.source"
COLLECTOR_KINDS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "Push")
FILE_FORMATS = ("TEXT", "JSON")
# The defaulting webhook's paths (pkg/metricscollector/v1beta1/common/const.go).
DEFAULT_FILE_PATH = "/var/log/katib/metrics.log"
DEFAULT_TF_EVENT_DIR = "/var/log/katib/tfevent/"
_TWO_GROUPS = re.compile(r".*\(.*\).*\(.*\).*")  # Katib's "two top subexpressions" test, as text
DISTRIBUTIONS = ("uniform", "logUniform", "normal", "logNormal")
_TRIAL_PARAM_RE = re.compile(r"\$\{trialParameters\.([^}]*)\}")
_META_KEYS = ("Name", "Namespace", "Kind", "APIVersion")
_META_REF_RE = re.compile(r"\$\{trialSpec\.(.+)\}")
_META_MAP_RE = re.compile(r"(.+)\[(.+)\]")


# ---------------------------------------------------------------- metrics collector


def default_metrics_collector(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The defaulter's metricsCollectorSpec: kind StdOut, and each file collector's path and format."""
    raw = c.mapping(spec, "metricsCollectorSpec", "spec") or {}
    mcs = dict(raw)
    collector = dict(c.mapping(mcs, "collector", METRICS_COLLECTOR_PATH) or {})
    collector.setdefault("kind", "StdOut")
    mcs["collector"] = collector
    kind = collector["kind"]
    source = dict(c.mapping(mcs, "source", METRICS_COLLECTOR_PATH) or {})
    fs = c.mapping(source, "fileSystemPath", SOURCE_PATH)
    if kind == "File":
        fs = fs or {"path": DEFAULT_FILE_PATH, "kind": "File"}
        fs.setdefault("format", "TEXT")
    elif kind == "TensorFlowEvent" and fs is None:
        fs = {"path": DEFAULT_TF_EVENT_DIR, "kind": "Directory"}
    elif kind == "PrometheusMetric" and not source.get("httpGet"):
        source["httpGet"] = {"path": "/metrics", "port": 8080}
    if fs is not None:
        source["fileSystemPath"] = fs
    if source:
        mcs["source"] = source
    return mcs


def validate_metrics_collector(mcs: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """validateMetricsCollector on the defaulted spec -> (collector kind, filter regexes)."""
    collector = c.mapping(mcs, "collector", METRICS_COLLECTOR_PATH) or {}
    cpath = c.join(METRICS_COLLECTOR_PATH, "collector")
    kind = c.string(collector, "kind", cpath, default="StdOut", choices=COLLECTOR_KINDS)
    source = c.mapping(mcs, "source", METRICS_COLLECTOR_PATH) or {}
    fs = c.mapping(source, "fileSystemPath", SOURCE_PATH) or {}
    fpath = c.join(SOURCE_PATH, "fileSystemPath")
    path = c.string(fs, "path", fpath) or ""
    fs_kind = c.string(fs, "kind", fpath, choices=("File", "Directory"))
    fmt = c.string(fs, "format", fpath) or ""
    filter_ = c.mapping(source, "filter", SOURCE_PATH)
    if kind == "File":
        if fs_kind != "File" or not os.path.isabs(path):
            raise SpecError(
                c.join(fpath, "path"),
                f"an absolute path of kind File is required for the File collector, got {path!r}",
            )
        if fmt not in FILE_FORMATS:
            raise SpecError(c.join(fpath, "format"), f"must be TEXT or JSON, got {fmt!r}")
        if fmt == "JSON" and filter_ is not None:
            raise SpecError(c.join(SOURCE_PATH, "filter"), "must not be set when the metrics file format is JSON")
    elif kind == "TensorFlowEvent":
        if fs_kind != "Directory" or not os.path.isabs(path):
            raise SpecError(
                c.join(fpath, "path"),
                f"an absolute path of kind Directory (where the event files are) is required, got {path!r}",
            )
        if fmt:
            raise SpecError(c.join(fpath, "format"), f"must be empty for TensorFlowEvent, got {fmt!r}")
    elif kind == "PrometheusMetric":
        http = c.mapping(source, "httpGet", SOURCE_PATH) or {}
        hpath = c.join(SOURCE_PATH, "httpGet")
        port = http.get("port")
        if not str(port).isdigit() or int(port) <= 0:
            raise SpecError(c.join(hpath, "port"), f"must be a positive integer, got {port!r}")
        if not str(http.get("path") or "").startswith("/"):
            raise SpecError(c.join(hpath, "path"), f"must start with '/', got {http.get('path')!r}")
    elif kind == "Custom":
        if c.mapping(collector, "customCollector", cpath) is None:
            raise SpecError(c.join(cpath, "customCollector"), "required for the Custom collector kind")
        if fs and (not os.path.isabs(path) or fs_kind not in ("File", "Directory")):
            raise SpecError(fpath, "needs an absolute path of kind File or Directory")
    formats = c.string_list(filter_ or {}, "metricsFormat", c.join(SOURCE_PATH, "filter"))
    for i, regex in enumerate(formats):
        where = c.join(c.join(c.join(SOURCE_PATH, "filter"), "metricsFormat"), i)
        try:
            re.compile(regex)
        except re.error as exc:
            raise SpecError(where, f"not a valid regular expression: {exc}") from None
        if not _TWO_GROUPS.fullmatch(regex):
            raise SpecError(where, "two top subexpressions are required (the metric name and value)")
    return kind or "StdOut", formats


# ---------------------------------------------------------------- trial template


def is_meta_key(reference: str) -> bool:
    """`${trialSpec.Name}`, `${trialSpec.Labels[x]}`... (isMetaKey)."""
    match = _META_REF_RE.fullmatch(reference)
    if not match:
        return False
    key = match[1]
    sub = _META_MAP_RE.fullmatch(key)
    return key in _META_KEYS or bool(sub and sub[1] in ("Labels", "Annotations"))


def validate_trial_metadata(trial: Mapping[str, Any], path: str) -> None:
    """metadata.name and metadata.namespace of a trial spec must be omitted (Katib sets them)."""
    meta = trial.get("metadata")
    if isinstance(meta, Mapping):
        for key in ("name", "namespace"):
            if meta.get(key):
                raise SpecError(c.join(c.join(path, "metadata"), key), "must be omitted: Katib names each trial")


def primary_containers(trial: Mapping[str, Any]) -> set[str] | None:
    """The container names Katib can find in the pods of a trial, by trial kind; None: not knowable.

    Job and the training operators' kinds list pod templates; an Argo Workflow's `container`
    template runs as `main`; a Tekton step `x` runs as `step-x`; a TrainJob's pods come from its
    runtime, so its spec names no container (None, like any other kind).
    """
    kind = trial.get("kind")
    if kind == "Workflow":
        return {"main"} if _has_key(trial, "container") else None
    if kind in ("PipelineRun", "TaskRun"):
        return {f"step-{name}" for name in _step_names(trial)} or None
    if kind == "TrainJob":
        return None
    found = _pod_containers(trial)
    return found or None


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, Mapping):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


def _step_names(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "steps" and isinstance(item, list):
                found.update(s["name"] for s in item if isinstance(s, Mapping) and isinstance(s.get("name"), str))
            else:
                found |= _step_names(item)
    elif isinstance(value, list):
        for item in value:
            found |= _step_names(item)
    return found


def _pod_containers(value: Any) -> set[str]:
    """Names of every container (`containers` lists) in a trial spec of a pod-template kind."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "containers" and isinstance(item, list):
                found.update(x["name"] for x in item if isinstance(x, Mapping) and isinstance(x.get("name"), str))
            else:
                found |= _pod_containers(item)
    elif isinstance(value, list):
        for item in value:
            found |= _pod_containers(item)
    return found


def validate_primary_container(trial: Mapping[str, Any], name: str, path: str) -> None:
    """Our check of primaryContainerName against the trial's pods, where the kind tells them."""
    found = primary_containers(trial)
    if found is not None and name not in found:
        raise SpecError(
            c.join(path, "primaryContainerName"),
            f"no container named {name!r} in the {trial.get('kind')} trial (found: {c.names(found)})",
        )


def validate_config_map(raw: Mapping[str, Any], path: str) -> dict[str, str]:
    """A trial template from a ConfigMap: the cluster reads it, so only its reference is checked."""
    cm = c.mapping(raw, "configMap", path, required=True)
    assert cm is not None
    cpath = c.join(path, "configMap")
    c.reject_unknown(cm, ("configMapName", "configMapNamespace", "templatePath"), cpath, "configMap")
    return {key: c.string(cm, key, cpath, required=True) or "" for key in ("configMapName", "configMapNamespace", "templatePath")}


# ---------------------------------------------------------------- defaults, objective, search space, trial template


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

def validate_trial_counts(spec: Mapping[str, Any]) -> tuple[int, int | None, int | None]:
    """(parallelTrialCount defaulted to 3, maxTrialCount, maxFailedTrialCount), checked first, as Katib does."""
    parallel = c.integer(spec, "parallelTrialCount", "spec", default=3, minimum=1)
    max_trials = c.integer(spec, "maxTrialCount", "spec", minimum=1)
    max_failed = c.integer(spec, "maxFailedTrialCount", "spec", minimum=0)
    assert parallel is not None
    if max_trials is not None and max_failed is not None and max_failed > max_trials:
        raise SpecError(
            "spec.maxFailedTrialCount", f"must be <= spec.maxTrialCount ({max_trials}), got {max_failed}"
        )
    if max_trials is not None and spec.get("parallelTrialCount") is not None and parallel > max_trials:
        raise SpecError(
            "spec.parallelTrialCount", f"must be <= spec.maxTrialCount ({max_trials}), got {parallel}"
        )
    return parallel, max_trials, max_failed


def validate_objective(spec: Mapping[str, Any]) -> ObjectiveSpec:
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
    for spath, sname, entry in named_entries(obj, "metricStrategies", path):
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


def named_entries(obj: Mapping[str, Any], key: str, path: str) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(path, name, entry) of each `{name, value}` entry of a Katib list such as algorithmSettings."""
    for i, entry in enumerate(c.items(obj, key, path)):
        epath = c.join(c.join(path, key), i)
        if not isinstance(entry, Mapping):
            raise SpecError(epath, f"must be a mapping with name and value, got {c.type_name(entry)}")
        yield epath, c.string(entry, "name", epath, required=True), entry


def validate_parameters(spec: Mapping[str, Any]) -> tuple[ParameterSpec, ...]:
    """The search space; a NAS experiment has a nasConfig instead (never both)."""
    raw = c.items(spec, "parameters", "spec")
    nas = c.mapping(spec, "nasConfig", "spec")
    if not raw and nas is None:
        raise SpecError("spec.parameters", "required: spec.parameters or spec.nasConfig must be specified")
    if raw and nas is not None:
        raise SpecError("spec.nasConfig", "only one of spec.parameters and spec.nasConfig can be specified")
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
        if lo > hi:  # Katib admits min == max (a fixed value, e.g. hyperband's resource)
            raise SpecError(c.join(fpath, "min"), f"must not be greater than max ({high}), got {low}")
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


def validate_trial_template(spec: Mapping[str, Any], search_space: set[str]) -> TrialTemplateSpec:
    """validateTrialTemplate, in Katib's order, plus our check of the primary container's name."""
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
    container = c.string(raw, "primaryContainerName", path)
    if not container:
        raise SpecError(c.join(path, "primaryContainerName"), "required (the container whose metrics count)")
    if (raw.get("trialSpec") is None) == (raw.get("configMap") is None):
        raise SpecError(path, "must set exactly one of trialSpec and configMap")
    config_map = validate_config_map(raw, path) if raw.get("configMap") is not None else None
    trial = c.mapping(raw, "trialSpec", path) or {}
    tpath = c.join(path, "trialSpec")
    kind = None
    if config_map is None:
        c.string(trial, "apiVersion", tpath, required=True)
        kind = c.string(trial, "kind", tpath, required=True)

    declared = _trial_parameters(raw, path, search_space)
    if config_map is None:
        _check_uses(trial, tpath, declared, c.join(path, "trialParameters"))
        validate_trial_metadata(trial, tpath)
        if trial.get("apiVersion") == "batch/v1" and kind == "Job":
            pod_fields.check_job(trial, tpath)
        validate_primary_container(trial, container, path)

    (success, failure), _ = TRIAL_DEFAULTS.get(kind or "", ((None, None), None))
    success = c.string(raw, "successCondition", path, default=success)
    failure = c.string(raw, "failureCondition", path, default=failure)
    for key, value in (("successCondition", success), ("failureCondition", failure)):
        if not value:
            raise SpecError(c.join(path, key), f"required for a {kind or 'ConfigMap'} trial (Katib has no default for it)")
    return TrialTemplateSpec(
        trial_parameters=declared,
        trial_spec=trial,
        primary_container_name=container,
        success_condition=success or "",
        failure_condition=failure or "",
        retain=c.boolean(raw, "retain", path),
        config_map=config_map,
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
        if "{" in name or "}" in name:
            raise SpecError(c.join(epath, "name"), f"must not contain '{{' or '}}', got {name!r}")
        if any(p.name == name for p in result):
            raise SpecError(c.join(epath, "name"), f"duplicate trial parameter {name!r}")
        if any(p.reference == reference for p in result):
            raise SpecError(c.join(epath, "reference"), f"duplicate reference {reference!r} (each trial parameter has its own)")
        # A NAS experiment has no search-space names: its references (search-space, ...) are the service's.
        if search_space and reference not in search_space and not is_meta_key(reference):
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
