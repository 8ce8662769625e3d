"""The child process of a local pipeline run: `python -m shared.backends.local.kfp_exec REQUEST RESULT`.

It runs in its own process group (started by `pipeline.PipelineRunner`), so a cancel kills it together
with the task subprocesses kfp.local starts. It loads the pipeline (a `module:function` or a compiled
YAML), turns it into pipeline IR, rewrites every executor so that no task pip-installs anything
(a local run must work offline, with the packages of this interpreter), coerces the parameters to
the pipeline's declared types and runs it with `kfp.local`. The outcome goes to the RESULT JSON file:
`{"outputs": {...}}` or `{"error": "..."}`.

Exit codes: 0 succeeded, 1 the run failed, 2 bad input found before anything ran.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.errors import SpecError
from shared.specs.pipeline_ir import (  # noqa: F401 - the child process and tests use them from here
    MLFLOW_PARAMETERS,
    coerce,
    load_ir,
    pipeline_arguments,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# pip options of the generated install command that take a value (see kfp.dsl.component_factory).
PIP_VALUE_OPTIONS = {"--index-url", "--extra-index-url", "--trusted-host", "-i", "-f", "--find-links"}


@dataclass(frozen=True)
class Request:
    """What the runner asks the child to run (written by the runner as JSON)."""

    pipeline: str
    base_dir: str
    parameters: Mapping[str, Any]
    pipeline_root: str
    work_dir: str  # scratch space for the compiled IR and kfp.local's workspace
    enable_caching: bool = False


# ---------------------------------------------------------------- loading


# ---------------------------------------------------------------- removing pip installs


def rewrite_executors(ir: dict[str, Any]) -> None:
    """Drop each lightweight component's pip-install wrapper, in place.

    The compiled command is `sh -c <install script ending in "$0" "$@"> sh -ec <run script> <code>`:
    after installing, the wrapper execs its own arguments, so those arguments alone are exactly
    what would have run next. Whatever the script would have installed must already be here.
    """
    executors = ir.get("deploymentSpec", {}).get("executors", {})
    for label, executor in executors.items():
        container = executor.get("container")
        if not container:
            continue
        command = list(container.get("command", []))
        if not _is_install_wrapper(command):
            continue
        component = _component_name(ir, label)
        for requirement in _requirements(command[2]):
            _check_installed(component, requirement)
        container["command"] = command[3:]


def _is_install_wrapper(command: list[str]) -> bool:
    return (
        len(command) > 3
        and command[:2] == ["sh", "-c"]
        and "pip install" in command[2]
        and command[2].rstrip().endswith('"$0" "$@"')
    )


def _component_name(ir: Mapping[str, Any], executor_label: str) -> str:
    for name, component in ir.get("components", {}).items():
        if component.get("executorLabel") == executor_label:
            return name.removeprefix("comp-")
    return executor_label.removeprefix("exec-")


def _requirements(script: str) -> list[str]:
    """The requirement strings of every `pip install` in the generated install script."""
    requirements = []
    for part in script.split("&&"):
        if "pip install" not in part:
            continue
        skip_next = False
        for token in shlex.split(part.split("pip install", 1)[1]):
            if skip_next:
                skip_next = False
            elif token in PIP_VALUE_OPTIONS:
                skip_next = True
            elif not token.startswith("-"):
                requirements.append(token)
    return requirements


def _check_installed(component: str, requirement: str) -> None:
    """Raise unless `requirement` is installed for this interpreter (a version mismatch only warns)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        raise SpecError(
            f"components.{component}",
            f"package {requirement!r} cannot be checked locally and local runs never pip-install; "
            "install it in this environment and name it in packages_to_install by its project name",
        ) from None
    if req.marker is not None and not req.marker.evaluate():
        return
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        raise SpecError(
            f"components.{component}",
            f"package {requirement!r} (packages_to_install) is not installed here and local runs "
            f"never pip-install: install it in this environment ({sys.executable})",
        ) from None
    if req.name.lower() != "kfp" and not req.specifier.contains(installed, prereleases=True):
        # Installed is what counts: a cluster image's pin should not stop a local run, but say so.
        print(
            f"warning: component {component!r} asks for {requirement!r} (packages_to_install); "
            f"running with the installed version {installed}",
            flush=True,
        )


# ---------------------------------------------------------------- container components


