"""Names and markers that make submissions idempotent on the cluster.

A key can be anything a scheduler builds (slashes, colons, any length), so the cluster sees it three
ways: a label with its SHA-256 (labels are short and restricted, and a label selector finds every
attempt in one request), an annotation with the key itself (to tell a hash collision from a match),
and the attempt number. Object names are deterministic in (spec name, key, attempt), so a retried
create meets its own earlier success as 409 AlreadyExists instead of making a second object.
"""

from __future__ import annotations

import hashlib
import re

DOMAIN = "kubeflow-tasks.dev"
KEY_HASH_LABEL = f"{DOMAIN}/key-hash"
KEY_ANNOTATION = f"{DOMAIN}/key"
ATTEMPT_ANNOTATION = f"{DOMAIN}/attempt"
SPEC_NAME_ANNOTATION = f"{DOMAIN}/spec-name"
CANCELLED_ANNOTATION = (
    f"{DOMAIN}/cancelled"  # written before our delete: any process can tell it from an external one
)
KEY_HASH_CHARS = 40  # label values are at most 63 characters
DIGEST_IN_NAME = 8

# Name limits of the admission webhooks: Katib experiments 40, training jobs 63 (DNS-1035 labels).
MAX_NAME = {"Experiment": 40, "PyTorchJob": 63, "TFJob": 63}
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_HASH_CHARS]


def object_name(spec_name: str, key: str, attempt: int, max_len: int = 63) -> str:
    """`<slug>-<digest>-<attempt>`: a DNS-1035 label of at most `max_len` characters."""
    suffix = f"-{key_hash(key)[:DIGEST_IN_NAME]}-{attempt}"
    slug = re.sub(r"[^a-z0-9-]+", "-", spec_name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"r-{slug}".rstrip("-")
    slug = slug[: max_len - len(suffix)].rstrip("-")
    return f"{slug}{suffix}"


def run_display_name(spec_name: str, key: str, attempt: int) -> str:
    """A KFP run's display name; runs have no labels, so the name is what `find` looks up."""
    return f"{spec_name}-{key_hash(key)[:16]}-{attempt}"


def attempt_of_display_name(display_name: str) -> int:
    tail = display_name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 1
