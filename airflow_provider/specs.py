"""From an operator's `spec=` argument (after templating) to a validated core spec.

Accepted: a file path (relative paths resolve against the DAG file's folder), a manifest mapping,
and for pipelines also a pipeline function or a `package.module:function` string. Parsing and
validation are the core's (`shared.specs`); this module only chooses which entry point to call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import SpecError
from shared.params import texts
from shared.specs import Spec, load_spec
from shared.specs.builders import pipeline_run
from shared.specs.common import load_documents, single_document
from shared.specs.kfp_package import is_archive
from shared.specs.pipeline import is_compiled_pipeline
from shared.status import Kind

SpecArg = str | os.PathLike[str] | Mapping[str, Any] | Callable[..., Any]
# Kubernetes label and annotation keys: an optional DNS-subdomain prefix and a name; label values: a name or "".
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")


def pipeline_reference(func: Callable[..., Any]) -> str:
    """`module:function` of a KFP pipeline (a `@dsl.pipeline` object or its function).

    The work runs in another process (the local supervisor, a cluster), which imports it by name:
    a pipeline defined inside a DAG file has no importable name, so it is refused here.
    """
    inner = getattr(func, "pipeline_func", func)
    module, name = getattr(inner, "__module__", None), getattr(inner, "__qualname__", "")
    if not module or module == "__main__" or module.startswith("unusual_prefix_") or "." in name or "<" in name:
        raise SpecError("spec", f"pipeline {name or func!r} must be a top-level function of an importable module")
    return f"{module}:{name}"


def resolve_spec(
    kind: Kind,
    spec: SpecArg,
    *,
    params: Mapping[str, Any] | None,
    name: str | None,
    base_dir: str,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Spec:
    """A validated spec of `kind`; errors are `SpecError`s naming the field, raised before submission.

    `labels` and `annotations` are added to a manifest's `metadata` (the remote object's, on a
    cluster); KFP runs have neither, so for pipelines they must be empty.
    """
    params = texts(params)  # the one rule of shared.params, as the DolphinScheduler tasks use
    metadata = _metadata(kind, labels, annotations)
    if callable(spec) and not isinstance(spec, Mapping):
        if kind is not Kind.PIPELINE:
            raise SpecError("spec", "a function is accepted for pipelines only")
        return pipeline_run(pipeline_reference(spec), name=name, parameters=params, base_dir=base_dir)
    if isinstance(spec, Mapping):
        return load_spec(_renamed(spec, name, metadata), kind=kind, params=params, base_dir=base_dir)
    if not isinstance(spec, str | os.PathLike):
        raise SpecError("spec", f"expected a file path, a mapping or a pipeline function, got {type(spec).__name__}")
    text = os.fspath(spec).strip()
    if kind is Kind.PIPELINE and ":" in text and not text.endswith((".yaml", ".yml", ".json")):
        return pipeline_run(text, name=name, parameters=params, base_dir=base_dir)
    path = os.path.join(base_dir, os.path.expanduser(text))
    if name is None and not metadata:
        return load_spec(path, kind=kind, params=params)
    if is_archive(path):
        return pipeline_run(path, name=name, parameters=params, base_dir=os.path.dirname(path))
    documents = load_documents(path)  # a compiled pipeline may hold a platform spec too
    if any(isinstance(d, Mapping) and is_compiled_pipeline(d) for d in documents):
        return pipeline_run(path, name=name, parameters=params, base_dir=os.path.dirname(path))
    document = single_document(documents, path)
    return load_spec(_renamed(document, name, metadata), kind=kind, params=params, base_dir=os.path.dirname(path))


def _metadata(kind: Kind, labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None) -> dict[str, dict]:
    """The checked `labels` / `annotations` to merge into the manifest's metadata."""
    found: dict[str, dict] = {}
    for field_name, values in (("labels", labels), ("annotations", annotations)):
        if not values:
            continue
        if kind is Kind.PIPELINE:
            raise SpecError(field_name, "a KFP run has no labels or annotations; give them to the other operators")
        checked = {}
        for key, value in values.items():
            key, value = str(key), str(value)
            if not _KEY.fullmatch(key) or len(key) > 317:
                raise SpecError(field_name, f"{key!r} is not a Kubernetes key (optional prefix/, then a name of at most 63 characters)")
            if field_name == "labels" and not _VALUE.fullmatch(value):
                raise SpecError(field_name, f"value {value!r} of {key!r}: at most 63 letters, digits, '-', '_', '.'")
            checked[key] = value
        found[field_name] = checked
    return found


def _renamed(manifest: Mapping[str, Any], name: str | None, metadata: Mapping[str, dict] | None = None) -> dict[str, Any]:
    doc = dict(manifest)
    meta = dict(doc.get("metadata") or {})
    if name is not None:
        meta["name"] = name
    for field_name, values in (metadata or {}).items():
        meta[field_name] = {**(meta.get(field_name) or {}), **values}
    doc["metadata"] = meta
    return doc
