"""The fingerprint of a submission: what a retry under the same key must match to adopt the work.

Why: a key names a task instance, not the work. A retry of the same task sends the same spec and
parameters and may adopt; the same key with another spec (an edited manifest, other `--param`
values) while the first work runs or after it succeeded is a mistake that must not silently return
the other work's result. Both backends store this value with the work and the operations layer
compares it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.specs.model import Spec


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, non-JSON values as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def fingerprint_of(spec: Spec) -> str:
    """SHA-256 of the kind and the parsed manifest (parameters substituted or merged in)."""
    return hashlib.sha256(canonical({"kind": spec.kind.value, "manifest": spec.manifest}).encode()).hexdigest()
