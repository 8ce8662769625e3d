"""Admission as the API server and the Kubeflow webhooks do it, so a bad CR fails here as on a cluster.

Order (apiserver): decode with structural pruning and schema defaults, validate against the CRD's
openAPIV3Schema (422 Invalid, causes with kube-openapi field paths such as
`spec.pytorchReplicaSpecs.Master.replicas`), then the validating webhooks (training operator v1.9.4
`pkg/webhooks`, Katib v0.19.0 experiment validator, after Katib's defaulting webhook), whose field
paths use Go's `field.Path` form (`spec.pytorchReplicaSpecs[Master].replicas`).

Webhook denials: controller-runtime answers a CustomValidator error with 403 Forbidden and the
apiserver prefixes `admission webhook "<name>" denied the request: `; the Status has no
`details.causes`, so the field is only in the message (as the real stack shows). Schema errors are
422 Invalid with causes.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CRD_FILES = {
    "pytorchjobs": "training-operator-v1/kubeflow.org_pytorchjobs.yaml",
    "tfjobs": "training-operator-v1/kubeflow.org_tfjobs.yaml",
    "experiments": "katib-v1beta1/crd-experiment.yaml",
    "trials": "katib-v1beta1/crd-trial.yaml",
}

WEBHOOK_NAMES = {
    "pytorchjobs": "validator.pytorchjob.training-operator.kubeflow.org",
    "tfjobs": "validator.tfjob.training-operator.kubeflow.org",
    "experiments": "validator.experiment.katib.kubeflow.org",
}

# Katib's default katib-config suggestion and early-stopping algorithm names.
KATIB_ALGORITHMS = {
    "random", "tpe", "grid", "multivariate-tpe", "bayesianoptimization", "cmaes", "sobol",
    "hyperband", "pbt", "enas", "darts",
}
KATIB_EARLY_STOPPING = {"medianstop"}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class Cause:
    field: str
    message: str
    reason: str = "FieldValueInvalid"


@dataclass
class AdmissionError(Exception):
    """A rejected object: the HTTP code and the Kubernetes `Status` body to send."""

    code: int
    status: dict[str, Any] = field(default_factory=dict)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.exists() and Path(str(path) + ".gz").exists():
        path = Path(str(path) + ".gz")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


class Schemas:
    """The CRDs' openAPIV3Schemas, loaded once per process (they are large) and compiled lazily."""

    _cache: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {}
    _lock = threading.Lock()

    def __init__(self, specs_dir: Path) -> None:
        self.specs_dir = Path(specs_dir)

    def get(self, plural: str) -> tuple[dict[str, Any], Any]:
        """(schema, jsonschema validator) of the storage version of `plural`'s CRD."""
        import jsonschema

        key = (str(self.specs_dir), plural)
        with self._lock:
            if key not in self._cache:
                crd = _load_yaml(self.specs_dir / CRD_FILES[plural])
                version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
                schema = version["schema"]["openAPIV3Schema"]
                self._cache[key] = (schema, jsonschema.Draft4Validator(schema))
            return self._cache[key]


# ---------------------------------------------------------------- structural schema semantics


