"""PyTorchJob and TFJob manifests (kubeflow.org/v1), validated like the CRD schema and the
training-operator v1.9 webhooks, then defaulted like its defaulter (replicas 1, restartPolicy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c
from shared.specs.model import ContainerSpec, ReplicaSpec, RunPolicy, TrainingJobSpec

API_VERSION = "kubeflow.org/v1"
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")


@dataclass(frozen=True)
class _Framework:
    """What differs between the two job kinds."""

    replica_key: str
    replica_types: tuple[str, ...]
    container: str
    port_name: str
    default_port: int
    default_restart: str
    spec_fields: tuple[str, ...]


FRAMEWORKS = {
    "PyTorchJob": _Framework(
        "pytorchReplicaSpecs",
        ("Master", "Worker"),
        "pytorch",
        "pytorchjob-port",
        23456,
        "OnFailure",
        ("pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "nprocPerNode"),
    ),
    "TFJob": _Framework(
        "tfReplicaSpecs",
        ("Chief", "Master", "PS", "Worker", "Evaluator"),
        "tensorflow",
        "tfjob-port",
        2222,
        "Never",
        ("tfReplicaSpecs", "runPolicy", "successPolicy", "enableDynamicWorker"),
    ),
}
_LEADERS = ("Master", "Chief")
_RUN_POLICY_FIELDS = (
    "activeDeadlineSeconds",
    "backoffLimit",
    "cleanPodPolicy",
    "managedBy",
    "schedulingPolicy",
    "suspend",
    "ttlSecondsAfterFinished",
)
_ELASTIC_FIELDS = (
    "minReplicas",
    "maxReplicas",
    "rdzvBackend",
    "rdzvPort",
    "rdzvHost",
    "rdzvId",
    "rdzvConf",
    "standalone",
    "nProcPerNode",
    "maxRestarts",
    "metrics",
)


def parse_training_job(
    manifest: Mapping[str, Any], base_dir: str | None = None, *, params: Mapping[str, str] | None = None
) -> TrainingJobSpec:
    """A PyTorchJob/TFJob manifest as a user would `kubectl apply` it -> TrainingJobSpec."""
    doc = c.substitute_params(manifest, params)  # a fresh tree: defaults are written into it
    resource = c.header(doc, API_VERSION, FRAMEWORKS)
    fw = FRAMEWORKS[resource]
    name, namespace = c.metadata(doc)
    c.check_name(name, "metadata.name", max_len=63, rule="a DNS-1035 label")
    spec = c.mapping(doc, "spec", "", required=True)
    assert spec is not None
    c.reject_unknown(spec, fw.spec_fields, "spec", f"a {resource} spec")

    specs_path = c.join("spec", fw.replica_key)
    raw = c.mapping(spec, fw.replica_key, "spec", required=True)
    assert raw is not None
    if not raw:
        raise SpecError(specs_path, f"must declare at least one replica type ({', '.join(fw.replica_types)})")
    replicas = [_replica(str(key), value, c.join(specs_path, str(key)), fw) for key, value in raw.items()]
    replicas.sort(key=lambda r: r.type not in _LEADERS)  # stable: the leader first, then manifest order
    leaders = [r.type for r in replicas if r.type in _LEADERS]
    if len(leaders) > 1:
        raise SpecError(specs_path, f"at most one Chief or Master replica type, got {' and '.join(leaders)}")

    nproc = success = None
    if resource == "PyTorchJob":
        nproc = _nproc_per_node(spec)
        _elastic_policy(spec, raw)
    else:
        success = c.string(spec, "successPolicy", "spec", default="", choices=("", "AllWorkers"))
        c.boolean(spec, "enableDynamicWorker", "spec")

    result = _defaulted(doc, fw, replicas)
    return TrainingJobSpec(
        resource=resource,
        name=name,
        namespace=namespace,
        replicas=tuple(replicas),
        run_policy=_run_policy(spec),
        manifest=result,
        base_dir=c.resolve_base_dir(base_dir),
        nproc_per_node=nproc,
        success_policy=success or "",
    )


def _replica(rtype: str, value: Any, path: str, fw: _Framework) -> ReplicaSpec:
    if rtype not in fw.replica_types:
        raise SpecError(
            path, f"unknown replica type {rtype!r}; expected one of {', '.join(fw.replica_types)}"
        )
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {c.type_name(value)}")
    c.reject_unknown(value, ("replicas", "template", "restartPolicy"), path, "a replica spec")
    count = c.integer(value, "replicas", path, default=1, minimum=0)
    assert count is not None
    if rtype == "Master" and fw.replica_key == "pytorchReplicaSpecs" and count != 1:
        raise SpecError(c.join(path, "replicas"), f"must be 1 for a PyTorchJob Master, got {count}")
    if rtype in _LEADERS and count > 1:
        raise SpecError(c.join(path, "replicas"), f"a {rtype} has at most 1 replica, got {count}")
    if rtype == "Worker" and count < 1:
        raise SpecError(
            c.join(path, "replicas"), "must be at least 1 for Worker (drop the Worker entry instead)"
        )
    restart = c.string(value, "restartPolicy", path, default=fw.default_restart, choices=RESTART_POLICIES)
    container, port = _primary_container(value, path, fw)
    return ReplicaSpec(type=rtype, replicas=count, restart_policy=restart, container=container, port=port)


def _primary_container(replica: Mapping[str, Any], path: str, fw: _Framework) -> tuple[ContainerSpec, int]:
    template = c.mapping(replica, "template", path, required=True)
    tpath = c.join(path, "template")
    pod = c.mapping(template, "spec", tpath, required=True)
    pod_path = c.join(tpath, "spec")
    containers = c.items(pod, "containers", pod_path, required=True)
    cpath = c.join(pod_path, "containers")
    if not containers:
        raise SpecError(cpath, "must list at least one container")
    parsed = [_container(raw, c.join(cpath, i)) for i, raw in enumerate(containers)]
    for i, (spec, raw) in enumerate(zip(parsed, containers, strict=True)):
        if spec.name == fw.container:
            return spec, _port(raw, c.join(cpath, i), fw)
    raise SpecError(
        cpath, f"one container must be named {fw.container!r} (found: {c.names(p.name for p in parsed)})"
    )


def _container(raw: Any, path: str) -> ContainerSpec:
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"must be a mapping, got {c.type_name(raw)}")
    env: list[tuple[str, str]] = []
    for i, entry in enumerate(c.items(raw, "env", path)):
        epath = c.join(c.join(path, "env"), i)
        if not isinstance(entry, Mapping):
            raise SpecError(epath, f"must be a mapping with a name, got {c.type_name(entry)}")
        name = c.string(entry, "name", epath, required=True)
        value = c.string(entry, "value", epath)
        if value is not None:
            env.append((name, value))
    return ContainerSpec(
        name=c.string(raw, "name", path, required=True),
        image=c.string(raw, "image", path, required=True),
        command=c.string_list(raw, "command", path),
        args=c.string_list(raw, "args", path),
        env=tuple(env),
        working_dir=c.string(raw, "workingDir", path),
    )


def _port(container: Mapping[str, Any], path: str, fw: _Framework) -> int:
    """The port named `pytorchjob-port` / `tfjob-port`, else the operator's default."""
    for i, entry in enumerate(c.items(container, "ports", path)):
        ppath = c.join(c.join(path, "ports"), i)
        if not isinstance(entry, Mapping):
            raise SpecError(ppath, f"must be a mapping, got {c.type_name(entry)}")
        port = c.integer(entry, "containerPort", ppath, minimum=1)
        if port is None:
            raise SpecError(c.join(ppath, "containerPort"), "required (an integer)")
        if entry.get("name") == fw.port_name:
            return port
    return fw.default_port


