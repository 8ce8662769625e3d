"""Names and markers that make submissions idempotent on the cluster.

A key can be anything a scheduler builds (slashes, colons, any length), so the cluster sees it three
ways: a label with its SHA-256 (labels are short and restricted, and a label selector finds every
attempt in one request), an annotation with the key itself (to tell a hash collision from a match),
and the attempt number. Object names are deterministic in (spec name, key, attempt), so a retried
create meets its own earlier success as 409 AlreadyExists instead of making a second object.
"""

from __future__ import annotations

from shared.keys import key_digest, object_name
from shared.specs.common import DNS_1035

DOMAIN = "kubeflow-tasks.dev"
KEY_HASH_LABEL = f"{DOMAIN}/key-hash"
KEY_ANNOTATION = f"{DOMAIN}/key"
ATTEMPT_ANNOTATION = f"{DOMAIN}/attempt"
SPEC_NAME_ANNOTATION = f"{DOMAIN}/spec-name"
CANCELLED_ANNOTATION = (
    f"{DOMAIN}/cancelled"  # written before our delete: any process can tell it from an external one
)
KEY_HASH_CHARS = 40  # label values are at most 63 characters

# Name limits of the admission webhooks: Katib experiments 40, training jobs 63 (DNS-1035 labels).
MAX_NAME = {"Experiment": 40, "PyTorchJob": 63, "TFJob": 63}
__all__ = ["DNS_1035", "object_name"]  # re-exported: the names every CR gets, and their rule


def key_hash(key: str) -> str:
    return key_digest(key)[:KEY_HASH_CHARS]


def run_display_name(spec_name: str, key: str, attempt: int) -> str:
    """A KFP run's display name; runs have no labels, so the name is what `find` looks up."""
    return f"{spec_name}-{key_hash(key)[:16]}-{attempt}"


def attempt_of_display_name(display_name: str) -> int:
    tail = display_name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 1