def apply_defaults(value: Any, schema: dict[str, Any]) -> None:
    """Schema `default`s for missing fields whose parent object exists (apiserver defaulting)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in props:
                    apply_defaults(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


def prune(value: Any, schema: dict[str, Any], path: str = "", dropped: list[str] | None = None) -> list[str]:
    """Drop fields the structural schema does not know; returns their paths (for Warn/Strict)."""
    dropped = [] if dropped is None else dropped
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return dropped
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name in list(value):
            child = f"{path}.{name}" if path else name
            if path == "" and name in ("apiVersion", "kind", "metadata"):
                continue  # ObjectMeta is validated by the apiserver itself, never pruned by the CRD schema
            if props is not None and name in props:
                prune(value[name], props[name], child, dropped)
            elif isinstance(extra, dict):
                prune(value[name], extra, child, dropped)
            elif extra is True:
                continue
            else:
                del value[name]
                dropped.append(child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            prune(item, schema["items"], f"{path}[{i}]", dropped)
    return dropped


def _openapi_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _go_repr(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def schema_causes(obj: dict[str, Any], validator: Any) -> list[Cause]:
    """Schema violations in the wording and paths of the apiserver (kube-openapi validate)."""
    causes = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = _openapi_path(err.absolute_path)
        if err.validator == "required":
            missing = re.search(r"'(.+?)' is a required property", err.message)
            name = missing.group(1) if missing else "?"
            path = f"{where}.{name}" if where else name
            causes.append(Cause(path, "Required value", "FieldValueRequired"))
        elif err.validator == "type":
            causes.append(Cause(where, f"Invalid value: {_go_repr(err.instance)}: {where} in body must be of type "
                                f"{err.validator_value}: {_go_repr(err.instance)}", "FieldValueTypeInvalid"))
        elif err.validator == "enum":
            allowed = ", ".join(_go_repr(v) for v in err.validator_value)
            causes.append(Cause(where, f"Unsupported value: {_go_repr(err.instance)}: supported values: {allowed}",
                                "FieldValueNotSupported"))
        else:
            causes.append(Cause(where, f"Invalid value: {_go_repr(err.instance)}: {err.message}"))
    return causes


# ---------------------------------------------------------------- webhooks


def _training_job_causes(obj: dict[str, Any], plural: str) -> list[Cause]:
    """Training operator v1.9.4 validators (pytorchjob_webhook.go, tfjob_webhook.go, utils.go)."""
    causes: list[Cause] = []
    name = obj.get("metadata", {}).get("name", "")
    if not DNS1035.match(name) or len(name) > 63:
        causes.append(Cause("metadata.name", f"Invalid value: {_go_repr(name)}: should match: a DNS-1035 label must "
                            "consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
                            "and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
                            "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"))
    spec = obj.get("spec") or {}
    key, container, valid = {
        "pytorchjobs": ("pytorchReplicaSpecs", "pytorch", ["Master", "Worker"]),
        "tfjobs": ("tfReplicaSpecs", "tensorflow", []),
    }[plural]
    base = f"spec.{key}"
    replica_specs = spec.get(key)
    if replica_specs is None:
        causes.append(Cause(base, "Required value: must be required", "FieldValueRequired"))
        replica_specs = {}
    if plural == "pytorchjobs" and spec.get("elasticPolicy") is not None:
        if "Worker" not in replica_specs:
            causes.append(Cause(f"{base}[Worker]", "Required value: must be configured if elastic policy is used",
                                "FieldValueRequired"))
        if spec["elasticPolicy"].get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            causes.append(Cause("spec.elasticPolicy.nProcPerNode", "Forbidden: must not be used with spec.nprocPerNode",
                                "FieldValueForbidden"))
    for rtype, rspec in replica_specs.items():
        role = f"{base}[{rtype}]"
        containers_path = f"{role}.template.spec.containers"
        if valid and rtype not in valid:
            causes.append(Cause(role, f"Unsupported value: {_go_repr(rtype)}: supported values: "
                                + ", ".join(_go_repr(v) for v in valid), "FieldValueNotSupported"))
        containers = (((rspec or {}).get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            causes.append(Cause(containers_path, "Required value: must be specified", "FieldValueRequired"))
        for i, c in enumerate(containers):
            if not c.get("image"):
                causes.append(Cause(f"{containers_path}[{i}].image", "Required value: must be required",
                                    "FieldValueRequired"))
        if not any(c.get("name") == container for c in containers):
            causes.append(Cause(containers_path, f"Required value: must have at least one container with name "
                                f"{container}", "FieldValueRequired"))
        replicas = (rspec or {}).get("replicas")
        if plural == "pytorchjobs" and rtype == "Master" and replicas != 1:
            causes.append(Cause(f"{role}.replicas", "Forbidden: must be 1", "FieldValueForbidden"))
        elif plural == "pytorchjobs" and replicas is not None and replicas < 1:
            causes.append(Cause(f"{role}.replicas", "Forbidden: must be at least 1", "FieldValueForbidden"))
    if plural == "tfjobs" and sum(1 for r in replica_specs if r in ("Chief", "Master")) > 1:
        causes.append(Cause(base, "Forbidden: must not have more than 1 Chief or Master role", "FieldValueForbidden"))
    return causes


KATIB_JOB_KINDS = {"PyTorchJob", "TFJob", "XGBoostJob", "MPIJob"}


def katib_defaults(obj: dict[str, Any]) -> None:
    """Katib's mutating webhook (experiment_defaults.go): what a stored Experiment always has."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("parallelTrialCount", 3)
    spec.setdefault("resumePolicy", "Never")
    objective = spec.get("objective")
    if isinstance(objective, dict):
        strategies = objective.setdefault("metricStrategies", [])
        named = {s.get("name") for s in strategies}
        main = objective.get("objectiveMetricName")
        if main and main not in named:
            strategies.append({"name": main, "value": "min" if objective.get("type") == "minimize" else "max"})
        for extra in objective.get("additionalMetricNames") or []:
            if extra not in named:
                strategies.append({"name": extra, "value": "latest"})
    collector = spec.setdefault("metricsCollectorSpec", {}).setdefault("collector", {})
    collector.setdefault("kind", "StdOut")
    template = spec.get("trialTemplate")
    if isinstance(template, dict) and isinstance(template.get("trialSpec"), dict):
        kind = template["trialSpec"].get("kind")
        if kind == "Job":
            template.setdefault("successCondition", 'status.conditions.#(type=="Complete")#|#(status=="True")#')
            template.setdefault("failureCondition", 'status.conditions.#(type=="Failed")#|#(status=="True")#')
        elif kind in KATIB_JOB_KINDS:
            template.setdefault("successCondition", 'status.conditions.#(type=="Succeeded")#|#(status=="True")#')
            template.setdefault("failureCondition", 'status.conditions.#(type=="Failed")#|#(status=="True")#')
            template.setdefault("primaryPodLabels", {"training.kubeflow.org/job-role": "master"})


