"""Pipelines uploaded to KFP, found by name and version: what `kfp run submit --pipeline-name` runs.

A run of an uploaded pipeline carries `pipeline_version_reference {pipeline_id, pipeline_version_id}`
instead of an inline pipeline spec. The version is resolved here, before anything is created, so a
name or version that does not exist is bad input naming the field, and the parameters are checked
against the version's own inputs. Without a version name the newest version (by creation time) runs:
what the KFP server itself does with a reference that names no version, made explicit so the run
records which one it was.

Where: multi-user KFP keeps pipelines per profile namespace and shares those uploaded without one,
so the run's namespace is searched first, then the shared pipelines (kfp.Client's `get_pipeline_id`
asks the shared ones only). Two pipelines of one name in one place are ambiguous, as for kfp.Client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.backends.kubernetes.access import Kfp
from shared.backends.kubernetes.pipelines import equals
from shared.backends.kubernetes.recurring import PipelineVersion, version_named
from shared.errors import SpecError
from shared.specs.model import PipelineRunSpec


def _api(kfp: Kfp) -> Any:
    import kfp_server_api

    return kfp_server_api.PipelineServiceApi(kfp.api_client())


def find_pipeline(kfp: Kfp, name: str, namespace: str | None) -> dict[str, Any]:
    """The pipeline named `name` in `namespace`, else among the shared ones; SpecError when none or two."""
    api = _api(kfp)
    places = list(dict.fromkeys([namespace or "", ""]))
    for place in places:
        body = kfp.request(
            api.pipeline_service_list_pipelines,
            filter=equals("display_name", name),
            page_size=10,
            **({"namespace": place} if place else {}),
        )
        found = [p for p in body.get("pipelines") or [] if p.get("display_name") == name]
        if len(found) > 1:
            raise SpecError(
                "spec.pipelineName",
                f"{len(found)} pipelines are named {name!r}"
                + (f" in namespace {place!r}" if place else "")
                + "; the name must be unique",
            )
        if found:
            return found[0]
    where = " or ".join(repr(p) if p else "the shared pipelines" for p in places)
    raise SpecError("spec.pipelineName", f"no pipeline named {name!r} on {kfp.host} (looked in {where})")


def find_version(kfp: Kfp, pipeline: Mapping[str, Any], version: str | None) -> dict[str, Any]:
    """The version named `version` of `pipeline`, or its newest; SpecError when there is none."""
    api = _api(kfp)
    pipeline_id, name = pipeline["pipeline_id"], pipeline.get("display_name")
    if version is None:
        body = kfp.request(
            api.pipeline_service_list_pipeline_versions, pipeline_id, sort_by="created_at desc", page_size=1
        )
        found = body.get("pipeline_versions") or []
        if not found:
            raise SpecError("spec.pipelineName", f"pipeline {name!r} has no version to run")
        return found[0]
    found = version_named(kfp, pipeline_id, version)
    if found is None:
        newest = kfp.request(
            api.pipeline_service_list_pipeline_versions, pipeline_id, sort_by="created_at desc", page_size=5
        )
        known = ", ".join(repr(v.get("display_name")) for v in newest.get("pipeline_versions") or []) or "none"
        raise SpecError("spec.pipelineVersion", f"pipeline {name!r} has no version {version!r} (newest: {known})")
    return found


def resolve(kfp: Kfp, spec: PipelineRunSpec, namespace: str | None) -> tuple[PipelineVersion, dict[str, Any]]:
    """The version to run and its PipelineSpec (whose inputs the parameters are checked against)."""
    assert spec.pipeline_name, "resolve() is for runs of uploaded pipelines"
    pipeline = find_pipeline(kfp, spec.pipeline_name, namespace)
    version = find_version(kfp, pipeline, spec.pipeline_version)
    ir = version.get("pipeline_spec")
    if not ir:  # a list may leave the spec out; the version itself has it
        ir = kfp.request(
            _api(kfp).pipeline_service_get_pipeline_version, pipeline["pipeline_id"], version["pipeline_version_id"]
        ).get("pipeline_spec")
    if isinstance(ir, Mapping) and "pipeline_spec" in ir:  # uploaded with a platform spec
        ir = ir["pipeline_spec"]
    found = PipelineVersion(
        pipeline["pipeline_id"],
        spec.pipeline_name,
        version["pipeline_version_id"],
        str(version.get("display_name") or ""),
        created=False,
    )
    return found, dict(ir or {})
