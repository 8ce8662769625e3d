"""The Kubernetes core/v1 fields a training job's pod template may hold, for strict field validation.

The training operators' CRDs embed the whole PodTemplateSpec in their structural schema, so
`kubectl apply` (strict field validation, its default) refuses a misspelt field anywhere in it,
e.g. `spec.pytorchReplicaSpecs.Master.template.spec.containers[0].imagee`. These are the field
names of that schema (training-operator v1.9 CRDs, Kubernetes 1.33 core types); a test checks them
against the CRDs in `../shared/specs`. Katib's validator does the same for a batch/v1 Job trial
(it converts the trial spec to a Job and refuses what does not convert), hence `check_job`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c

JOB = ("apiVersion", "kind", "metadata", "spec")
JOB_SPEC = (
    "activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex", "completionMode", "completions",
    "managedBy", "manualSelector", "maxFailedIndexes", "parallelism", "podFailurePolicy",
    "podReplacementPolicy", "selector", "successPolicy", "suspend", "template", "ttlSecondsAfterFinished",
)  # fmt: skip
TEMPLATE = ("metadata", "spec")
POD_SPEC = (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig",
    "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork",
    "hostPID", "hostUsers", "hostname", "hostnameOverride", "imagePullSecrets", "initContainers",
    "nodeName", "nodeSelector", "os", "overhead", "preemptionPolicy", "priority", "priorityClassName",
    "readinessGates", "resourceClaims", "resources", "restartPolicy", "runtimeClassName",
    "schedulerName", "schedulingGates", "schedulingGroup", "securityContext", "serviceAccount",
    "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
    "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes",
)  # fmt: skip
CONTAINER = (
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
    "name", "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy",
    "restartPolicyRules", "securityContext", "startupProbe", "stdin", "stdinOnce",
    "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts",
    "workingDir",
)  # fmt: skip
ENV_VAR = ("name", "value", "valueFrom")
PORT = ("containerPort", "hostIP", "hostPort", "name", "protocol")
RESOURCES = ("claims", "limits", "requests")
VOLUME_MOUNT = ("mountPath", "mountPropagation", "name", "readOnly", "recursiveReadOnly", "subPath", "subPathExpr")


def check_job(job: Mapping[str, Any], path: str) -> None:
    """A batch/v1 Job trial: Katib's validator converts it to a Job and refuses what does not convert."""
    _known(job, JOB, path, "a Job")
    spec = job.get("spec")
    if isinstance(spec, Mapping):
        _known(spec, JOB_SPEC, c.join(path, "spec"), "a JobSpec")
        check_pod_template(spec.get("template"), c.join(c.join(path, "spec"), "template"))


def check_pod_template(template: Any, path: str) -> None:
    """Refuse an unknown field in a pod template, its pod spec and its containers, naming it."""
    if not isinstance(template, Mapping):
        return  # the type error is the readers' to report
    _known(template, TEMPLATE, path, "a pod template")
    pod = template.get("spec")
    if not isinstance(pod, Mapping):
        return
    ppath = c.join(path, "spec")
    _known(pod, POD_SPEC, ppath, "a PodSpec")
    for key in ("containers", "initContainers"):
        for i, container in enumerate(pod.get(key) or []):
            if isinstance(container, Mapping):
                _container(container, c.join(c.join(ppath, key), i))


def _container(container: Mapping[str, Any], path: str) -> None:
    _known(container, CONTAINER, path, "a Container")
    for key, fields, what in (("env", ENV_VAR, "an EnvVar"), ("ports", PORT, "a ContainerPort"),
                              ("volumeMounts", VOLUME_MOUNT, "a VolumeMount")):  # fmt: skip
        entries = container.get(key)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, Mapping):
                _known(entry, fields, c.join(c.join(path, key), i), what)
    resources = container.get("resources")
    if isinstance(resources, Mapping):
        _known(resources, RESOURCES, c.join(path, "resources"), "ResourceRequirements")


def _known(obj: Mapping[str, Any], fields: Iterable[str], path: str, what: str) -> None:
    allowed = tuple(fields)
    for key in obj:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"{what} has: {c.names(allowed)}"
            raise SpecError(c.join(path, str(key)), f"unknown field (kubectl's strict field validation refuses it); {hint}")