def _katib_causes(obj: dict[str, Any]) -> list[Cause]:
    """Katib v0.19.0 `ValidateExperiment` for a create (the rules the reference lists)."""
    causes: list[Cause] = []
    name = obj.get("metadata", {}).get("name", "")
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?", name):
        causes.append(Cause("metadata.name", f"Invalid value: {_go_repr(name)}: name must consist of lower case "
                            "alphanumeric characters or '-', start with an alphabetic character, and end with an "
                            "alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for validation is "
                            "'^[a-z]([-a-z0-9]*[a-z0-9])?)'"))
    if len(name) > 40:
        causes.append(Cause("metadata.name", f"Invalid value: {_go_repr(name)}: must be no more than 40 characters"))
    spec = obj.get("spec") or {}
    counts = {k: spec.get(k) for k in ("maxFailedTrialCount", "maxTrialCount", "parallelTrialCount")}
    if counts["maxFailedTrialCount"] is not None and counts["maxFailedTrialCount"] < 0:
        causes.append(Cause("spec.maxFailedTrialCount", f"Invalid value: {counts['maxFailedTrialCount']}: should not be less than 0"))
    for key in ("maxTrialCount", "parallelTrialCount"):
        if counts[key] is not None and counts[key] <= 0:
            causes.append(Cause(f"spec.{key}", f"Invalid value: {counts[key]}: must be greater than 0"))
    for key in ("maxFailedTrialCount", "parallelTrialCount"):
        if counts[key] is not None and counts["maxTrialCount"] is not None and counts[key] > counts["maxTrialCount"]:
            causes.append(Cause(f"spec.{key}", f"Invalid value: {counts[key]}: should be less than or equal to spec.maxTrialCount"))
    objective = spec.get("objective")
    if not objective:
        return causes + [Cause("spec.objective", "Required value: must be specified", "FieldValueRequired")]
    if objective.get("type") not in ("minimize", "maximize"):
        causes.append(Cause("spec.objective.type", f"Invalid value: {_go_repr(objective.get('type', ''))}: must be minimize or maximize"))
    if not objective.get("objectiveMetricName"):
        causes.append(Cause("spec.objective.objectiveMetricName", "Required value: must be specified", "FieldValueRequired"))
    algorithm = spec.get("algorithm")
    if not algorithm:
        causes.append(Cause("spec.algorithm", "Required value: must be specified", "FieldValueRequired"))
    else:
        algo = algorithm.get("algorithmName", "")
        if not algo:
            causes.append(Cause("spec.algorithm.algorithmName", "Required value: must be specified", "FieldValueRequired"))
        if algo not in KATIB_ALGORITHMS:
            causes.append(Cause("spec.algorithm.algorithmName", f"Invalid value: {_go_repr(algo)}: unable to get Suggestion "
                                f"config data for algorithm {algo}: failed to find algorithm '{algo}' config in "
                                "ConfigMap: katib-config"))
    early = spec.get("earlyStopping")
    if early and early.get("algorithmName") not in KATIB_EARLY_STOPPING:
        causes.append(Cause("spec.earlyStopping.algorithmName", f"Invalid value: {_go_repr(early.get('algorithmName', ''))}: "
                            "unable to get EarlyStopping config data"))
    if spec.get("resumePolicy", "") not in ("", "Never", "LongRunning", "FromVolume"):
        causes.append(Cause("spec.resumePolicy", f"Invalid value: {_go_repr(spec['resumePolicy'])}: invalid ResumePolicyType"))
    causes += _katib_trial_template_causes(spec)
    params = spec.get("parameters") or []
    if not params and spec.get("nasConfig") is None:
        causes.append(Cause("spec", "Required value: spec.parameters or spec.nasConfig must be specified", "FieldValueRequired"))
    for i, p in enumerate(params):
        where = f"spec.parameters[{i}]"
        ptype = p.get("parameterType", "")
        if ptype not in ("int", "double", "categorical", "discrete", ""):
            causes.append(Cause(f"{where}.parameterType", f"Invalid value: {_go_repr(ptype)}: parameterType: {ptype} is not supported"))
        space = p.get("feasibleSpace") or {}
        if not space:
            causes.append(Cause(f"{where}.feasibleSpace", "Required value: feasibleSpace must be specified", "FieldValueRequired"))
        elif ptype in ("int", "double"):
            if space.get("list"):
                causes.append(Cause(f"{where}.feasibleSpace.list", f"Invalid value: feasibleSpace.list is not supported for parameterType: {ptype}"))
            if not space.get("max") or not space.get("min"):
                causes.append(Cause(f"{where}.feasibleSpace.max", "Required value: feasibleSpace.max or feasibleSpace.min must be "
                                    f"specified for parameterType: {ptype}", "FieldValueRequired"))
        elif space.get("max") or space.get("min") or space.get("step"):
            causes.append(Cause(f"{where}.feasibleSpace", "Invalid value: feasibleSpace .max, .min and .step is not "
                                f"supported for parameterType: {ptype}"))
    return causes


