"""KFP pipelines, pipeline versions and recurring runs: uploaded and kept once per name or key.

- `upload_pipeline`: the pipeline (by name) and a version named by the content hash of the compiled
  pipeline unless a name is given; uploading the same content again finds that version instead of
  making another (`kfp pipeline upload` / `kfp pipeline upload-version`, made idempotent).
- `apply_recurring_run`: exactly one recurring run per key. KFP v2beta1 cannot update a recurring
  run, so the desired one carries a digest of everything that defines it (pipeline version, cron,
  parameters, concurrency, catch-up, experiment) in its description; applying the same again changes
  nothing, a change replaces it (delete, then create), `disable` / `delete` do what they say.
  Only recurring runs whose description names our key are ever touched.

Creates are not idempotent on the server: each goes through `create_once_then_find`, which looks
for what a lost answer may have created before trying again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from shared.backends.kubernetes import naming
from shared.backends.kubernetes.access import Kfp
from shared.backends.kubernetes.pipelines import (
    create_once_then_find,
    describe,
    equals,
    field_of,
    key_of,
    pipeline_docs,
)
from shared.errors import SpecError
from shared.keys import key_digest
from shared.retry import http_status
from shared.specs.model import PipelineRunSpec

MAX_CONCURRENCY = (1, 10)  # the API's range


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    created: bool  # False when the pipeline already had this version

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline_id": self.pipeline_id,
            "pipeline_name": self.pipeline_name,
            "pipeline_version_id": self.version_id,
            "pipeline_version": self.version_name,
            "created": self.created,
        }


@dataclass(frozen=True)
class Schedule:
    """What a recurring run is to be; `cron` is KFP's six-field form (seconds first)."""

    cron: str
    max_concurrency: int = 1
    no_catchup: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class Applied:
    """What `apply_recurring_run` did: `action` is created, replaced, unchanged, enabled, disabled, deleted or absent."""

    action: str
    key: str
    recurring_run_id: str | None = None
    status: str | None = None
    pipeline: Mapping[str, Any] = field(default_factory=dict)
    removed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "key": self.key,
            "recurring_run_id": self.recurring_run_id,
            "status": self.status,
            **self.pipeline,
            "removed": list(self.removed),
        }


def _apis(kfp: Kfp) -> tuple[Any, Any, Any]:
    import kfp_server_api

    client = kfp.api_client()
    return (
        kfp_server_api.PipelineServiceApi(client),
        kfp_server_api.PipelineUploadServiceApi(client),
        kfp_server_api.RecurringRunServiceApi(client),
    )


