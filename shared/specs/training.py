"""PyTorchJob and TFJob manifests (kubeflow.org/v1), validated like the CRD schema and the
training-operator v1.9 webhooks, then defaulted like its defaulter (replicas 1, restartPolicy).

Each error names its field the way the cluster would: what the CRD schema checks (types, required
keys, unknown fields) with the API server's `spec.pytorchReplicaSpecs.Master.replicas`; the
webhooks' rules (`pkg/webhooks/utils.ValidateReplicaSpecs`, `pytorchjob_webhook.go`,
`tfjob_webhook.go`) and our checks of the same replica fields with Go's `field.Path.Key` form,
`spec.pytorchReplicaSpecs[Master].replicas`. Within a replica the schema's checks run first,
as on a cluster, where a schema error stops the request before the webhooks see it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c
from shared.specs import pod_fields
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
    replicas = [_replica(str(key), value, specs_path, fw) for key, value in raw.items()]
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


def _replica(rtype: str, value: Any, specs_path: str, fw: _Framework) -> ReplicaSpec:
    path = c.join(specs_path, rtype)  # the schema's spelling of the entry
    role = c.key(specs_path, rtype)  # the webhooks' spelling of the same entry
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {c.type_name(value)}")
    c.reject_unknown(value, ("replicas", "template", "restartPolicy"), path, "a replica spec")
    pod_fields.check_pod_template(value.get("template"), c.join(path, "template"))
    count = c.integer(value, "replicas", path, default=1)  # the schema bounds nothing: the webhooks do
    assert count is not None
    if count < 0 and rtype == "Worker" and fw.replica_key == "pytorchReplicaSpecs":
        # The PyTorchJob CRD's scale subresource reads Worker replicas (specReplicasPath), and the API
        # server refuses a negative value there before any webhook sees the object.
        raise SpecError(c.join(path, "replicas"), f"Invalid value: {count}: should be a non-negative integer")
    restart = c.string(value, "restartPolicy", path, default=fw.default_restart, choices=RESTART_POLICIES)
    containers = _containers(value, path, fw)
    if rtype not in fw.replica_types:
        raise SpecError(
            role, f"unknown replica type {rtype!r}; expected one of {', '.join(fw.replica_types)}"
        )
    container, port = _primary_container(containers, _containers_path(role), fw)
    _check_count(rtype, count, c.join(role, "replicas"), fw)
    for i, (spec, _) in enumerate(containers):
        if not spec.name:  # the webhooks let it pass, the Pod the operator creates would be refused
            raise SpecError(c.join(c.join(_containers_path(path), i), "name"), "must not be empty")
    return ReplicaSpec(type=rtype, replicas=count, restart_policy=restart, container=container, port=port)


def _check_count(rtype: str, count: int, path: str, fw: _Framework) -> None:
    """Replica counts: the PyTorchJob webhook's rules (Master exactly 1, Worker at least 1) and ours."""
    if count < 0:
        raise SpecError(path, f"must be an integer >= 0, got {count}")
    if rtype == "Master" and fw.replica_key == "pytorchReplicaSpecs" and count != 1:
        raise SpecError(path, f"must be 1 for a PyTorchJob Master, got {count}")
    if rtype in _LEADERS and count > 1:
        raise SpecError(path, f"a {rtype} has at most 1 replica, got {count}")
    if rtype == "Worker" and count < 1:
        raise SpecError(path, "must be at least 1 for Worker (drop the Worker entry instead)")


def _containers(replica: Mapping[str, Any], path: str, fw: _Framework) -> list[tuple[ContainerSpec, int]]:
    """Each container with its job port, as far as the schema checks them.

    `template` and its `spec` are optional in the CRD; the PodSpec requires `containers`.
    """
    tpath = c.join(path, "template")
    pod = c.mapping(c.mapping(replica, "template", path) or {}, "spec", tpath)
    if pod is None:
        return []
    cpath = _containers_path(path)
    return [
        (_container(raw, c.join(cpath, i)), _port(raw, c.join(cpath, i), fw))  # _container checks raw first
        for i, raw in enumerate(c.items(pod, "containers", c.join(tpath, "spec"), required=True))
    ]


def _containers_path(replica_path: str) -> str:
    return c.join(c.join(c.join(replica_path, "template"), "spec"), "containers")


def _primary_container(
    containers: list[tuple[ContainerSpec, int]], cpath: str, fw: _Framework
) -> tuple[ContainerSpec, int]:
    """The webhooks' container rules (`utils.ValidateReplicaSpecs`), on their paths (`cpath`)."""
    if not containers:
        raise SpecError(cpath, "required: must list at least one container")
    for i, (spec, _) in enumerate(containers):
        if not spec.image:
            raise SpecError(c.join(c.join(cpath, i), "image"), "required (a non-empty string)")
    primary = [(spec, port) for spec, port in containers if spec.name == fw.container]
    if not primary:
        found = c.names(spec.name for spec, _ in containers)
        raise SpecError(cpath, f"one container must be named {fw.container!r} (found: {found})")
    return primary[0]


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
    if raw.get("name") is None:  # required by the schema; an empty name is the webhooks' business
        raise SpecError(c.join(path, "name"), "required (a string)")
    return ContainerSpec(
        name=c.string(raw, "name", path) or "",
        image=c.string(raw, "image", path) or "",  # optional in the schema; the webhooks require it
        command=c.string_list(raw, "command", path),
        args=c.string_list(raw, "args", path),
        env=tuple(env),
        working_dir=c.string(raw, "workingDir", path),
    )


def _port(container: Mapping[str, Any], path: str, fw: _Framework) -> int:
    """The first port named `pytorchjob-port` / `tfjob-port`, else the operator's default."""
    found: int | None = None
    for i, entry in enumerate(c.items(container, "ports", path)):
        ppath = c.join(c.join(path, "ports"), i)
        if not isinstance(entry, Mapping):
            raise SpecError(ppath, f"must be a mapping, got {c.type_name(entry)}")
        port = c.integer(entry, "containerPort", ppath, minimum=1)
        if port is None:
            raise SpecError(c.join(ppath, "containerPort"), "required (an integer)")
        if entry.get("name") == fw.port_name and found is None:
            found = port
    return fw.default_port if found is None else found


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
        raise SpecError(c.key("spec.pytorchReplicaSpecs", "Worker"), "required when elasticPolicy is set")
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