def _katib_trial_template_causes(spec: dict[str, Any]) -> list[Cause]:
    base = "spec.trialTemplate"
    template = spec.get("trialTemplate")
    if not template:
        return [Cause(base, "Required value: must be specified", "FieldValueRequired")]
    causes = []
    if not template.get("primaryContainerName"):
        causes.append(Cause(f"{base}.primaryContainerName", "Required value: must be specified", "FieldValueRequired"))
    if not template.get("successCondition") or not template.get("failureCondition"):
        causes.append(Cause(base, "Required value: successCondition and failureCondition must be specified", "FieldValueRequired"))
    trial_params = template.get("trialParameters")
    if trial_params is None:
        return causes + [Cause(f"{base}.trialParameters", "Required value: must be specified", "FieldValueRequired")]
    has_spec, has_cm = template.get("trialSpec") is not None, template.get("configMap") is not None
    if not has_spec and not has_cm:
        return causes + [Cause(f"{base}.TrialSource", "Required value: spec.trialTemplate.trialSpec or "
                               "spec.trialTemplate.configMap must be specified", "FieldValueRequired")]
    if has_spec and has_cm:
        return causes + [Cause(base, "Required value: only one of spec.trialTemplate.trialSpec or "
                               "spec.trialTemplate.configMap can be specified", "FieldValueRequired")]
    text = json.dumps(template.get("trialSpec") or {})
    names = {p.get("name") for p in spec.get("parameters") or []}
    seen_names: set[str] = set()
    seen_refs: set[str] = set()
    for i, p in enumerate(trial_params):
        where = f"{base}.trialParameters[{i}]"
        pname, ref = p.get("name", ""), p.get("reference", "")
        if not pname or not ref or "{" in pname or "}" in pname:
            causes.append(Cause(where, "Invalid value: \"\": name and reference must be specified and name must not contain '{' or '}'"))
            continue
        if pname in seen_names:
            causes.append(Cause(f"{where}.name", f"Invalid value: {_go_repr(pname)}: parameter name {pname} can't be duplicated"))
            continue
        if ref in seen_refs:
            causes.append(Cause(f"{where}.reference", f"Invalid value: {_go_repr(ref)}: parameter reference {ref} can't be duplicated"))
            continue
        seen_names.add(pname)
        seen_refs.add(ref)
        if names and ref not in names and not re.match(r"^\$\{trialSpec\.", ref):
            causes.append(Cause(f"{where}.reference", f"Invalid value: {_go_repr(ref)}: parameter reference {ref} does not exist in spec.parameters"))
        token = "${trialParameters." + pname + "}"
        if has_spec and token not in text:
            causes.append(Cause(f"{where}.name", f"Invalid value: {_go_repr(pname)}: parameter name: {pname} in "
                                "spec.trialParameters not found in spec.trialTemplate"))
            return causes
        text = text.replace(token, "test-value")
    left = re.findall(r"\$\{trialParameters\.[^}]+\}", text)
    if has_spec and left:
        causes.append(Cause(base, f"Invalid value: \"\": parameters: {left} in spec.trialTemplate not found in spec.trialParameters"))
    trial_spec = template.get("trialSpec") or {}
    if has_spec and (not trial_spec.get("apiVersion") or not trial_spec.get("kind")):
        causes.append(Cause(base, "Required value: APIVersion and Kind in spec.trialTemplate must be specified", "FieldValueRequired"))
    meta = trial_spec.get("metadata") or {}
    if meta.get("name") or meta.get("namespace"):
        causes.append(Cause(base, "Invalid value: \"\": metadata.name and metadata.namespace in spec.trialTemplate must be omitted"))
    return causes


