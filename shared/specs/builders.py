"""Specs from Python arguments, for DAG authors who have no manifest.

Each builder writes the upstream manifest a user would have written and sends it through the
same parser, so a built spec is validated exactly like a loaded one and the Kubernetes backend
can submit its manifest unchanged.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import SpecError
from shared.specs.experiment import parse_experiment
from shared.specs.model import ExperimentSpec, PipelineRunSpec, TrainingJobSpec
from shared.specs.pipeline import parse_pipeline_run
from shared.specs.training import parse_training_job

DEFAULT_IMAGE = "python:3.11-slim"
_TRIAL_PARAM_RE = re.compile(r"\$\{trialParameters\.([^}]*)\}")


def _command(command: str | Sequence[str]) -> list[str]:
    """A string is split like a shell would, so `"python train.py --lr 0.1"` works too."""
    return shlex.split(command) if isinstance(command, str) else list(command)


def _container(
    name: str, command: str | Sequence[str], image: str, env: Mapping[str, str] | None
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "command": _command(command)}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return container


def _metadata(name: str, namespace: str | None) -> dict[str, str]:
    return {"name": name, **({"namespace": namespace} if namespace else {})}


def _run_policy(backoff_limit: int | None, active_deadline_seconds: int | None) -> dict[str, int]:
    policy = {"backoffLimit": backoff_limit, "activeDeadlineSeconds": active_deadline_seconds}
    return {k: v for k, v in policy.items() if v is not None}


def _replica(count: int, restart_policy: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "replicas": count,
        "restartPolicy": restart_policy,
        "template": {"spec": {"containers": [container]}},
    }


def pytorch_job(
    name: str,
    command: str | Sequence[str],
    *,
    workers: int = 1,
    image: str = DEFAULT_IMAGE,
    env: Mapping[str, str] | None = None,
    namespace: str | None = None,
    restart_policy: str = "OnFailure",
    backoff_limit: int | None = None,
    active_deadline_seconds: int | None = None,
    base_dir: str | None = None,
) -> TrainingJobSpec:
    """A PyTorchJob with one Master and `workers` Workers, all running `command`."""
    container = _container("pytorch", command, image, env)
    replicas = {"Master": _replica(1, restart_policy, container)}
    if workers:
        replicas["Worker"] = _replica(workers, restart_policy, container)
    spec: dict[str, Any] = {"pytorchReplicaSpecs": replicas}
    if run_policy := _run_policy(backoff_limit, active_deadline_seconds):
        spec["runPolicy"] = run_policy
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(name, namespace),
        "spec": spec,
    }
    return parse_training_job(manifest, base_dir)


def tf_job(
    name: str,
    command: str | Sequence[str],
    *,
    chief: bool = True,
    workers: int = 1,
    ps: int = 0,
    image: str = DEFAULT_IMAGE,
    env: Mapping[str, str] | None = None,
    namespace: str | None = None,
    restart_policy: str = "Never",
    backoff_limit: int | None = None,
    active_deadline_seconds: int | None = None,
    base_dir: str | None = None,
) -> TrainingJobSpec:
    """A TFJob with an optional Chief, `workers` Workers and `ps` parameter servers."""
    container = _container("tensorflow", command, image, env)
    replicas: dict[str, Any] = {}
    for rtype, count in (("Chief", int(chief)), ("Worker", workers), ("PS", ps)):
        if count:
            replicas[rtype] = _replica(count, restart_policy, container)
    spec: dict[str, Any] = {"tfReplicaSpecs": replicas}
    if run_policy := _run_policy(backoff_limit, active_deadline_seconds):
        spec["runPolicy"] = run_policy
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": _metadata(name, namespace),
        "spec": spec,
    }
    return parse_training_job(manifest, base_dir)


def pipeline_run(
    pipeline: str,
    *,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    namespace: str | None = None,
    enable_caching: bool | None = None,
    base_dir: str | None = None,
) -> PipelineRunSpec:
    """A run of `package.module:function` or of a compiled pipeline file.

    Without a name, the run is named after the function or the file.
    """
    default = (
        pipeline.rsplit(":", 1)[-1]
        if ":" in pipeline
        else re.sub(r"\.(ya?ml|json)$", "", pipeline.split("/")[-1])
    )
    spec: dict[str, Any] = {"pipeline": pipeline, "parameters": dict(parameters or {})}
    if experiment is not None:
        spec["experiment"] = experiment
    if enable_caching is not None:
        spec["enableCaching"] = enable_caching
    manifest = {
        "apiVersion": "kubeflow-tasks/v1",
        "kind": "PipelineRun",
        "metadata": _metadata(name or default, namespace),
        "spec": spec,
    }
    return parse_pipeline_run(manifest, base_dir)


def uploaded_pipeline_manifest(
    pipeline_name: str,
    *,
    version: str | None = None,
    name: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The PipelineRun document of a run of a pipeline uploaded to KFP, by name and version (None:
    the newest), as `kfp run submit --pipeline-name` runs it. The CLI, the Airflow operator and the
    DolphinScheduler task all build this document; the Kubernetes backend looks the version up."""
    spec: dict[str, Any] = {"pipelineName": pipeline_name, "parameters": dict(parameters or {})}
    if version is not None:
        spec["pipelineVersion"] = version
    if experiment is not None:
        spec["experiment"] = experiment
    return {
        "apiVersion": "kubeflow-tasks/v1",
        "kind": "PipelineRun",
        "metadata": _metadata(name or pipeline_name, namespace),
        "spec": spec,
    }


