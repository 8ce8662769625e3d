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

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FUNCTION_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
MLFLOW_PARAMETERS = {
    "mlflow_run_id": "MLFLOW_RUN_ID",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_experiment_id": "MLFLOW_EXPERIMENT_ID",
}
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


def load_ir(pipeline: str, base_dir: str, work_dir: str) -> list[dict[str, Any]]:
    """The pipeline's IR documents (the PipelineSpec first, then an optional platform spec).

    A `module:function` is compiled first; the reading and validation are the spec layer's
    (`shared.specs.kfp_package`), the same for both backends.
    """
    from shared.specs.kfp_package import read_package

    path = Path(base_dir, pipeline)
    if not path.is_file():
        if not FUNCTION_REFERENCE.fullmatch(pipeline):
            raise SpecError(
                "pipeline", f"expected 'module:function' or a compiled pipeline file, got {pipeline!r}"
            )
        path = Path(work_dir, "pipeline.yaml")
        _compile(_import_function(pipeline, base_dir), path)
    return read_package(str(path)).ir_documents()


def _import_function(reference: str, base_dir: str) -> Any:
    module_name, attr = reference.split(":")
    for folder in reversed(_search_path(module_name, base_dir)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError("pipeline", f"cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError("pipeline", f"module {module_name!r} has no attribute {attr!r}") from None


def _search_path(module_name: str, base_dir: str) -> list[str]:
    """Where `module_name` may live: base_dir, the current directory, and the folder holding its
    top-level package when base_dir is inside that package (a spec file kept beside its pipeline)."""
    folders = [base_dir, os.getcwd()]
    top = module_name.split(".")[0]
    for folder in [Path(base_dir), *Path(base_dir).parents]:
        if (folder / top).is_dir():
            folders.append(str(folder))
            break
    return folders


def _compile(function: Any, path: Path) -> None:
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        compiler.Compiler().compile(function, str(path))
    except Exception as exc:  # the compiler raises many types; all mean "not a usable pipeline"
        raise SpecError("pipeline", f"cannot compile {function!r}: {exc}") from exc


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


def pipeline_arguments(
    ir: Mapping[str, Any], given: Mapping[str, Any], env: Mapping[str, str]
) -> dict[str, Any]:
    """The arguments of the run: `given` coerced to the declared types, plus the MLflow hand-off.

    CLI values arrive as strings, so every value is converted to the parameter's IR type; unknown
    names and missing required parameters are errors, found before anything runs.
    """
    declared = ir.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    arguments = {}
    for name, value in given.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise SpecError(f"parameters.{name}", f"the pipeline has no such parameter (it has: {known})")
        arguments[name] = coerce(f"parameters.{name}", declared[name].get("parameterType", "STRING"), value)
    for name, variable in MLFLOW_PARAMETERS.items():
        if name in declared and name not in arguments and env.get(variable):
            arguments[name] = env[variable]
    for name, definition in declared.items():
        if name not in arguments and "defaultValue" not in definition and not definition.get("isOptional"):
            raise SpecError(f"parameters.{name}", "required by the pipeline, but not given")
    return arguments


def coerce(path: str, parameter_type: str, value: Any) -> Any:
    """`value` as the Python type kfp expects for an IR `parameterType`."""
    if parameter_type == "NUMBER_INTEGER":
        return _to_int(path, value)
    if parameter_type == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise SpecError(path, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SpecError(path, f"expected a number, got {value!r}") from None
    if parameter_type == "BOOLEAN":
        return _to_bool(path, value)
    if parameter_type in ("LIST", "STRUCT"):
        expected = list if parameter_type == "LIST" else dict
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if not isinstance(value, expected):
            what = "a list" if expected is list else "a mapping"
            raise SpecError(path, f"expected {what} (YAML, or JSON text), got {value!r}")
        return value
    if isinstance(value, dict | list):
        raise SpecError(path, f"expected a string, got {value!r}")
    return value if isinstance(value, str) else str(value)


def _to_int(path: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise SpecError(path, f"expected an integer, got {value!r}")


def _to_bool(path: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise SpecError(path, f"expected true or false, got {value!r}")


# ---------------------------------------------------------------- running


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
