"""Credentials we are handed (an MLflow URI's user and password): kept out of everything we hand on.

Why: a URI travels far (run directories, a custom resource's env, XCom, the work's own log lines
printing "tracking URI: ..."), so credentials never stay in one. `split_uri` gives the URI without
them and the credentials as MLflow's own variables (MLFLOW_TRACKING_USERNAME / PASSWORD), which the
work's MLflow client reads from its environment. This process remembers the full URI for its own
client calls (`full_uri`) and every secret it has seen, so `redact` can remove them from any text.
"""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import unquote, urlsplit, urlunsplit

CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
SECRET_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")

_lock = threading.Lock()
_full: dict[str, str] = {}  # URI without credentials -> the URI as given
_secrets: set[str] = set()


def remember(secret: str | None) -> None:
    """A value `redact` must remove from now on (short values would mangle text; they are not kept)."""
    if secret and len(secret) >= 4:
        with _lock:
            _secrets.add(secret)


def split_uri(uri: str) -> tuple[str, dict[str, str]]:
    """(the URI without user and password, the credentials as MLflow variables)."""
    try:
        parts = urlsplit(uri)
        user, password = parts.username, parts.password
    except ValueError:
        return uri, {}
    if "@" not in parts.netloc:
        return uri, {}
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    credentials = {}
    if user:
        credentials["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if password:
        credentials["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
        remember(password)
        remember(unquote(password))
    with _lock:
        _full[clean] = uri
    return clean, credentials


def full_uri(uri: str) -> str:
    """The URI with the credentials it was given in this process (for our own MLflow client only)."""
    with _lock:
        return _full.get(uri, uri)


def credentials_for(uri: str) -> dict[str, str]:
    """The credential variables of a URI given to this process with user and password (else none).

    Credentials already in our environment (MLFLOW_TRACKING_TOKEN ...) are not repeated: local work
    inherits them, and on Kubernetes they come from the Secret named by the user.
    """
    return split_uri(full_uri(uri))[1]


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with credentials moved out of MLFLOW_TRACKING_URI into MLflow's own variables."""
    uri = env.get("MLFLOW_TRACKING_URI")
    if uri:
        clean, credentials = split_uri(uri)
        env["MLFLOW_TRACKING_URI"] = clean
        for name, value in credentials.items():
            env.setdefault(name, value)
    return env


def redact(text: str) -> str:
    """`text` without any secret we know of, our environment's MLflow secrets, or a URI's userinfo."""
    with _lock:
        secrets = set(_secrets)
    secrets.update(v for v in (os.environ.get(n) for n in SECRET_VARS) if v and len(v) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _USERINFO.sub("***@", text)
