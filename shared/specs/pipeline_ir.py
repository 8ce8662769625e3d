"""Compiled pipeline IR for any backend: load (compile if needed) and bind the run's parameters.

Both backends read a pipeline here: the cluster backend sends the IR to the KFP server, the local
one hands it to kfp.local. Reading and validating a package is `shared.specs.kfp_package`'s.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import SpecError

FUNCTION_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
MLFLOW_PARAMETERS = {
    "mlflow_run_id": "MLFLOW_RUN_ID",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_experiment_id": "MLFLOW_EXPERIMENT_ID",
}


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