# ---------------------------------------------------------------- entry point


def invalid_status(kind: str, group: str, name: str, causes: list[Cause], prefix: str = "", code: int = 422) -> dict[str, Any]:
    """The `Status` body the apiserver sends for an invalid object."""
    summary = ", ".join(f"{c.field}: {c.message}" for c in causes)
    if len(causes) > 1:
        summary = f"[{summary}]"
    reason = "Invalid" if code == 422 else ("Forbidden" if code == 403 else "BadRequest")
    message = f"{prefix}{kind}.{group} \"{name}\" is invalid: {summary}" if not prefix else f"{prefix}{summary}"
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
        "reason": reason, "code": code,
        "details": {"name": name, "group": group, "kind": kind,
                    "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]},
    }


SCALE_SPEC_REPLICAS = {"pytorchjobs": ("spec", "pytorchReplicaSpecs", "Worker", "replicas")}


def scale_causes(plural: str, obj: dict[str, Any]) -> list[Cause]:
    """The API server checks a CRD's scale subresource value (specReplicasPath) on every write, before
    any webhook: the PyTorchJob CRD points it at the Worker replicas (seen on the real stack)."""
    path = SCALE_SPEC_REPLICAS.get(plural)
    value: Any = obj
    for step in path or ():
        value = value.get(step) if isinstance(value, dict) else None
    if isinstance(value, int) and value < 0:
        field = "." + ".".join(path)
        return [Cause(field, f"Invalid value: {value}: should be a non-negative integer")]
    return []


class Admission:
    """Defaults, prunes and validates CRs on create/update the way a cluster with Kubeflow does."""

    def __init__(self, specs_dir: Path) -> None:
        self.schemas = Schemas(specs_dir)
        self.webhook_status = 403

    def admit(self, plural: str, kind: str, group: str, obj: dict[str, Any], field_validation: str = "") -> list[str]:
        """Mutates `obj` into what is stored; raises AdmissionError; returns warnings (pruned fields)."""
        name = obj.get("metadata", {}).get("name", "")
        schema, validator = self.schemas.get(plural)
        dropped = prune(obj, schema)
        if dropped and field_validation == "Strict":
            raise AdmissionError(400, {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "BadRequest",
                "code": 400, "message": "strict decoding error: " + ", ".join(f'unknown field "{d}"' for d in dropped)})
        apply_defaults(obj, schema)
        causes = schema_causes(obj, validator) or scale_causes(plural, obj)
        if causes:
            raise AdmissionError(422, invalid_status(kind, group, name, causes))
        if plural == "experiments":
            katib_defaults(obj)
            causes = _katib_causes(obj)
        elif plural in ("pytorchjobs", "tfjobs"):
            causes = _training_job_causes(obj, plural)
        if causes:
            code = self.webhook_status
            prefix = f'admission webhook "{WEBHOOK_NAMES[plural]}" denied the request: '
            denied = invalid_status(kind, group, name, causes, prefix, code)
            denied.pop("details")  # a webhook's denial carries its reasons in the message only
            raise AdmissionError(code, denied)
        return [f'unknown field "{d}"' for d in dropped] if field_validation in ("", "Warn") else []