def container_components(ir: dict[str, Any]) -> list[str]:
    """Rewrite each container component (an image's command, not a lightweight Python function)
    to run on this host through `host_launcher`, in place; their component names.

    The launcher gets the component's output paths (as placeholders kfp.local resolves) so that it
    can create their folders, as KFP's launcher does on a cluster.
    """
    found = []
    for label, executor in (ir.get("deploymentSpec", {}).get("executors") or {}).items():
        container = executor.get("container")
        if container is None:
            continue
        command = [*container.get("command", []), *container.get("args", [])]
        if any("kfp.dsl.executor_main" in str(part) for part in command):
            continue
        component = _component_by_executor(ir, label)
        outputs = component.get("outputDefinitions") or {}
        placeholders = [
            *(f"{{{{$.outputs.parameters['{name}'].output_file}}}}" for name in outputs.get("parameters") or {}),
            *(f"{{{{$.outputs.artifacts['{name}'].path}}}}" for name in outputs.get("artifacts") or {}),
        ]
        launcher = [sys.executable, "-m", "shared.backends.local.host_launcher"]
        for placeholder in placeholders:
            launcher += ["--output", placeholder]
        container["command"] = [*launcher, "--", *container.get("command", [])]
        found.append(_component_name(ir, label))
    return found


def _component_by_executor(ir: Mapping[str, Any], executor_label: str) -> Mapping[str, Any]:
    for component in (ir.get("components") or {}).values():
        if component.get("executorLabel") == executor_label:
            return component
    return {}


def _allow_container_components() -> None:
    """kfp.local's SubprocessRunner refuses container components only because it cannot run their
    image; here the image is not used at all (a run on this host, like a training replica), so
    that one check is lifted for this child process. Containerized Python components stay refused:
    their code is inside the image."""
    from kfp.local import subprocess_task_handler

    subprocess_task_handler.SubprocessTaskHandler.validate_not_container_component = (  # type: ignore[method-assign]
        lambda self, full_command: None
    )


# ---------------------------------------------------------------- parameters


def run(request: Request) -> dict[str, Any]:
    """Run the pipeline with kfp.local; the JSON-safe pipeline outputs."""
    from kfp import components, local

    from shared.backends.local.admission import check_kfp_platform

    docs = load_ir(request.pipeline, request.base_dir, request.work_dir)
    ignored = check_kfp_platform(docs[1] if len(docs) > 1 else None)
    if ignored:
        print(
            "[kubeflow-tasks] kfp-kubernetes settings without effect on this machine, ignored: "
            + ", ".join(ignored),
            flush=True,
        )
    rewrite_executors(docs[0])
    containers = container_components(docs[0])
    if containers:
        _allow_container_components()
        print(
            "[kubeflow-tasks] container components run on this host like training replicas: their image "
            f"is not used, so their command must exist here ({', '.join(containers)})",
            flush=True,
        )
    arguments = pipeline_arguments(docs[0], request.parameters, os.environ)
    local_ir = Path(request.work_dir, "pipeline-local.yaml")  # what ran, kept for whoever debugs it
    local_ir.parent.mkdir(parents=True, exist_ok=True)
    local_ir.write_text(yaml.safe_dump(docs[0], sort_keys=False))  # the platform spec has no use here
    pipeline = components.load_component_from_file(str(local_ir))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=request.pipeline_root,
        workspace_root=str(Path(request.work_dir, "workspace")),
        raise_on_error=True,
        enable_caching=request.enable_caching,
    )
    task = pipeline(**arguments)
    return {name: json_safe(value) for name, value in task.outputs.items()}


def json_safe(value: Any) -> Any:
    """Parameters as they are; artifacts (anything with a `uri`) as their local path or URI."""
    uri = getattr(value, "uri", None)
    if isinstance(uri, str):
        return getattr(value, "path", None) or uri
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m shared.backends.local.kfp_exec REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request_path, result_path = args
    request = Request(**json.loads(Path(request_path).read_text()))
    try:
        result: dict[str, Any] = {"outputs": run(request)}
        code = 0
    except SpecError as exc:
        result, code = {"error": str(exc)}, 2
    except Exception as exc:  # a failed run: kfp.local raises RuntimeError, tasks anything
        result, code = {"error": " ".join(ANSI.sub("", f"{type(exc).__name__}: {exc}").split())}, 1
    if "error" in result:
        print(f"kfp_exec: {result['error']}", flush=True)
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
