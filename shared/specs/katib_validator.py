"""Katib's admission rules for an Experiment, named after its webhook (`validator.go`, v0.19).

Katib's CRD has no structural schema, so the defaulting and validating webhooks are the whole of
what a cluster checks. `experiment.py` reads the manifest into dataclasses and calls these; each
function here is one of the validator's (`validateMetricsCollector`, `validateTrialTemplate`'s
parts) or the defaulter's, and raises the first error as a `SpecError` naming the field.

Where Katib checks nothing (a trial kind other than batch/v1 Job is "not validated"), nothing is
checked here either: the manifest is the user's, and a cluster admits it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c

METRICS_COLLECTOR_PATH = "spec.metricsCollectorSpec"
SOURCE_PATH = f"{METRICS_COLLECTOR_PATH}.source"
COLLECTOR_KINDS = ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "Push")
FILE_FORMATS = ("TEXT", "JSON")
# The defaulting webhook's paths (pkg/metricscollector/v1beta1/common/const.go).
DEFAULT_FILE_PATH = "/var/log/katib/metrics.log"
DEFAULT_TF_EVENT_DIR = "/var/log/katib/tfevent/"
_TWO_GROUPS = re.compile(r".*\(.*\).*\(.*\).*")  # Katib's "two top subexpressions" test, as text
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