def _run_policy(spec: Mapping[str, Any]) -> RunPolicy:
    rp = c.mapping(spec, "runPolicy", "spec") or {}
    path = "spec.runPolicy"
    c.reject_unknown(rp, _RUN_POLICY_FIELDS, path, "runPolicy")
    c.mapping(rp, "schedulingPolicy", path)
    c.string(rp, "managedBy", path, choices=("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue"))
    return RunPolicy(
        backoff_limit=c.integer(rp, "backoffLimit", path, minimum=0),
        active_deadline_seconds=c.integer(rp, "activeDeadlineSeconds", path, minimum=0),
        clean_pod_policy=c.string(rp, "cleanPodPolicy", path, choices=("All", "Running", "None")),
        ttl_seconds_after_finished=c.integer(rp, "ttlSecondsAfterFinished", path, minimum=0),
        suspend=c.boolean(rp, "suspend", path),
    )


def _nproc_per_node(spec: Mapping[str, Any]) -> str | None:
    value = c.string(spec, "nprocPerNode", "spec")
    if value is not None and value not in ("auto", "cpu", "gpu") and not re.fullmatch(r"[1-9]\d*", value):
        raise SpecError(
            "spec.nprocPerNode", f"must be 'auto', 'cpu', 'gpu' or a positive integer, got {value!r}"
        )
    return value


def _elastic_policy(spec: Mapping[str, Any], replica_specs: Mapping[str, Any]) -> None:
    ep = c.mapping(spec, "elasticPolicy", "spec")
    if ep is None:
        return
    path = "spec.elasticPolicy"
    c.reject_unknown(ep, _ELASTIC_FIELDS, path, "elasticPolicy")
    if "Worker" not in replica_specs:
        raise SpecError("spec.pytorchReplicaSpecs.Worker", "required when elasticPolicy is set")
    if ep.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
        raise SpecError(c.join(path, "nProcPerNode"), "must not be set together with spec.nprocPerNode")
    low = c.integer(ep, "minReplicas", path, minimum=1)
    high = c.integer(ep, "maxReplicas", path, minimum=1)
    if low is not None and high is not None and low > high:
        raise SpecError(c.join(path, "minReplicas"), f"must be <= maxReplicas ({high}), got {low}")
    c.string(ep, "rdzvBackend", path, choices=("c10d", "etcd", "etcd-v2"))
    c.integer(ep, "rdzvPort", path, minimum=1)
    c.integer(ep, "maxRestarts", path, minimum=0)
    c.integer(ep, "nProcPerNode", path, minimum=1)
    c.boolean(ep, "standalone", path)
    for key in ("rdzvHost", "rdzvId"):
        c.string(ep, key, path)


def _defaulted(doc: dict[str, Any], fw: _Framework, replicas: list[ReplicaSpec]) -> dict[str, Any]:
    """The manifest with the operator's replica defaults written in, as the cluster would store it."""
    for replica in replicas:
        entry = doc["spec"][fw.replica_key][replica.type]
        entry.setdefault("replicas", replica.replicas)
        entry.setdefault("restartPolicy", replica.restart_policy)
    return doc