def content_version_name(docs: list[dict[str, Any]]) -> str:
    """`v-<12 hex digits>`: the SHA-256 of the compiled pipeline, so the same content is the same version."""
    text = json.dumps(docs, sort_keys=True, separators=(",", ":"))
    return f"v-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def upload_pipeline(
    kfp: Kfp, spec: PipelineRunSpec, *, version_name: str | None = None, namespace: str | None = None
) -> PipelineVersion:
    """The pipeline named `spec.name`, with the version of this content (uploaded when missing)."""
    docs = pipeline_docs(spec)
    version = version_name or content_version_name(docs)
    pipelines_api, uploads, _ = _apis(kfp)
    ns = {"namespace": namespace} if namespace else {}

    def find_pipeline() -> dict[str, Any] | None:
        body = kfp.request(
            pipelines_api.pipeline_service_list_pipelines, filter=equals("display_name", spec.name), page_size=10, **ns
        )
        found = [p for p in body.get("pipelines") or [] if p.get("display_name") == spec.name]
        return min(found, key=lambda p: str(p.get("created_at") or "")) if found else None

    with tempfile.TemporaryDirectory(prefix="kubeflow-tasks-upload-") as scratch:
        path = os.path.join(scratch, f"{spec.name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=True)
        pipeline = find_pipeline()
        if pipeline is None:
            # The upload of a new pipeline makes its first version under the pipeline's name.
            pipeline = create_once_then_find(
                lambda: kfp.request(uploads.upload_pipeline, path, name=spec.name, display_name=spec.name, retry=False, **ns),
                find_pipeline,
            )
        pipeline_id = pipeline["pipeline_id"]
        existing = version_named(kfp, pipeline_id, version)
        if existing is not None:
            return PipelineVersion(pipeline_id, spec.name, existing["pipeline_version_id"], version, False)
        made = create_once_then_find(
            lambda: kfp.request(
                uploads.upload_pipeline_version, path, name=version, display_name=version, pipelineid=pipeline_id,
                retry=False,
            ),
            lambda: version_named(kfp, pipeline_id, version),
        )
        return PipelineVersion(pipeline_id, spec.name, made["pipeline_version_id"], version, True)


def version_named(kfp: Kfp, pipeline_id: str, name: str) -> dict[str, Any] | None:
    """The version of the pipeline with this display name, the oldest if several share it (KFP
    allows that: two uploads racing each other), or None."""
    import kfp_server_api

    body = kfp.request(
        kfp_server_api.PipelineServiceApi(kfp.api_client()).pipeline_service_list_pipeline_versions,
        pipeline_id,
        filter=equals("display_name", name),
        page_size=100,
    )
    found = [v for v in body.get("pipeline_versions") or [] if v.get("display_name") == name]
    return min(found, key=lambda v: str(v.get("created_at") or "")) if found else None


def recurring_display_name(spec_name: str, key: str) -> str:
    """Deterministic in (name, key): two processes applying the same key look for the same name."""
    return naming.run_display_name(spec_name, key, 1).rsplit("-", 1)[0]


def _config_digest(version: PipelineVersion, spec: PipelineRunSpec, schedule: Schedule, experiment_id: str | None) -> str:
    config = {
        "pipeline_version_id": version.version_id,
        "cron": schedule.cron,
        "parameters": {k: str(v) for k, v in spec.parameters.items()},
        "max_concurrency": schedule.max_concurrency,
        "no_catchup": schedule.no_catchup,
        "experiment_id": experiment_id,
        "service_account": spec.service_account,
        "pipeline_root": spec.pipeline_root,
    }
    return key_digest(json.dumps(config, sort_keys=True))[:16]


def _ours(recurring: Mapping[str, Any], key: str) -> bool:
    return key_of(recurring) == key


def _digest_of(recurring: Mapping[str, Any]) -> str | None:
    return field_of(recurring, "config")


def find_recurring_runs(kfp: Kfp, spec_name: str, key: str, namespace: str | None) -> list[dict[str, Any]]:
    """Our recurring runs for `key`, oldest first."""
    _, _, api = _apis(kfp)
    ns = {"namespace": namespace} if namespace else {}
    body = kfp.request(
        api.recurring_run_service_list_recurring_runs,
        filter=equals("display_name", recurring_display_name(spec_name, key)),
        page_size=100,
        **ns,
    )
    found = [r for r in body.get("recurringRuns") or [] if _ours(r, key)]
    return sorted(found, key=lambda r: (str(r.get("created_at") or ""), r["recurring_run_id"]))


def _delete(kfp: Kfp, recurring_run_id: str) -> None:
    _, _, api = _apis(kfp)
    try:
        kfp.request(api.recurring_run_service_delete_recurring_run, recurring_run_id)
    except Exception as exc:
        if http_status(exc) != 404:  # already gone: what we wanted
            raise


def apply_recurring_run(
    kfp: Kfp,
    spec: PipelineRunSpec,
    key: str,
    schedule: Schedule | None,
    *,
    namespace: str | None = None,
    experiment_id: str | None = None,
    version_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Applied:
    """Make the recurring run for `key` be `schedule` (None: delete it)."""
    from shared.specs.pipeline_ir import pipeline_arguments

    _, _, api = _apis(kfp)
    existing = find_recurring_runs(kfp, spec.name, key, namespace)
    if schedule is None:
        for recurring in existing:
            _delete(kfp, recurring["recurring_run_id"])
        removed = tuple(r["recurring_run_id"] for r in existing)
        return Applied("deleted" if removed else "absent", key, removed=removed)

    if spec.pipeline_name:  # an uploaded pipeline: its version is looked up, nothing is uploaded
        from shared.backends.kubernetes.uploaded import resolve

        if version_name:
            raise SpecError("--pipeline-version", "names the version to upload; an uploaded pipeline's version is spec.pipelineVersion")
        version, pipeline = resolve(kfp, spec, namespace)
        pipeline_arguments(pipeline, spec.parameters, env or {})
    else:
        pipeline = pipeline_docs(spec)[0]
        pipeline_arguments(pipeline, spec.parameters, env or {})  # bad parameters fail before any upload
        version = upload_pipeline(kfp, spec, version_name=version_name, namespace=namespace)
    digest = _config_digest(version, spec, schedule, experiment_id)
    keep = next((r for r in existing if _digest_of(r) == digest), None)
    stale = [r for r in existing if r is not keep]
    for recurring in stale:
        _delete(kfp, recurring["recurring_run_id"])
    removed = tuple(r["recurring_run_id"] for r in stale)
    if keep is not None:
        status = keep.get("status")
        wanted = "ENABLED" if schedule.enabled else "DISABLED"
        action = "unchanged" if not removed else "replaced"
        if status != wanted:
            verb = api.recurring_run_service_enable_recurring_run if schedule.enabled else api.recurring_run_service_disable_recurring_run
            kfp.request(verb, keep["recurring_run_id"])
            action, status = ("enabled" if schedule.enabled else "disabled"), wanted
        return Applied(action, key, keep["recurring_run_id"], status, version.to_dict(), removed)

    display_name = recurring_display_name(spec.name, key)
    body: dict[str, Any] = {
        "display_name": display_name,
        "description": describe(key, config=digest),
        "pipeline_version_reference": {"pipeline_id": version.pipeline_id, "pipeline_version_id": version.version_id},
        "runtime_config": {"parameters": pipeline_arguments(pipeline, spec.parameters, env or {})},
        "trigger": {"cron_schedule": {"cron": schedule.cron}},
        "max_concurrency": str(schedule.max_concurrency),
        "no_catchup": schedule.no_catchup,
        "mode": "ENABLE" if schedule.enabled else "DISABLE",
    }
    if spec.pipeline_root:
        body["runtime_config"]["pipeline_root"] = spec.pipeline_root
    if spec.service_account:
        body["service_account"] = spec.service_account
    if experiment_id:
        body["experiment_id"] = experiment_id
    if namespace:
        body["namespace"] = namespace

    def find_new() -> dict[str, Any] | None:
        return next((r for r in find_recurring_runs(kfp, spec.name, key, namespace) if _digest_of(r) == digest), None)

    made = create_once_then_find(
        lambda: kfp.request(api.recurring_run_service_create_recurring_run, body, retry=False), find_new
    )
    action = "replaced" if removed else "created"
    return Applied(action, key, made["recurring_run_id"], made.get("status"), version.to_dict(), removed)


def kfp_cron(cron: str, field_name: str = "--cron") -> str:
    """KFP's cron form (seconds first, six fields) from a five- or six-field expression; SpecError when invalid.

    KFP's scheduler reads six fields (seconds, minutes, hours, day of month, month, day of week); the
    usual five-field line is taken to fire at second 0. Checked with croniter before anything is sent.
    """
    from croniter import croniter

    text = " ".join(str(cron).split())
    fields = text.split(" ")
    if text.startswith("@"):
        full = text
    elif len(fields) == 5:
        full = f"0 {text}"
    elif len(fields) == 6:
        full = text
    else:
        raise SpecError(field_name, f"expected a cron expression of 5 or 6 fields, got {cron!r}")
    if not croniter.is_valid(full, second_at_beginning=not full.startswith("@")):
        raise SpecError(field_name, f"{cron!r} is not a valid cron expression (minute hour day-of-month month day-of-week)")
    return full


def check_concurrency(value: int, field_name: str = "--max-concurrency") -> int:
    low, high = MAX_CONCURRENCY
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(field_name, f"expected {low} to {high}, got {value!r}")
    return value


def schedule_of(
    cron: str | None,
    max_concurrency: int = 1,
    no_catchup: bool = False,
    disable: bool = False,
    delete: bool = False,
    *,
    flags: bool = False,
) -> Schedule | None:
    """The schedule the CLI's, the operator's or the task's arguments ask for (None: delete it),
    checked before anything is contacted. `flags` names the fields as the CLI's options."""

    def name(field_name: str) -> str:
        return f"--{field_name.replace('_', '-')}" if flags else field_name

    if disable and delete:
        raise SpecError(name("disable"), "give disable or delete, not both")
    if not delete and not cron:
        raise SpecError(name("cron"), f"required (or {name('delete')})")
    full = kfp_cron(cron, name("cron")) if cron else None
    check_concurrency(max_concurrency, name("max_concurrency"))
    if delete:
        return None
    assert full is not None
    return Schedule(full, max_concurrency, no_catchup, enabled=not disable)
