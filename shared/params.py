"""Task parameters: one rule for turning a scheduler's values into text, and their limits.

Why one rule: the Airflow operators and the DolphinScheduler tasks used to turn the same value into
different text (`str({'a': 1})` is `{'a': 1}`, which no pipeline parses as a dict). Now both call
`to_text`: strings as they are, everything else as JSON (`true`, `3`, `0.5`, `{"a": 1}`, `[1, 2]`),
which is also how a pipeline run's typed inputs read them back (see `pipeline.coerce`).

Why limits: a parameter becomes a process argument or environment value; the kernel refuses one over
128 KiB (E2BIG) or holding a NUL byte, so they are refused here, naming the parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.errors import SpecError

MAX_VALUE = 64 * 1024  # bytes of one value
MAX_TOTAL = 512 * 1024  # bytes of all names and values together
MAX_COUNT = 1000


def to_text(value: Any) -> str:
    """A parameter value as text: a string unchanged, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(", ", ": "), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise SpecError("params", f"a {type(value).__name__} value cannot be a parameter (use text or JSON types)") from None


def texts(params: Mapping[Any, Any] | None) -> dict[str, str]:
    """Every value through `to_text`; keys as text."""
    return {str(k): to_text(v) for k, v in (params or {}).items()}


def check_params(params: Mapping[str, Any] | None, field: str = "--param") -> None:
    """Names non-empty and printable, values within the limits, no NUL byte anywhere."""
    params = params or {}
    if len(params) > MAX_COUNT:
        raise SpecError(field, f"at most {MAX_COUNT} parameters, got {len(params)}")
    total = 0
    for name, value in params.items():
        name = str(name)
        if not name.strip():
            raise SpecError(field, "a parameter name must not be empty")
        if "\x00" in name:
            raise SpecError(field, f"parameter name {name[:40]!r} must not contain a NUL byte")
        text = value if isinstance(value, str) else to_text(value)
        if "\x00" in text:
            raise SpecError(f"{field} {name}", "must not contain a NUL byte")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE:
            raise SpecError(f"{field} {name}", f"value is {size} bytes; at most {MAX_VALUE} bytes")
        total += size + len(name)
    if total > MAX_TOTAL:
        raise SpecError(field, f"parameters total {total} bytes; at most {MAX_TOTAL} bytes")
