"""Compiled pipeline IR for any backend: load (compile if needed) and bind the run's parameters.

The cluster backend reads the IR through here so that it does not import the local backend.
For now the functions are the local executor's (`shared.backends.local.kfp_exec`), where they were
written; moving their bodies here is planned separately (issue 11), callers need not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def load_ir(pipeline: str, base_dir: str, work_dir: str) -> list[dict[str, Any]]:
    """The pipeline's IR documents (the PipelineSpec first, then an optional platform spec)."""
    from shared.backends.local.kfp_exec import load_ir as load

    return load(pipeline, base_dir, work_dir)


def pipeline_arguments(
    ir: Mapping[str, Any], given: Mapping[str, Any], env: Mapping[str, str]
) -> dict[str, Any]:
    """The run's arguments: `given` coerced to the declared types, plus the MLflow hand-off."""
    from shared.backends.local.kfp_exec import pipeline_arguments as bind

    return bind(ir, given, env)
