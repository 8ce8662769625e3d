"""Specs: what to run, parsed once from a file, a mapping or Python arguments, and validated here.

`load_spec` accepts the upstream manifests as users already write them (PyTorchJob/TFJob,
Katib Experiment), our `PipelineRun` document, and a compiled KFP pipeline package. Only PyYAML is
imported (and, to validate a compiled pipeline, KFP's generated protobuf messages, not the kfp
SDK), so schedulers can import this cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common, kfp_package
from shared.specs.experiment import parse_experiment
from shared.specs.model import (
    AlgorithmSpec,
    ContainerSpec,
    ExperimentSpec,
    ObjectiveSpec,
    ParameterSpec,
    PipelineRunSpec,
    ReplicaSpec,
    RunPolicy,
    Spec,
    TrainingJobSpec,
    TrialParameterSpec,
    TrialTemplateSpec,
)
from shared.specs.pipeline import is_compiled_pipeline, parse_compiled_pipeline, parse_pipeline_run
from shared.specs.training import FRAMEWORKS, parse_training_job
from shared.status import Kind

__all__ = [
    "AlgorithmSpec",
    "ContainerSpec",
    "ExperimentSpec",
    "Kind",
    "ObjectiveSpec",
    "ParameterSpec",
    "PipelineRunSpec",
    "ReplicaSpec",
    "RunPolicy",
    "Spec",
    "SpecError",
    "TrainingJobSpec",
    "TrialParameterSpec",
    "TrialTemplateSpec",
    "infer_kind",
    "load_spec",
    "parse_experiment",
    "parse_pipeline_run",
    "parse_training_job",
    "require_resource",
]

_EXPECTED = {
    Kind.TRAINING_JOB: "a PyTorchJob or TFJob manifest",
    Kind.EXPERIMENT: "a Katib Experiment manifest",
    Kind.PIPELINE: "a PipelineRun document or a compiled KFP pipeline",
}


def infer_kind(manifest: Mapping[str, Any]) -> Kind:
    """Which of the three kinds a manifest describes, from its `kind` (or KFP's compiled layout)."""
    if is_compiled_pipeline(manifest):
        return Kind.PIPELINE
    found = manifest.get("kind")
    if found in FRAMEWORKS:
        return Kind.TRAINING_JOB
    if found == "Experiment":
        return Kind.EXPERIMENT
    if found == "PipelineRun":
        return Kind.PIPELINE
    raise SpecError(
        "kind",
        f"expected PyTorchJob, TFJob, Experiment, PipelineRun or a compiled KFP pipeline, got {found!r}",
    )


def load_spec(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    kind: Kind | str | None = None,
    params: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> Spec:
    """Parse and validate a spec file (YAML or JSON) or mapping.

    `kind` (a Kind or the CLI word) makes a manifest of another kind an error instead of a surprise;
    `params` fill `${params.NAME}` in experiments and training jobs, and override a pipeline
    run's parameters. Relative paths resolve against `base_dir`: the file's folder by default.
    """
    from shared.params import check_params
    from shared.specs.documents import check_values

    check_params(params, "params")
    path = None
    if isinstance(source, Mapping):
        check_values(source)  # what a file gets in load_document: depth, size, no NUL byte
        manifest = dict(source)
    else:
        path = os.fspath(source)
        base_dir = base_dir or os.path.dirname(os.path.abspath(path))
        docs = [] if kfp_package.is_archive(path) else common.load_documents(path)
        if kfp_package.is_archive(path) or any(is_compiled_pipeline(d) for d in docs if isinstance(d, Mapping)):
            _check_kind(kind, Kind.PIPELINE, "a compiled KFP pipeline")
            return parse_compiled_pipeline(path, base_dir, params=params)
        manifest = common.single_document(docs, path)
    found = infer_kind(manifest)
    shown = "a compiled KFP pipeline" if is_compiled_pipeline(manifest) else repr(manifest.get("kind"))
    _check_kind(kind, found, shown)
    if found is Kind.TRAINING_JOB:
        return parse_training_job(manifest, base_dir, params=params)
    if found is Kind.EXPERIMENT:
        return parse_experiment(manifest, base_dir, params=params)
    return parse_pipeline_run(manifest, base_dir, params=params, source=path)


def _check_kind(kind: Kind | str | None, found: Kind, shown: str) -> None:
    """`kind` (when given) must be what the manifest is."""
    if kind is None:
        return
    try:
        wanted = Kind(kind)
    except ValueError:
        raise SpecError("kind", f"expected one of {', '.join(k.value for k in Kind)}, got {kind!r}") from None
    if wanted is not found:
        raise SpecError("kind", f"expected {_EXPECTED[wanted]} for {wanted.value!r}, got {shown}")


def require_resource(spec: Spec, resource: str | None, task: str) -> Spec:
    """For a task type made for one resource (a PyTorchJob operator, a TFJob task): the manifest must be one."""
    found = getattr(spec, "resource", None)
    if resource and found != resource:
        raise SpecError("kind", f"{task} needs a {resource} manifest, got {found!r}")
    return spec
