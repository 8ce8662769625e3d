"""Checking a kubernetes backend id before any URL is built from it.

Why: an id comes from the command line or a scheduler's state. Its parts become URL path segments,
so a name `..` or `.` turned `cancel` into `DELETE .../pytorchjobs/?propagationPolicy=Foreground`:
on a real cluster, a delete of every job in the namespace. Namespaces are DNS-1123 labels and
object names DNS-1123 subdomains (what the API server accepts); KFP run ids are UUIDs.
"""

from __future__ import annotations

import re

from shared.errors import SpecError

DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
KFP_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def check_namespace(namespace: str) -> str:
    if not DNS_1123_LABEL.fullmatch(namespace):
        raise SpecError("run_id", f"namespace {namespace!r} is not a DNS-1123 label")
    return namespace


def check_object_name(name: str) -> str:
    if len(name) > 253 or not DNS_1123_SUBDOMAIN.fullmatch(name):
        raise SpecError("run_id", f"name {name!r} is not a DNS-1123 subdomain")
    return name


def check_kfp_run_id(run_id: str) -> str:
    if not KFP_RUN_ID.fullmatch(run_id):
        raise SpecError("run_id", f"{run_id!r} is not a KFP run id")
    return run_id


def split_cr_id(handle_id: str, plurals: object) -> tuple[str, str, str]:
    """`<namespace>/<plural>/<name>`, each part checked; `plurals` are the known resource plurals."""
    parts = handle_id.split("/")
    if len(parts) != 3 or parts[1] not in plurals:  # type: ignore[operator]
        raise SpecError(
            "run_id", f"{handle_id!r} is not a kubernetes backend id (<namespace>/<plural>/<name> or kfp/<run id>)"
        )
    return check_namespace(parts[0]), parts[1], check_object_name(parts[2])
