"""DolphinScheduler OUT parameters: `${setValue(name=value)}` lines that cannot be forged or broken.

DolphinScheduler's worker scans every line of the task's output (stdout and stderr merged) for
`${setValue(` or `#{setValue(`, collects up to the next `)}` (across up to 1024 lines), splits on the
first `=` without trimming, and exports the pair when the name is declared `direct=OUT`
(TaskOutputParameterParser, AbstractParameters.dealOutParam). Downstream tasks then get the value
substituted as text wherever `${name}` appears, recursively, and `$[...]` as a date expression.

So a value we print must hold no line break (it would end our line and let the rest be parsed
anew), no `)}` (it would end the value early and the remainder could start another setValue), and
no `${`, `#{` or `$[` (they would be expanded again downstream). `safe_value` breaks exactly those
sequences and keeps everything else, so ids, URLs and numbers pass unchanged. Every other line our
CLI prints in this mode goes through `defuse`, so a log line of the remote work can never set one
of our OUT parameters either.

The names are fixed per spec (`out_parameter_names`): the task types declare exactly these as OUT
parameters and the CLI prints exactly these, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from shared.specs.model import ExperimentSpec, Spec

BASE_NAMES = ("id", "name", "state", "url", "mlflow_run_id")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_BREAK = {")}": ") }", "${": "$ {", "#{": "# {", "$[": "$ ["}
_NAME = re.compile(r"[^A-Za-z0-9_]")


def out_parameter_names(spec: Spec) -> list[str]:
    """The OUT parameters of a task running `spec`: ids, state, URL, MLflow run id, and for an
    experiment its best parameters (as JSON, and one `best_<name>` per search-space parameter)
    and best metrics (JSON)."""
    names = list(BASE_NAMES)
    if isinstance(spec, ExperimentSpec):
        names.append("best_parameters")
        names.extend(f"best_{safe_name(p.name)}" for p in spec.parameters)
        names.append("best_metrics")
    return names


def safe_name(name: str) -> str:
    return _NAME.sub("_", name)


def safe_value(value: Any) -> str:
    """`value` as text that stays one setValue value: no line break, no `)}`, `${`, `#{`, `$[`."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = _LINE_BREAKS.sub(" ", text)
    # One pass per sequence is enough: a replacement never creates another of the four sequences.
    for sequence, broken in _BREAK.items():
        text = text.replace(sequence, broken)
    return text


def defuse(line: str) -> str:
    """A log line that DolphinScheduler's parser cannot read as a setValue."""
    return line.replace("{setValue(", "{setValue (")


def _values(result: Mapping[str, Any]) -> dict[str, Any]:
    values = {name: result.get(name) for name in BASE_NAMES}
    outputs = result.get("outputs") or {}
    if "best_parameters" in outputs:
        best = outputs.get("best_parameters") or {}
        values["best_parameters"] = best
        values.update({f"best_{safe_name(k)}": v for k, v in best.items()})
        values["best_metrics"] = outputs.get("best_metrics") or {}
    return values


def setvalue_lines(result: Mapping[str, Any], names: Sequence[str]) -> Iterator[str]:
    """One `${setValue(name=value)}` line per declared name that has a value in `result` (the
    CLI's result dict: handle, status and `outputs`)."""
    values = _values(result)
    for name in names:
        value = values.get(name)
        if value is None or value == "":
            continue
        yield f"${{setValue({name}={safe_value(value)})}}"
