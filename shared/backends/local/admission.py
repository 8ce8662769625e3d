"""What the local backend can run, decided at submit, before a run directory exists.

The spec layer accepts what the cluster accepts; some of that needs the cluster (a Katib
suggestion service with a volume, a ConfigMap, a Secret, an image's entrypoint). Each refusal is
one `SpecError` naming the field, saying what is missing here and that the cluster runs it.
Settings without effect on this machine (where a pod is scheduled, its labels) are not refused:
`ignored_kfp_settings` lists them so the run's log can say once that they were ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs.model import ExperimentSpec, PipelineRunSpec, Spec, TrainingJobSpec

CLUSTER = "the Kubernetes backend runs it"
LOCAL_COLLECTORS = ("StdOut", "File", "TensorFlowEvent")
LOCAL_TRIAL_KINDS = ("Job", "PyTorchJob", "TFJob")
# kfp-kubernetes settings (KubernetesExecutorConfig): those the work depends on, those that only
# place or label a pod.
KFP_NEEDS_CLUSTER = {
    "secretAsEnv": "a Secret as environment variables",
    "secretAsVolume": "a Secret as a volume",
    "configMapAsEnv": "a ConfigMap as environment variables",
    "configMapAsVolume": "a ConfigMap as a volume",
    "pvcMount": "a PersistentVolumeClaim mount",
    "genericEphemeralVolume": "an ephemeral volume",
    "emptyDirMounts": "an emptyDir mount",
    "fieldPathAsEnv": "pod fields as environment variables",
    "initContainers": "init containers",
}
KFP_NO_EFFECT = (
    "nodeSelector",
    "tolerations",
    "nodeAffinity",
    "podAffinity",
    "podMetadata",
    "imagePullSecret",
    "imagePullPolicy",
    "activeDeadlineSeconds",
    "enabledSharedMemory",
    "securityContext",
)


def check_runnable(spec: Spec) -> None:
    """Raise SpecError when this spec cannot run on this machine (the cluster would run it)."""
    if isinstance(spec, ExperimentSpec):
        _experiment(spec)
    elif isinstance(spec, TrainingJobSpec):
        _training_job_manifest(spec.manifest, "")
    elif isinstance(spec, PipelineRunSpec):
        _pipeline(spec)


# ---------------------------------------------------------------- Katib experiments


def _experiment(spec: ExperimentSpec) -> None:
    raw = spec.manifest.get("spec") or {}
    if raw.get("nasConfig") is not None or spec.algorithm.name in ("enas", "darts"):
        raise SpecError(
            "spec.nasConfig",
            f"neural architecture search ({spec.algorithm.name}) does not run locally "
            f"(no Katib NAS suggestion service here); {CLUSTER}",
        )
    if spec.algorithm.name == "pbt":
        raise SpecError(
            "spec.algorithm.algorithmName",
            f"population based training does not run locally (it needs Katib's checkpoint volume); {CLUSTER}",
        )
    template = spec.trial_template
    if template.config_map is not None:
        raise SpecError(
            "spec.trialTemplate.configMap",
            f"a trial template in a ConfigMap cannot be read locally (inline it as trialSpec); {CLUSTER}",
        )
    if spec.metrics_collector not in LOCAL_COLLECTORS:
        raise SpecError(
            "spec.metricsCollectorSpec.collector.kind",
            f"the {spec.metrics_collector} collector does not run locally "
            f"(local trials report with {', '.join(LOCAL_COLLECTORS)}); {CLUSTER}",
        )
    kind = template.trial_spec.get("kind")
    tpath = "spec.trialTemplate.trialSpec"
    if kind not in LOCAL_TRIAL_KINDS:
        raise SpecError(
            f"{tpath}.kind", f"a {kind} trial does not run locally (local trials: {', '.join(LOCAL_TRIAL_KINDS)}); {CLUSTER}"
        )
    if kind == "Job":
        pod = ((template.trial_spec.get("spec") or {}).get("template") or {}).get("spec") or {}
        for i, container in enumerate(pod.get("containers") or []):
            if container.get("name") == template.primary_container_name:
                _command(container, f"{tpath}.spec.template.spec.containers[{i}]")
    else:
        _training_job_manifest(template.trial_spec, tpath)


# ---------------------------------------------------------------- training jobs


def _training_job_manifest(manifest: Mapping[str, Any], path: str) -> None:
    """Every replica's containers must say what to run: there is no image entrypoint here."""
    spec = manifest.get("spec") or {}
    for key in ("pytorchReplicaSpecs", "tfReplicaSpecs"):
        for rtype, replica in (spec.get(key) or {}).items():
            pod = ((replica or {}).get("template") or {}).get("spec") or {}
            for i, container in enumerate(pod.get("containers") or []):
                where = f"spec.{key}.{rtype}.template.spec.containers[{i}]"
                _command(container, f"{path}.{where}" if path else where)


def _command(container: Mapping[str, Any], path: str) -> None:
    if container.get("command"):
        return
    what = "only args" if container.get("args") else "no command"
    raise SpecError(
        f"{path}.command",
        f"container {container.get('name')!r} gives {what}: locally there is no image entrypoint "
        f"to run, so give the command; {CLUSTER}",
    )


# ---------------------------------------------------------------- KFP pipelines


def _pipeline(spec: PipelineRunSpec) -> None:
    """A compiled pipeline's kfp-kubernetes settings; a `module:function` is checked when compiled."""
    from shared.specs.kfp_package import read_package

    if spec.pipeline_name:
        raise SpecError(
            "spec.pipelineName",
            "the local backend has no pipeline registry to look an uploaded pipeline up in: give spec.pipeline "
            "(a compiled file or module:function), or use the Kubernetes backend",
        )
    if not os.path.isfile(spec.pipeline):
        return
    check_kfp_platform(read_package(spec.pipeline).platform_spec)


def check_kfp_platform(platform_spec: Mapping[str, Any] | None) -> list[str]:
    """Refuse settings the work depends on; return the ignored ones as `exec-x: nodeSelector` lines."""
    kubernetes = ((platform_spec or {}).get("platforms") or {}).get("kubernetes") or {}
    base = "platforms.kubernetes"
    config = kubernetes.get("pipelineConfig") or {}
    if config.get("workspace"):
        raise SpecError(f"{base}.pipelineConfig.workspace", f"a pipeline workspace is a PVC, not available locally; {CLUSTER}")
    ignored = []
    executors = (kubernetes.get("deploymentSpec") or {}).get("executors") or {}
    for label, settings in executors.items():
        for key in settings or {}:
            where = f"{base}.deploymentSpec.executors.{label}.{key}"
            if key in KFP_NEEDS_CLUSTER:
                raise SpecError(where, f"{KFP_NEEDS_CLUSTER[key]} is not available locally; {CLUSTER}")
            if key not in KFP_NO_EFFECT:
                raise SpecError(where, f"a kfp-kubernetes setting unknown to the local backend; {CLUSTER}")
            ignored.append(f"{label}: {key}")
    return ignored
