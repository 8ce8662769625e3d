"""Idempotency keys: a scheduler's identity of a task instance, and its digest.

Every backend stores the key on the remote object and finds the work again by its digest (a run
directory name, a label value, an MLflow tag): a digest holds only hex digits, whatever the key holds.
"""

from __future__ import annotations

import hashlib
import re
import uuid


def task_key(*parts: object) -> str:
    """A key from a scheduler's identity of a task instance (e.g. dag_id, task_id, run_id, map_index)."""
    return "/".join(str(p) for p in parts)


def new_key() -> str:
    """A key for a one-off submission that nothing will try to adopt."""
    return f"adhoc-{uuid.uuid4().hex}"


def key_digest(key: str) -> str:
    """The SHA-256 of the key as 64 hex digits; callers shorten it where a name limits its length."""
    return hashlib.sha256(key.encode()).hexdigest()


def object_name(spec_name: str, key: str, attempt: int, max_len: int = 63) -> str:
    """`<slug>-<digest>-<attempt>`: a DNS-1035 label of at most `max_len` characters.

    Deterministic in (spec name, key, attempt), so two submitters of the same attempt race for one
    name and the loser finds the winner's object instead of making a second one.
    """
    suffix = f"-{key_digest(key)[:16]}-{attempt}"  # 64 bits of the key: no birthday collisions in practice
    slug = re.sub(r"[^a-z0-9-]+", "-", spec_name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"r-{slug}".rstrip("-")
    slug = slug[: max_len - len(suffix)].rstrip("-")
    return f"{slug}{suffix}"
