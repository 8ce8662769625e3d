"""KFP runs on a KFP API server: the run body, get-or-create of experiments, and create-once.

Runs have no labels, so a run is found again by its deterministic display name, and what we need
to know about it later is kept in its description (`describe`): the key on the first line (so `get`
and `list` can rebuild the handle), then one `kubeflow-tasks <field>: <value>` line per field (a
run's spec fingerprint, a recurring run's config digest). A run made before a field existed simply
lacks its line. Creating a run or an
experiment is not idempotent on the server: a create whose answer was lost may still have
happened. So every create is tried once, and before each retry we look for what it may have made.
"""

from __future__ import annotations

import copy
import json
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

from shared.backends.kubernetes.access import Kfp
from shared.retry import http_status, retrying
from shared.specs.model import PipelineRunSpec

DESCRIPTION_PREFIX = "kubeflow-tasks key: "
FIELD_PREFIX = "kubeflow-tasks "
FIELDS = ("fingerprint", "config")  # the field lines we write, in this order
_COMPILED: dict[tuple[str, str], list[dict[str, Any]]] = {}
_COMPILED_LOCK = threading.Lock()


def equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"key": key, "operation": "EQUALS", "string_value": value}]})


def substring(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"key": key, "operation": "IS_SUBSTRING", "string_value": value}]})


def describe(key: str, **fields: str) -> str:
    """The description of a run or recurring run of ours: the key, then one line per field."""
    lines = [f"{DESCRIPTION_PREFIX}{key}"]
    lines += [f"{FIELD_PREFIX}{name}: {fields[name]}" for name in FIELDS if fields.get(name)]
    return "\n".join(lines)


def _read_description(obj: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """(key, fields) of a description `describe` wrote, or (None, {}). Field lines are read from the
    end, so a key that itself holds a line break (an API caller's) still reads back whole."""
    text = obj.get("description") or ""
    if not text.startswith(DESCRIPTION_PREFIX):
        return None, {}
    lines = text[len(DESCRIPTION_PREFIX) :].split("\n")
    fields: dict[str, str] = {}
    while len(lines) > 1:
        name, sep, value = lines[-1].removeprefix(FIELD_PREFIX).partition(": ")
        if not (lines[-1].startswith(FIELD_PREFIX) and sep and name in FIELDS) or name in fields:
            break
        fields[name] = value
        lines.pop()
    return "\n".join(lines), fields


def key_of(obj: Mapping[str, Any]) -> str | None:
    """The key a run or recurring run of ours was made for; None for anyone else's."""
    return _read_description(obj)[0]


def field_of(obj: Mapping[str, Any], name: str) -> str | None:
    """A field line of our description (`fingerprint`, `config`), None when absent (an older run)."""
    return _read_description(obj)[1].get(name)


def create_once_then_find(create: Callable[[], Any], find: Callable[[], Any]) -> Any:
    """`find()`, else `create()` once; after a transient failure of the create (or a 409: a
    concurrent create), look again before creating again. The waits and the giving up are
    `shared.retry`'s; `find` retries its own requests, so its failures end this at once."""
    for attempt in retrying(also=lambda exc: http_status(exc) == 409):
        found = find()
        if found is not None:
            return found
        with attempt:
            return create()
    raise AssertionError("unreachable: retrying re-raises the last error")


def pipeline_docs(spec: PipelineRunSpec) -> list[dict[str, Any]]:
    """The compiled pipeline (PipelineSpec, then an optional platform spec), compiled once per process."""
    from shared.specs.pipeline_ir import load_ir

    cache_key = (spec.pipeline, spec.base_dir)
    with _COMPILED_LOCK:
        if cache_key not in _COMPILED:
            with tempfile.TemporaryDirectory(prefix="kubeflow-tasks-compile-") as scratch:
                _COMPILED[cache_key] = load_ir(spec.pipeline, spec.base_dir, scratch)
        return copy.deepcopy(_COMPILED[cache_key])


def run_body(
    spec: PipelineRunSpec,
    *,
    display_name: str,
    key: str,
    env: Mapping[str, str],
    mlflow_plugin_experiment: str | None,
    fingerprint: str | None = None,
    uploaded: tuple[Any, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The v2beta1 Run to create, with the pipeline spec inline (no pipeline upload to clean up),
    or, for a run of an uploaded pipeline, the reference to the version `uploaded` (`uploaded.resolve`).

    Compiling and checking the parameters happens here, before anything is sent; the caller adds
    the experiment id, which may need a request."""
    from shared.specs.pipeline_ir import pipeline_arguments

    body: dict[str, Any] = {"display_name": display_name, "description": describe(key, fingerprint=fingerprint or "")}
    if uploaded is not None:
        version, pipeline = uploaded
        body["pipeline_version_reference"] = {
            "pipeline_id": version.pipeline_id,
            "pipeline_version_id": version.version_id,
        }
    else:
        docs = pipeline_docs(spec)
        pipeline = docs[0]
        if spec.enable_caching is not None:
            _set_caching(pipeline, spec.enable_caching)
        body["pipeline_spec"] = (
            pipeline if len(docs) == 1 else {"pipeline_spec": pipeline, "platform_spec": docs[1]}
        )
    runtime_config: dict[str, Any] = {"parameters": pipeline_arguments(pipeline, spec.parameters, env)}
    if spec.pipeline_root:
        runtime_config["pipeline_root"] = spec.pipeline_root
    body["runtime_config"] = runtime_config
    if spec.service_account:
        body["service_account"] = spec.service_account
    if mlflow_plugin_experiment:
        body["plugins_input"] = {"mlflow": {"experiment_id": mlflow_plugin_experiment}}
    return body


def _set_caching(pipeline: dict[str, Any], enabled: bool) -> None:
    """What `kfp.Client.run_pipeline(enable_caching=...)` does: override every task's cache option."""
    dags = [pipeline.get("root", {}).get("dag", {})]
    dags += [c.get("dag", {}) for c in (pipeline.get("components") or {}).values()]
    for dag in dags:
        for task in (dag.get("tasks") or {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = enabled


class Experiments:
    """Experiment ids by name, get-or-create, resolved once per backend."""

    def __init__(self, kfp: Kfp):
        self.kfp = kfp
        self._ids: dict[tuple[str, str | None], str] = {}
        self._lock = threading.Lock()

    def id_for(self, name: str, namespace: str | None) -> str:
        with self._lock:
            if (name, namespace) not in self._ids:
                self._ids[(name, namespace)] = create_once_then_find(
                    lambda: self._create(name, namespace), lambda: self._find(name, namespace)
                )
            return self._ids[(name, namespace)]

    def _find(self, name: str, namespace: str | None) -> str | None:
        api = self.kfp.experiments()
        kwargs = {"namespace": namespace} if namespace else {}
        body = self.kfp.request(
            api.experiment_service_list_experiments,
            filter=equals("display_name", name),
            page_size=10,
            **kwargs,
        )
        found = sorted(body.get("experiments") or [], key=lambda e: str(e.get("created_at") or ""))
        return found[0]["experiment_id"] if found else None

    def _create(self, name: str, namespace: str | None) -> str:
        api = self.kfp.experiments()
        experiment = {"display_name": name, **({"namespace": namespace} if namespace else {})}
        body = self.kfp.request(api.experiment_service_create_experiment, experiment, retry=False)
        return body["experiment_id"]
