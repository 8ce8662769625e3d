"""DolphinScheduler OUT parameters: `${setValue(name=value)}` lines that cannot be forged or broken.

DolphinScheduler's worker scans every stdout line for `${setValue(key=value)}` (or `#{...}`) and splits
on the first `=` without trimming; a value may span lines until `)}`. So a value must hold no line
break, no `)}` that would end it early, and no `${`/`#{` that would start another parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

_NAME = re.compile(r"[^A-Za-z0-9_]")


def safe_name(name: str) -> str:
    return _NAME.sub("_", name)


def safe_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = text.replace("\r", " ").replace("\n", " ")
    # Break the three sequences the parser reacts to, keeping the text readable.
    return text.replace(")}", ") }").replace("${", "$ {").replace("#{", "# {")


def setvalue_lines(result: Mapping[str, Any]) -> Iterator[str]:
    """The result of a run as OUT parameters: ids, state, URL, MLflow run id, and flattened outputs."""
    names = ("id", "name", "state", "url", "mlflow_run_id", "attempt", "resource", "namespace")
    for name in names:
        if result.get(name) not in (None, ""):
            yield f"${{setValue({name}={safe_value(result[name])})}}"
    outputs = result.get("outputs") or {}
    for name, value in outputs.items():
        if isinstance(value, Mapping) and name.startswith("best_"):
            for inner, inner_value in value.items():
                yield f"${{setValue({safe_name(name + '_' + inner)}={safe_value(inner_value)})}}"
        yield f"${{setValue({safe_name(name)}={safe_value(value)})}}"
