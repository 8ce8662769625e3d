"""The custom resources we create: the user's manifest with our name, markers and MLflow hand-off.

The spec layer has already validated and defaulted `spec.manifest` like the API server and the
webhooks would, so this module only rewrites what the backend owns: the object's name and
namespace, the idempotency label and annotations, and the environment of the work's containers.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import naming
from shared.specs.model import ExperimentSpec, TrainingJobSpec
from shared.status import Kind


@dataclass(frozen=True)
class Resource:
    """Where a kind of custom resource lives in the API."""

    kind: str
    group: str
    version: str
    plural: str
    work: Kind

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


RESOURCES = {
    "PyTorchJob": Resource("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", Kind.TRAINING_JOB),
    "TFJob": Resource("TFJob", "kubeflow.org", "v1", "tfjobs", Kind.TRAINING_JOB),
    "Experiment": Resource("Experiment", "kubeflow.org", "v1beta1", "experiments", Kind.EXPERIMENT),
}
BY_PLURAL = {r.plural: r for r in RESOURCES.values()}
FOR_KIND = {
    Kind.TRAINING_JOB: (RESOURCES["PyTorchJob"], RESOURCES["TFJob"]),
    Kind.EXPERIMENT: (RESOURCES["Experiment"],),
}
_ANNOTATION_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def resource_of(spec: TrainingJobSpec | ExperimentSpec) -> Resource:
    return RESOURCES[spec.resource if isinstance(spec, TrainingJobSpec) else "Experiment"]


def build(
    spec: TrainingJobSpec | ExperimentSpec, key: str, attempt: int, namespace: str, context: SubmitContext
) -> dict[str, Any]:
    """The object to create for (key, attempt)."""
    resource = resource_of(spec)
    body = copy.deepcopy(dict(spec.manifest))
    body["apiVersion"], body["kind"] = resource.api_version, resource.kind
    metadata = body.setdefault("metadata", {})
    metadata["name"] = naming.object_name(spec.name, key, attempt, naming.MAX_NAME[resource.kind])
    metadata["namespace"] = namespace
    metadata.pop("generateName", None)
    metadata.setdefault("labels", {})[naming.KEY_HASH_LABEL] = naming.key_hash(key)
    annotations = metadata.setdefault("annotations", {})
    for name, value in context.labels.items():  # the scheduler's identity, for people reading the object
        annotations[f"{naming.DOMAIN}/{_ANNOTATION_NAME.sub('-', str(name))[:63]}"] = str(value)
    annotations[naming.KEY_ANNOTATION] = key
    annotations[naming.ATTEMPT_ANNOTATION] = str(attempt)
    annotations[naming.SPEC_NAME_ANNOTATION] = spec.name
    if context.deadline is not None:
        mirror_deadline(body, spec, context.deadline)
    if context.fingerprint:
        annotations[FINGERPRINT_ANNOTATION] = context.fingerprint
    secret_refs = credential_refs(context)
    if context.env or secret_refs:
        if isinstance(spec, TrainingJobSpec):
            for container in _job_containers(body, spec):
                _set_env(container, context.env, secret_refs)
        else:
            trial_env = trial_handoff_env(context)
            primary = spec.trial_template.primary_container_name
            trial_spec = body["spec"]["trialTemplate"].get("trialSpec") or {}
            for container in _containers(trial_spec):
                if primary is None or container.get("name") == primary:
                    _set_env(container, trial_env, secret_refs)
    return body


def mirror_deadline(body: dict[str, Any], spec: TrainingJobSpec | ExperimentSpec, deadline: float) -> None:
    """The task's deadline on the server too, so work orphaned by a dead client still ends.

    Training jobs get `runPolicy.activeDeadlineSeconds`, Katib trials the deadline of their kind
    (a Job's `spec.activeDeadlineSeconds`, a training job's `runPolicy`); never larger than the
    user's own. The operator counts from the job's start, so it is the remaining time at submit."""
    remaining = max(1, math.ceil(deadline - time.time()))
    if isinstance(spec, TrainingJobSpec):
        _cap(body["spec"].setdefault("runPolicy", {}), remaining)
        return
    trial = body["spec"].get("trialTemplate", {}).get("trialSpec")
    if not isinstance(trial, dict) or not isinstance(trial.get("spec"), dict):
        return  # a configMap template: nothing of ours to set
    if trial.get("kind") == "Job" and str(trial.get("apiVersion", "")).startswith("batch/"):
        _cap(trial["spec"], remaining)
    elif trial.get("kind") in RESOURCES and trial.get("kind") != "Experiment":
        _cap(trial["spec"].setdefault("runPolicy", {}), remaining)


def _cap(holder: dict[str, Any], seconds: int) -> None:
    own = holder.get("activeDeadlineSeconds")
    holder["activeDeadlineSeconds"] = min(int(own), seconds) if isinstance(own, int) and own > 0 else seconds


FINGERPRINT_ANNOTATION = f"{naming.DOMAIN}/spec-fingerprint"


def credential_refs(context: SubmitContext) -> list[dict[str, Any]]:
    """MLflow credentials as references to the user's Secret: never their values in the object.

    Why: a custom resource is readable by anyone who may list jobs in the namespace, and its spec is
    kept in etcd and in audit logs. A tracking URI with user:password is refused here unless a
    Secret is named (`--mlflow-credentials-secret`, the connection's field), whose keys
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN are optional.
    """
    from shared.backends.kubernetes.ids import check_object_name
    from shared.errors import SpecError
    from shared.secrets import CREDENTIAL_VARS

    if not context.credentials_secret:
        if context.secret_env:
            raise SpecError(
                "--mlflow-credentials-secret",
                "the MLflow tracking URI holds credentials; on the kubernetes backend the work reads them "
                "from a Secret (keys MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD): name it here",
            )
        return []
    secret = check_object_name(context.credentials_secret)
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name, "optional": True}}}
        for name in CREDENTIAL_VARS
    ]


def trial_handoff_env(context: SubmitContext) -> dict[str, str]:
    """What a Katib trial needs to open its own run nested under ours (reference §5).

    Trials are created by Katib, not by us, so they cannot be handed a run id: each trial's
    `mlflow.start_run()` creates a new run, and MLFLOW_RUN_CONTEXT tags it with our parent run.
    """
    env = {k: v for k, v in context.env.items() if k != "MLFLOW_RUN_ID"}
    parent = context.mlflow.get("run_id") or context.env.get("MLFLOW_RUN_ID")
    if parent:
        env["MLFLOW_RUN_CONTEXT"] = json.dumps({"mlflow.parentRunId": parent})
    return env


def _job_containers(body: Mapping[str, Any], spec: TrainingJobSpec) -> Iterator[dict[str, Any]]:
    replica_key = "pytorchReplicaSpecs" if spec.resource == "PyTorchJob" else "tfReplicaSpecs"
    for replica in body["spec"][replica_key].values():
        yield from replica["template"]["spec"]["containers"]


def _containers(tree: Any) -> Iterator[dict[str, Any]]:
    """Every container of a trial's object, whatever its kind (Job, PyTorchJob, TFJob, ...)."""
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            if name in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _containers(value)


def _set_env(
    container: dict[str, Any], env: Mapping[str, str], refs: list[dict[str, Any]] | None = None
) -> None:
    """Our variables replace same-named entries (the hand-off must win), others are kept in order."""
    refs = refs or []
    ours = set(env) | {r["name"] for r in refs}
    kept = [e for e in container.get("env") or [] if e.get("name") not in ours]
    container["env"] = kept + [{"name": k, "value": str(v)} for k, v in env.items()] + [dict(r) for r in refs]
