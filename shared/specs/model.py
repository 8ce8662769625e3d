"""The spec dataclasses: what to run, independent of where it runs.

Each spec keeps the upstream manifest it came from (`manifest`, after defaults and parameter
substitution), because the Kubernetes backend submits exactly that object; the typed fields are
what the local backend and the operations read. `base_dir` is where relative paths in commands
resolve when the work runs locally (the spec file's folder, else the current directory).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.status import Kind

# ---------------------------------------------------------------- training jobs (kubeflow.org/v1)


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # only literal `value` entries; valueFrom is kept in the manifest
    working_dir: str | None = None


@dataclass(frozen=True)
class ReplicaSpec:
    type: str  # Master, Worker (PyTorchJob); Chief, Master, PS, Worker, Evaluator (TFJob)
    replicas: int
    restart_policy: str  # Always, OnFailure, Never, ExitCode
    container: ContainerSpec  # the container named `pytorch` / `tensorflow`
    port: int  # the framework port of the primary container (23456 / 2222 unless declared)


@dataclass(frozen=True)
class RunPolicy:
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    clean_pod_policy: str | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False


@dataclass(frozen=True)
class TrainingJobSpec:
    resource: str  # "PyTorchJob" or "TFJob"
    name: str
    namespace: str | None
    replicas: tuple[ReplicaSpec, ...]  # Master/Chief first, then the others in manifest order
    run_policy: RunPolicy
    manifest: Mapping[str, Any]
    base_dir: str
    nproc_per_node: str | None = None  # PyTorchJob only
    success_policy: str = ""  # TFJob only: "" or "AllWorkers"
    kind: Kind = field(default=Kind.TRAINING_JOB, init=False)

    def replica(self, type_: str) -> ReplicaSpec | None:
        return next((r for r in self.replicas if r.type == type_), None)


# ---------------------------------------------------------------- Katib experiments (kubeflow.org/v1beta1)


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    parameter_type: str  # double, int, discrete, categorical
    min: str | None = None
    max: str | None = None
    list: tuple[str, ...] = ()
    step: str | None = None
    distribution: str | None = None  # uniform, logUniform, normal, logNormal


@dataclass(frozen=True)
class ObjectiveSpec:
    type: str  # minimize | maximize
    objective_metric_name: str
    goal: float | None = None
    additional_metric_names: tuple[str, ...] = ()
    metric_strategies: tuple[
        tuple[str, str], ...
    ] = ()  # (metric name, min|max|latest), filled for every metric


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    settings: tuple[tuple[str, str], ...] = ()

    def setting(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.settings if k == name), default)


@dataclass(frozen=True)
class TrialParameterSpec:
    name: str
    reference: str
    description: str = ""


@dataclass(frozen=True)
class TrialTemplateSpec:
    trial_parameters: tuple[TrialParameterSpec, ...]
    trial_spec: Mapping[str, Any]  # the Kubernetes object a trial creates (Job, PyTorchJob, TFJob ...)
    primary_container_name: str | None
    success_condition: str
    failure_condition: str
    retain: bool = False
    config_map: Mapping[str, str] | None = None  # configMapName/Namespace/templatePath: the cluster reads it


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    namespace: str | None
    objective: ObjectiveSpec
    algorithm: AlgorithmSpec
    parameters: tuple[ParameterSpec, ...]
    trial_template: TrialTemplateSpec
    manifest: Mapping[str, Any]
    base_dir: str
    parallel_trial_count: int = 3
    max_trial_count: int | None = None
    max_failed_trial_count: int | None = None
    early_stopping: AlgorithmSpec | None = None
    metrics_format: tuple[str, ...] = ()  # regexes from metricsCollectorSpec.source.filter.metricsFormat
    metrics_collector: str = "StdOut"  # metricsCollectorSpec.collector.kind
    resume_policy: str = "Never"
    kind: Kind = field(default=Kind.EXPERIMENT, init=False)


# ---------------------------------------------------------------- KFP runs (v2beta1)


@dataclass(frozen=True)
class PipelineRunSpec:
    """A KFP run. `pipeline` is `module:function` or a path to a compiled pipeline YAML; or, with
    `pipeline` empty, `pipeline_name` names a pipeline uploaded to the KFP server and
    `pipeline_version` one of its versions (None: the newest), as `kfp run submit --pipeline-name`."""

    name: str
    pipeline: str
    base_dir: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    experiment: str | None = None
    namespace: str | None = None
    enable_caching: bool | None = None
    service_account: str | None = None
    pipeline_root: str | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)
    pipeline_name: str | None = None
    pipeline_version: str | None = None
    kind: Kind = field(default=Kind.PIPELINE, init=False)


Spec = TrainingJobSpec | ExperimentSpec | PipelineRunSpec