def uploaded_pipeline_run(pipeline_name: str, **kwargs: Any) -> PipelineRunSpec:
    """`uploaded_pipeline_manifest`, parsed and validated."""
    return parse_pipeline_run(uploaded_pipeline_manifest(pipeline_name, **kwargs))


def _search_parameter(name: str, value: Any) -> dict[str, Any]:
    """("double", 0.001, 0.1[, step]) | ("int", 10, 200[, step]) | ("categorical"|"discrete", [values])."""
    where = f"parameters.{name}"
    if not isinstance(value, tuple | list) or not value:
        raise SpecError(
            where, f"must be a tuple like ('double', 0.001, 0.1) or ('categorical', [...]), got {value!r}"
        )
    ptype, *rest = value
    if ptype in ("double", "int") and len(rest) in (2, 3):
        space = dict(zip(("min", "max", "step"), (str(v) for v in rest), strict=False))
    elif ptype in ("categorical", "discrete") and len(rest) == 1 and isinstance(rest[0], list | tuple):
        space = {"list": [str(v) for v in rest[0]]}
    else:
        raise SpecError(where, f"expected (type, min, max[, step]) or (type, [values]), got {value!r}")
    return {"name": name, "parameterType": ptype, "feasibleSpace": space}


def katib_experiment(
    name: str,
    *,
    objective_metric: str,
    parameters: Mapping[str, tuple[Any, ...] | list[Any]],
    trial_command: str | Sequence[str],
    objective_type: str = "minimize",
    goal: float | None = None,
    additional_metrics: Sequence[str] = (),
    algorithm: str = "random",
    algorithm_settings: Mapping[str, Any] | None = None,
    max_trial_count: int = 10,
    parallel_trial_count: int = 3,
    max_failed_trial_count: int = 3,
    image: str = DEFAULT_IMAGE,
    env: Mapping[str, str] | None = None,
    namespace: str | None = None,
    base_dir: str | None = None,
) -> ExperimentSpec:
    """A Katib Experiment whose trials are batch/v1 Jobs running `trial_command`.

    The command refers to parameters as `${trialParameters.<name>}`; each one it uses is declared
    as a trial parameter referring to the search-space parameter of the same name.
    """
    command = _command(trial_command)
    used = list(dict.fromkeys(n for part in command for n in _TRIAL_PARAM_RE.findall(part)))
    objective: dict[str, Any] = {"type": objective_type, "objectiveMetricName": objective_metric}
    if goal is not None:
        objective["goal"] = goal
    if additional_metrics:
        objective["additionalMetricNames"] = list(additional_metrics)
    algo: dict[str, Any] = {"algorithmName": algorithm}
    if algorithm_settings:
        algo["algorithmSettings"] = [{"name": k, "value": str(v)} for k, v in algorithm_settings.items()]
    trial_spec = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [_container("training", command, image, env)],
                }
            }
        },
    }
    manifest = {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": _metadata(name, namespace),
        "spec": {
            "objective": objective,
            "algorithm": algo,
            "parallelTrialCount": parallel_trial_count,
            "maxTrialCount": max_trial_count,
            "maxFailedTrialCount": max_failed_trial_count,
            "parameters": [_search_parameter(k, v) for k, v in parameters.items()],
            "trialTemplate": {
                "primaryContainerName": "training",
                "trialParameters": [{"name": n, "reference": n} for n in used],
                "trialSpec": trial_spec,
            },
        },
    }
    return parse_experiment(manifest, base_dir)
