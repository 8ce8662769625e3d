"""The KFP v2beta1 REST endpoints the backend uses, as the 2.17 API server answers them.

grpc-gateway conventions (../shared/specs/CONVENTIONS.md): snake_case JSON, enums and int64 as
strings, errors as `{code, message, details}` (google.rpc.Status; 3 InvalidArgument -> 400,
5 NotFound -> 404, 16 Unauthenticated -> 401). Bodies are checked against the swagger
definitions: unknown fields rejected (protojson), types and enum values enforced.

Run lifecycle: PENDING -> RUNNING -> SUCCEEDED | FAILED; `:terminate` -> CANCELING -> CANCELED.
Recurring runs (`/recurringruns`): created ENABLED or DISABLED by `mode`, `:enable` / `:disable`,
deleted; listed per `namespace` (multi-user KFP keeps them per profile namespace). They never start
runs here: a test checks what is scheduled, not the scheduler. A body must reference an uploaded
pipeline version or carry a pipeline spec, and a cron the API server's parser accepts.

Outcome per run: the pipeline parameter `double_outcome` (SUCCEEDED | FAILED | HANG, HANG never
finishes until terminated) and `double_run_seconds`, else `KfpRuns.outcomes` (display-name
substring -> outcome), else the defaults in `KfpRuns`.

Multi-user mode (`multi_user = True`, as a full Kubeflow install with Profiles runs it; see
`backend/src/apiserver/server/run_server.go`): `healthz` says so; listing runs or experiments needs
a `namespace` (or an `experiment_id`, whose namespace counts); a run must belong to an experiment of
a namespace; `namespace_access` (token -> namespaces) plays the SubjectAccessReview, so another
profile's namespace is PermissionDenied (403).
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .server import Request, Response
from .store import now_rfc3339

PREFIX = "/apis/v2beta1"
EPOCH = "1970-01-01T00:00:00Z"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}
FILTER_KEYS = {"run_id", "display_name", "created_at", "finished_at", "description", "scheduled_at",
               "storage_state", "namespace", "experiment_id", "state", "recurring_run_id"}
MLFLOW_PLUGIN_KEYS = {"experiment_name", "experiment_id", "disabled"}
# Predicate.Operation by number (filter.proto; 4 is unused): protojson takes an enum by name or by
# number, and kfp.Client sends numbers (`_FILTER_OPERATIONS` in kfp/client/client.py).
PREDICATE_OPERATIONS = {0: "OPERATION_UNSPECIFIED", 1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN",
                        5: "GREATER_THAN_EQUALS", 6: "LESS_THAN", 7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}


class KfpError(Exception):
    GRPC = {400: 3, 404: 5, 401: 16, 409: 6, 500: 13}

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = Response(status, {"error": message, "code": self.GRPC.get(status, 2), "message": message,
                                          "details": []})


class Swagger:
    """Type checks of request bodies against the swagger `definitions`."""

    def __init__(self, specs_dir: Path) -> None:
        self.defs: dict[str, Any] = {}
        for name in ("run", "experiment", "pipeline", "filter", "recurring_run"):
            doc = json.loads((specs_dir / "kfp-v2beta1" / f"{name}.swagger.json").read_text())
            self.defs.update(doc.get("definitions", {}))

    def check(self, value: Any, schema: dict[str, Any], path: str) -> None:
        if "$ref" in schema:
            schema = {**self.defs[schema["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in schema.items() if k != "$ref"}}
        kind = schema.get("type")
        if "enum" in schema:
            if value not in schema["enum"]:
                raise KfpError(400, f"invalid value for enum field {path}: {json.dumps(value)}")
            return
        if kind == "string":
            ok = isinstance(value, str) or (schema.get("format") in ("int64", "uint64") and isinstance(value, int))
            if not ok:
                raise KfpError(400, f"proto: syntax error: invalid value for string field {path}: {json.dumps(value)}")
        elif kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
            raise KfpError(400, f"proto: invalid value for int32 field {path}: {json.dumps(value)}")
        elif kind == "boolean" and not isinstance(value, bool):
            raise KfpError(400, f"proto: invalid value for bool field {path}: {json.dumps(value)}")
        elif kind == "array":
            if not isinstance(value, list):
                raise KfpError(400, f"proto: syntax error: unexpected token for repeated field {path}")
            for i, item in enumerate(value):
                self.check(item, schema.get("items") or {}, f"{path}[{i}]")
        elif kind == "object" or "properties" in schema:
            if not isinstance(value, dict):
                raise KfpError(400, f"proto: syntax error: unexpected token for message field {path}")
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                if props is not None and key in props:
                    self.check(item, props[key], f"{path}.{key}" if path else key)
                elif isinstance(extra, dict):
                    if extra.get("type") == "object" and not isinstance(item, dict):
                        raise KfpError(400, f"proto: invalid value for field {path}.{key}")
                elif props is not None:
                    raise KfpError(400, f'proto: (line 1:2): unknown field "{key}"' + (f" in {path}" if path else ""))

    def check_def(self, value: Any, definition: str) -> None:
        self.check(value, {"$ref": f"#/definitions/{definition}"}, "")


@dataclass
class KfpRuns:
    """Run timings and outcomes (see the module docstring)."""

    pending_seconds: float = 0.05
    run_seconds: float = 0.3
    cancel_seconds: float = 0.1
    outcome: str = "SUCCEEDED"
    outcomes: dict[str, str] = field(default_factory=dict)


def _page(items: list[dict[str, Any]], query: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    size = int(query.get("page_size") or 0) or len(items) or 1
    start = int(base64.urlsafe_b64decode(query["page_token"]).decode()) if query.get("page_token") else 0
    end = start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else ""
    return items[start:end], token


def _sorted(items: list[dict[str, Any]], sort_by: str) -> list[dict[str, Any]]:
    key, _, order = (sort_by or "created_at").partition(" ")
    return sorted(items, key=lambda i: (str(i.get(key, "")), i.get("run_id", "")), reverse=order.strip() == "desc")


def apply_filter(items: list[dict[str, Any]], raw: str) -> list[dict[str, Any]]:
    """The v2beta1 `Filter`: predicates ANDed; EQUALS, NOT_EQUALS, IN, IS_SUBSTRING, comparisons."""
    if not raw:
        return items
    try:
        spec = json.loads(raw)
    except ValueError:
        raise KfpError(400, f"Failed to parse the filter: invalid JSON: {raw}") from None
    out = items
    for pred in spec.get("predicates") or []:
        key, op = pred.get("key"), pred.get("operation", pred.get("op"))
        if isinstance(op, int) and not isinstance(op, bool):
            op = PREDICATE_OPERATIONS.get(op, op)
        if key not in FILTER_KEYS:
            raise KfpError(400, f"Invalid input error: invalid filter key {key!r}")
        values = pred.get("string_values", pred.get("stringValues"))
        if isinstance(values, dict):
            values = values.get("values")
        value = next((pred[k] for k in ("string_value", "stringValue", "int_value", "intValue", "long_value",
                                        "longValue", "timestamp_value", "timestampValue") if k in pred), None)

        def keep(item: dict[str, Any], key: str = key, op: str = op, value: Any = value, values: Any = values) -> bool:
            field_value = item.get(key, "")
            if op == "EQUALS":
                return str(field_value) == str(value)
            if op == "NOT_EQUALS":
                return str(field_value) != str(value)
            if op == "IN":
                return str(field_value) in {str(v) for v in values or []}
            if op == "IS_SUBSTRING":
                return str(value) in str(field_value)
            cmp = {"GREATER_THAN": lambda a, b: a > b, "GREATER_THAN_EQUALS": lambda a, b: a >= b,
                   "LESS_THAN": lambda a, b: a < b, "LESS_THAN_EQUALS": lambda a, b: a <= b}.get(op)
            if cmp is None:
                raise KfpError(400, f"Invalid input error: invalid filter operation {op!r}")
            return cmp(str(field_value), str(value))

        out = [i for i in out if keep(i)]
    return out


def _valid_cron(cron: str) -> bool:
    """robfig/cron's six fields (seconds first) or a descriptor, as KFP's scheduled workflow parses it."""
    from croniter import croniter

    fields = cron.split()
    if cron.startswith("@"):
        return croniter.is_valid(cron)
    return len(fields) == 6 and croniter.is_valid(cron, second_at_beginning=True)


class KfpApi:
    """Experiments, pipelines and runs in memory; `step()` (called by the controller thread) moves runs."""

    def __init__(self, specs_dir: Path, record_change: Any) -> None:
        self.swagger = Swagger(specs_dir)
        self.token = "kfp-token"
        self.lock = threading.RLock()
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring: dict[str, dict[str, Any]] = {}
        self.timeline: dict[str, tuple[str, float]] = {}  # run_id -> (state, monotonic since)
        self.behaviour = KfpRuns()
        self.record_change = record_change
        self.multi_user = False
        self.namespace_access: dict[str, set[str]] = {}  # multi-user: token -> namespaces it may use
        self._token_seen = ""

    # -- App protocol

    def authorized(self, req: Request) -> bool:
        auth = req.headers.get("authorization", "")
        self._token_seen = auth[7:] if auth.startswith("Bearer ") else ""
        return self._token_seen == self.token or self._token_seen in self.namespace_access

    def _authorize(self, namespace: str, verb: str) -> None:
        """Multi-user mode: an empty namespace is refused, another profile's is PermissionDenied."""
        if not self.multi_user:
            return
        if not namespace:
            raise KfpError(400, f"Failed to {verb}: Invalid input error: a namespace is required in multi-user mode "
                           "(ListRuns must filter by namespace)")
        allowed = self.namespace_access.get(self._token_seen)
        if allowed is not None and namespace not in allowed:
            raise KfpError(403, f"Failed to {verb} due to authorization error. Check if you have permission to "
                           f"access namespace {namespace}: PermissionDenied")

    def unauthorized(self) -> Response:
        return KfpError(401, "Unauthenticated: the request has no valid bearer token").response

    def error(self, status: int, message: str, retry_after: int | None = None) -> Response:
        resp = KfpError(status, message).response
        if retry_after:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    def stream_kind(self, req: Request) -> str | None:
        return None

    def handle(self, req: Request, fault: str | None) -> Response:
        try:
            with self.lock:
                return self._route(req)
        except KfpError as err:
            return err.response

    def _route(self, req: Request) -> Response:
        path, method = req.path, req.method
        if not path.startswith(PREFIX):
            raise KfpError(404, "Not Found")
        rest = path[len(PREFIX):].strip("/").split("/")
        if rest == ["healthz"] and method == "GET":
            return Response(200, {"multi_user": self.multi_user, "pipeline_store": "database"})
        if rest[0] == "experiments":
            return self._experiments(req, rest[1:])
        if rest[0] == "pipelines":
            return self._pipelines(req, rest[1:])
        if rest[0] == "runs":
            return self._runs(req, rest[1:])
        if rest[0] == "recurringruns":
            return self._recurring(req, rest[1:])
        raise KfpError(404, "Not Found")

    # -- experiments

    def _experiments(self, req: Request, rest: list[str]) -> Response:
        if not rest and req.method == "POST":
            body = req.json()
            self.swagger.check_def(body, "v2beta1Experiment")
            if not body.get("display_name"):
                raise KfpError(400, "Invalid input error: Experiment name is empty. Please specify a valid experiment name")
            self._authorize(body.get("namespace", ""), "create a new experiment")
            if any(e["display_name"] == body["display_name"] and e.get("namespace", "") == body.get("namespace", "")
                   for e in self.experiments.values()):
                raise KfpError(409, f"Already exist error: Failed to create a new experiment. The name {body['display_name']} already exists")
            exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                   "description": body.get("description", ""), "created_at": now_rfc3339(),
                   "namespace": body.get("namespace", ""), "storage_state": "AVAILABLE",
                   "last_run_created_at": EPOCH}
            self.experiments[exp["experiment_id"]] = exp
            return Response(200, exp)
        if not rest and req.method == "GET":
            namespace = req.query.get("namespace", "")
            self._authorize(namespace, "list experiments")
            items = [e for e in self.experiments.values() if not self.multi_user or e.get("namespace") == namespace]
            items = apply_filter(items, req.query.get("filter", ""))
            page, token = _page(_sorted(items, req.query.get("sort_by", "")), req.query)
            return Response(200, {"experiments": page, "total_size": len(items), "next_page_token": token})
        if len(rest) == 1 and req.method == "GET":
            if rest[0] not in self.experiments:
                raise KfpError(404, f"Not found error: Failed to get experiment {rest[0]}")
            return Response(200, self.experiments[rest[0]])
        raise KfpError(404, "Not Found")

    def _default_experiment(self) -> str:
        for exp in self.experiments.values():
            if exp["display_name"] == "Default":
                return exp["experiment_id"]
        exp_id = str(uuid.uuid4())
        self.experiments[exp_id] = {"experiment_id": exp_id, "display_name": "Default", "created_at": now_rfc3339(),
                                    "storage_state": "AVAILABLE", "description": "", "namespace": ""}
        return exp_id

    # -- pipelines

    def _pipelines(self, req: Request, rest: list[str]) -> Response:
        if rest in (["upload"], ["upload_version"]) and req.method == "POST":
            return self._upload(req, version_only=rest == ["upload_version"])
        if not rest and req.method == "GET":
            items = [p for p in self.pipelines.values() if p.get("namespace", "") == req.query.get("namespace", "")]
            items = apply_filter(items, req.query.get("filter", "").replace('"name"', '"display_name"'))
            page, token = _page(_sorted(items, req.query.get("sort_by", "")), req.query)
            return Response(200, {"pipelines": page, "total_size": len(items), "next_page_token": token})
        if len(rest) >= 1 and rest[0] not in self.pipelines:
            raise KfpError(404, f"Not found error: Failed to get pipeline {rest[0]}")
        if len(rest) == 1 and req.method == "GET":
            return Response(200, self.pipelines[rest[0]])
        if len(rest) == 2 and rest[1] == "versions" and req.method == "GET":
            items = [v for v in self.versions.values() if v["pipeline_id"] == rest[0]]
            items = apply_filter(items, req.query.get("filter", ""))
            page, token = _page(_sorted(items, req.query.get("sort_by", "")), req.query)
            return Response(200, {"pipeline_versions": page, "total_size": len(items), "next_page_token": token})
        if len(rest) == 3 and rest[1] == "versions" and req.method == "GET":
            if rest[2] not in self.versions:
                raise KfpError(404, f"Not found error: Failed to get pipeline version {rest[2]}")
            return Response(200, self.versions[rest[2]])
        raise KfpError(404, "Not Found")

    def _upload(self, req: Request, version_only: bool) -> Response:
        ctype = req.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise KfpError(400, "Failed to read pipeline from file: the request is not multipart/form-data")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body)
        upload = next((p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"), None)
        if upload is None:
            raise KfpError(400, "Failed to read pipeline from file: http: no such file (form field uploadfile)")
        try:
            spec = yaml.safe_load(upload.get_payload(decode=True))
        except yaml.YAMLError as err:
            raise KfpError(400, f"Failed to parse the pipeline spec: {err}") from None
        if not isinstance(spec, dict) or "pipelineInfo" not in spec and "pipeline_spec" not in spec:
            raise KfpError(400, "Invalid input error: the uploaded file is not a KFP v2 pipeline spec")
        name = req.query.get("display_name") or req.query.get("name") or upload.get_filename() or "pipeline"
        now = now_rfc3339()
        if version_only:
            pipeline_id = req.query.get("pipelineid", "")
            if pipeline_id not in self.pipelines:
                raise KfpError(404, f"Not found error: Failed to get pipeline {pipeline_id}")
        else:
            if any(p["display_name"] == name and p.get("namespace", "") == req.query.get("namespace", "")
                   for p in self.pipelines.values()):
                raise KfpError(409, f"Already exist error: Failed to create a pipeline. The pipeline {name} already exists")
            pipeline_id = str(uuid.uuid4())
            self.pipelines[pipeline_id] = {"pipeline_id": pipeline_id, "display_name": name, "name": name,
                                           "description": req.query.get("description", ""), "created_at": now,
                                           "namespace": req.query.get("namespace", "")}
        version_id = str(uuid.uuid4())
        self.versions[version_id] = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id, "display_name": name,
                                     "name": name, "created_at": now, "pipeline_spec": spec}
        return Response(200, self.versions[version_id] if version_only else self.pipelines[pipeline_id])

    # -- recurring runs

    def _recurring(self, req: Request, rest: list[str]) -> Response:
        if not rest and req.method == "POST":
            return Response(200, self._create_recurring(req.json()))
        if not rest and req.method == "GET":
            namespace = req.query.get("namespace", "")
            items = [r for r in self.recurring.values() if r.get("namespace", "") == namespace]
            items = apply_filter(items, req.query.get("filter", ""))
            page, token = _page(_sorted(items, req.query.get("sort_by", "")), req.query)
            return Response(200, {"recurringRuns": copy.deepcopy(page), "total_size": len(items), "next_page_token": token})
        recurring_id, _, verb = rest[0].partition(":")
        if recurring_id not in self.recurring:
            raise KfpError(404, f"Not found error: Failed to get recurring run {recurring_id}")
        recurring = self.recurring[recurring_id]
        if len(rest) == 1 and not verb and req.method == "GET":
            return Response(200, copy.deepcopy(recurring))
        if len(rest) == 1 and not verb and req.method == "DELETE":
            del self.recurring[recurring_id]
            return Response(200, {})
        if verb in ("enable", "disable") and req.method == "POST":
            recurring["status"] = "ENABLED" if verb == "enable" else "DISABLED"
            recurring["updated_at"] = now_rfc3339()
            return Response(200, {})
        raise KfpError(404, "Not Found")

    def _create_recurring(self, body: Any) -> dict[str, Any]:
        self.swagger.check_def(body, "v2beta1RecurringRun")
        if not body.get("display_name"):
            raise KfpError(400, "Invalid input error: The recurring run name is empty. Please specify a valid name")
        ref = body.get("pipeline_version_reference") or {}
        if not body.get("pipeline_spec"):
            if ref.get("pipeline_id") not in self.pipelines:
                raise KfpError(400, "Invalid input error: Failed to create a recurring run due to missing pipeline spec or "
                               "pipeline version reference")
            if ref.get("pipeline_version_id") and ref["pipeline_version_id"] not in self.versions:
                raise KfpError(404, f"Not found error: Failed to get pipeline version {ref['pipeline_version_id']}")
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        periodic = (body.get("trigger") or {}).get("periodic_schedule")
        if not cron and not periodic:
            raise KfpError(400, "Invalid input error: Trigger is required: a cron schedule or a periodic schedule")
        if cron and not _valid_cron(cron):
            raise KfpError(400, f"Invalid input error: Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). Error: {cron!r}")
        concurrency = int(body.get("max_concurrency") or 0)
        if not 1 <= concurrency <= 10:
            raise KfpError(400, f"Invalid input error: max concurrency of recurring run must be within [1, 10], got {concurrency}")
        now = now_rfc3339()
        recurring = {**copy.deepcopy(body), "recurring_run_id": str(uuid.uuid4()), "created_at": now, "updated_at": now,
                     "status": "DISABLED" if body.get("mode") == "DISABLE" else "ENABLED",
                     "experiment_id": body.get("experiment_id") or self._default_experiment(),
                     "max_concurrency": str(concurrency), "namespace": body.get("namespace", "")}
        self.recurring[recurring["recurring_run_id"]] = recurring
        return copy.deepcopy(recurring)

    # -- runs

    def _runs(self, req: Request, rest: list[str]) -> Response:
        if not rest and req.method == "POST":
            return Response(200, self._create_run(req.json()))
        if not rest and req.method == "GET":
            namespace = req.query.get("namespace", "")
            if req.query.get("experiment_id") in self.experiments:
                namespace = self.experiments[req.query["experiment_id"]].get("namespace", "")
            self._authorize(namespace, "list runs")
            items = [r for r in self.runs.values()
                     if (not req.query.get("experiment_id") or r["experiment_id"] == req.query["experiment_id"])
                     and (not self.multi_user or self._run_namespace(r) == namespace)]
            items = apply_filter(items, req.query.get("filter", ""))
            page, token = _page(_sorted(items, req.query.get("sort_by", "")), req.query)
            return Response(200, {"runs": copy.deepcopy(page), "total_size": len(items), "next_page_token": token})
        run_id, _, verb = rest[0].partition(":")
        if run_id not in self.runs:
            raise KfpError(404, f"Not found error: Failed to get run {run_id}: ResourceNotFoundError: Run {run_id} not found")
        if self.multi_user:
            self._authorize(self._run_namespace(self.runs[run_id]), "get a run" if not verb else f"{verb} a run")
        if len(rest) == 1 and not verb and req.method == "GET":
            return Response(200, copy.deepcopy(self.runs[run_id]))
        if verb == "terminate" and req.method == "POST":
            run = self.runs[run_id]
            if run["state"] not in TERMINAL and run["state"] != "CANCELING":
                self._transition(run, "CANCELING")
            return Response(200, {})
        raise KfpError(404, "Not Found")

    def _create_run(self, body: Any) -> dict[str, Any]:
        self.swagger.check_def(body, "v2beta1Run")
        if not body.get("display_name"):
            raise KfpError(400, "Invalid input error: The run name is empty. Please specify a valid name")
        ref = body.get("pipeline_version_reference") or {}
        if not body.get("pipeline_spec") and not ref.get("pipeline_id"):
            raise KfpError(400, "Invalid input error: Failed to create a run due to missing pipeline spec or pipeline "
                           "version reference. Please specify a pipeline spec or a pipeline version reference")
        spec = body.get("pipeline_spec") or {}
        if "pipeline_spec" in spec:  # kfp's client form for a pipeline with a platform spec
            if set(spec) - {"pipeline_spec", "platform_spec"}:
                raise KfpError(400, f"Invalid input error: unknown keys beside pipeline_spec: {sorted(set(spec) - {'pipeline_spec', 'platform_spec'})}")
            if "platform_spec" in spec and "kubernetes" not in (spec["platform_spec"] or {}).get("platforms", {}):
                raise KfpError(400, "Invalid input error: platform spec without platforms.kubernetes")
        if ref.get("pipeline_id") and ref["pipeline_id"] not in self.pipelines:
            raise KfpError(404, f"Not found error: Failed to get pipeline {ref['pipeline_id']}")
        for plugin, value in (body.get("plugins_input") or {}).items():
            if plugin != "mlflow":
                raise KfpError(400, f"Invalid input error: unknown plugin {plugin!r} in plugins_input")
            unknown = set(value) - MLFLOW_PLUGIN_KEYS
            if unknown:
                raise KfpError(400, f"Invalid input error: unknown fields in plugins_input.mlflow: {sorted(unknown)}")
        if self.multi_user:
            exp = self.experiments.get(body.get("experiment_id") or "")
            if not exp or not exp.get("namespace"):
                raise KfpError(400, "Failed to create a new run: Invalid input error: A run cannot have an empty "
                               "namespace in multi-user mode")
            self._authorize(exp["namespace"], "create a run")
        exp_id = body.get("experiment_id") or self._default_experiment()
        if exp_id not in self.experiments:
            raise KfpError(404, f"Not found error: Failed to get experiment {exp_id}")
        now = now_rfc3339()
        run = {**copy.deepcopy(body), "run_id": str(uuid.uuid4()), "experiment_id": exp_id,
               "storage_state": "AVAILABLE", "created_at": now, "scheduled_at": now, "finished_at": EPOCH,
               "state_history": [], "service_account": body.get("service_account", "pipeline-runner")}
        if ref.get("pipeline_id") and not ref.get("pipeline_version_id"):
            latest = [v for v in self.versions.values() if v["pipeline_id"] == ref["pipeline_id"]]
            run["pipeline_version_reference"]["pipeline_version_id"] = latest[-1]["pipeline_version_id"]
        if body.get("plugins_input", {}).get("mlflow") and not body["plugins_input"]["mlflow"].get("disabled"):
            run["plugins_output"] = {"mlflow": {"state": "PLUGIN_RUNNING", "entries": {
                "experiment_name": {"value": body["plugins_input"]["mlflow"].get("experiment_name", "KFP-Default"),
                                    "render_type": "TEXT"}}}}
        self.runs[run["run_id"]] = run
        self._transition(run, "PENDING")
        return copy.deepcopy(run)

    def _run_namespace(self, run: dict[str, Any]) -> str:
        """A v2beta1 Run has no namespace field: it is its experiment's."""
        return (self.experiments.get(run.get("experiment_id", "")) or {}).get("namespace", "")

    def _transition(self, run: dict[str, Any], state: str) -> None:
        run["state"] = state
        run["state_history"].append({"update_time": now_rfc3339(), "state": state})
        if state in TERMINAL:
            run["finished_at"] = now_rfc3339()
            mlflow = (run.get("plugins_output") or {}).get("mlflow")
            if mlflow:
                mlflow["state"] = "PLUGIN_SUCCEEDED" if state == "SUCCEEDED" else "PLUGIN_FAILED"
        self.timeline[run["run_id"]] = (state, time.monotonic())
        self.record_change(f"runs/{run['run_id']}", state)

    def _outcome(self, run: dict[str, Any]) -> tuple[str, float]:
        params = (run.get("runtime_config") or {}).get("parameters") or {}
        outcome = params.get("double_outcome")
        if outcome is None:
            outcome = next((o for sub, o in self.behaviour.outcomes.items() if sub in run["display_name"]), self.behaviour.outcome)
        seconds = params.get("double_run_seconds")
        return str(outcome).upper(), float(seconds) if seconds is not None else self.behaviour.run_seconds

    def step(self) -> None:
        now = time.monotonic()
        with self.lock:
            for run in self.runs.values():
                state, since = self.timeline[run["run_id"]]
                outcome, run_seconds = self._outcome(run)
                if state == "PENDING" and now - since >= self.behaviour.pending_seconds:
                    self._transition(run, "RUNNING")
                elif state == "RUNNING" and outcome != "HANG" and now - since >= run_seconds:
                    if outcome == "FAILED":
                        run["error"] = {"code": 2, "message": "Run failed: injected failure in task 'train'", "details": []}
                    self._transition(run, "FAILED" if outcome == "FAILED" else "SUCCEEDED")
                elif state == "CANCELING" and now - since >= self.behaviour.cancel_seconds:
                    self._transition(run, "CANCELED")
