"""KFP pipeline runs: our `PipelineRun` document, or a compiled KFP pipeline package given directly.

A PipelineRun names its pipeline by `spec.pipeline` (a compiled file or `module:function`) or by
`spec.pipelineName` (+ optional `spec.pipelineVersion`): a pipeline uploaded to the KFP server,
which only the Kubernetes backend can look up.

A `module:function` reference is checked for syntax only (importing and compiling it needs kfp
and the user's code, which the backend does); a compiled pipeline is read and validated as the
KFP server would (`kfp_package`), with its inputs checked against the run's parameters.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c
from shared.specs import kfp_package
from shared.specs.model import PipelineRunSpec

API_VERSION = "kubeflow-tasks/v1"
_SPEC_FIELDS = (
    "pipeline",
    "pipelineName",
    "pipelineVersion",
    "parameters",
    "experiment",
    "enableCaching",
    "serviceAccount",
    "pipelineRoot",
)
_FUNCTION_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_compiled_pipeline(doc: Mapping[str, Any]) -> bool:
    """A compiled KFP PipelineSpec (what `kfp.compiler` writes), judged by its top-level keys."""
    return kfp_package.looks_like_pipeline_spec(doc)


def parse_pipeline_run(
    manifest: Mapping[str, Any],
    base_dir: str | None = None,
    *,
    params: Mapping[str, str] | None = None,
    source: str | None = None,
) -> PipelineRunSpec:
    """A PipelineRun document (or a compiled pipeline read from the file `source`) -> PipelineRunSpec.

    `params` (CLI strings) override `spec.parameters`; they stay strings, the runner coerces them
    to the pipeline's declared input types.
    """
    base = c.resolve_base_dir(base_dir)
    if is_compiled_pipeline(manifest):
        return _compiled(manifest, base, params, source)
    doc = copy.deepcopy(dict(manifest))
    c.header(doc, API_VERSION, ("PipelineRun",))
    name, namespace = c.metadata(doc)
    spec = c.mapping(doc, "spec", "", required=True)
    assert spec is not None
    c.reject_unknown(spec, _SPEC_FIELDS, "spec", "a PipelineRun spec")
    parameters = {**(c.mapping(spec, "parameters", "spec") or {}), **dict(params or {})}
    enable_caching = spec.get("enableCaching")
    if enable_caching is not None:
        enable_caching = c.boolean(spec, "enableCaching", "spec")
    pipeline_name, pipeline_version = _registered(spec, enable_caching)
    if pipeline_name is None:
        pipeline = _pipeline_ref(c.string(spec, "pipeline", "spec", required=True), base)
        if not _FUNCTION_RE.fullmatch(pipeline):
            _check_inputs(_read(pipeline, "spec.pipeline"), parameters, "spec.parameters")
        doc["spec"] = {**spec, "pipeline": pipeline, "parameters": parameters}
    else:  # its inputs are the server's to tell: checked when the version is looked up, before the run
        pipeline = ""
        doc["spec"] = {**spec, "parameters": parameters}
    return PipelineRunSpec(
        name=name,
        pipeline=pipeline,
        base_dir=base,
        parameters=parameters,
        experiment=c.string(spec, "experiment", "spec") or None,
        namespace=namespace,
        enable_caching=enable_caching,
        service_account=c.string(spec, "serviceAccount", "spec") or None,
        pipeline_root=c.string(spec, "pipelineRoot", "spec") or None,
        manifest=doc,
        pipeline_name=pipeline_name,
        pipeline_version=pipeline_version,
    )


def _registered(spec: Mapping[str, Any], enable_caching: bool | None) -> tuple[str | None, str | None]:
    """`spec.pipelineName` (+ `spec.pipelineVersion`): a pipeline uploaded to KFP, instead of `spec.pipeline`."""
    name = c.string(spec, "pipelineName", "spec")
    version = c.string(spec, "pipelineVersion", "spec")
    if name is None:
        if version is not None:
            raise SpecError("spec.pipelineVersion", "applies with spec.pipelineName (an uploaded pipeline)")
        return None, None
    if spec.get("pipeline") is not None:
        raise SpecError("spec.pipelineName", "give spec.pipeline (a file or module:function) or spec.pipelineName, not both")
    for field_name, value in (("pipelineName", name), ("pipelineVersion", version)):
        if value is not None and (not value.strip() or not value.isprintable()):
            raise SpecError(f"spec.{field_name}", f"must be non-empty printable text, got {value!r}")
    if enable_caching is not None:
        raise SpecError(
            "spec.enableCaching",
            "applies to a pipeline file or function; an uploaded version runs with the caching it was compiled with",
        )
    return name, version


def parse_compiled_pipeline(
    source: str, base_dir: str | None = None, *, params: Mapping[str, str] | None = None
) -> PipelineRunSpec:
    """A compiled pipeline package given directly (CLI, operator `spec=`) -> a run of it."""
    path = os.path.abspath(source)
    package = kfp_package.read_package(path)
    parameters = dict(params or {})
    _check_inputs(package, parameters, "params")
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "PipelineRun",
        "metadata": {"name": package.name},
        "spec": {"pipeline": path, "parameters": parameters},
    }
    return PipelineRunSpec(
        name=package.name,
        pipeline=path,
        base_dir=c.resolve_base_dir(base_dir or os.path.dirname(path)),
        parameters=parameters,
        manifest=manifest,
    )


def _compiled(
    doc: Mapping[str, Any], base: str, params: Mapping[str, str] | None, source: str | None
) -> PipelineRunSpec:
    if source is None:
        raise SpecError("pipelineInfo", "a compiled pipeline must be given as a file path, not as a mapping")
    return parse_compiled_pipeline(source, base, params=params)


def _read(pipeline: str, path: str) -> kfp_package.PipelinePackage:
    """The package a PipelineRun names; its own errors keep their field, prefixed by the file."""
    try:
        return kfp_package.read_package(pipeline)
    except SpecError as exc:
        if exc.path == pipeline:
            raise SpecError(path, f"{os.path.basename(pipeline)} {exc.detail}") from None
        raise SpecError(f"{path}({os.path.basename(pipeline)}).{exc.path}", exc.detail) from None


def _check_inputs(package: kfp_package.PipelinePackage, parameters: Mapping[str, Any], path: str) -> None:
    """Names the compiled pipeline does not declare would only fail later, inside KFP."""
    declared = set(package.inputs)
    for name in parameters:
        if name not in declared:
            where = path if path == "params" else c.join(path, str(name))
            raise SpecError(
                where, f"unknown pipeline parameter {name!r} (the pipeline takes: {c.names(declared)})"
            )


def _pipeline_ref(value: str, base: str) -> str:
    """`package.module:function` as is; anything else is a file, made absolute against base_dir."""
    if ":" in value and not os.path.isabs(value) and not kfp_package.is_package_path(value):
        if not _FUNCTION_RE.fullmatch(value):
            raise SpecError(
                "spec.pipeline", f"{value!r} is not 'package.module:function' nor a pipeline file"
            )
        return value
    path = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if not os.path.isfile(path):
        raise SpecError("spec.pipeline", f"pipeline file {value!r} not found (looked in {base})")
    return path
