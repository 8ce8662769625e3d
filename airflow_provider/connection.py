"""The `kubeflow` connection type: its form fields, and the options a connection gives the backend.

This module imports nothing from Airflow, so `get_provider_info` (read by every Airflow process) can
describe the fields from the same table the hook reads them with. The standard fields carry the
KFP endpoint (`host`) and the KFP bearer token (`password`, masked by Airflow); everything else
lives in `extra`, under the field name or the legacy `extra__kubeflow__<field>` key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from shared.backends import BACKEND_NAMES
from shared.errors import SpecError

CONN_TYPE = "kubeflow"
DEFAULT_CONN_ID = "kubeflow_default"

# name -> (label, description, JSON schema). Strings and booleans only: what both UIs can render.
FIELDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "backend": (
        "Backend",
        "local: run on the worker machine (no cluster); kubernetes: a Kubeflow cluster",
        {"type": ["string", "null"], "enum": list(BACKEND_NAMES), "default": "local"},
    ),
    "kubeconfig_path": ("Kubeconfig path", "kubeconfig file on the workers (default: $KUBECONFIG)", {"type": ["string", "null"]}),
    "in_cluster": ("In cluster", "use the pod's service account", {"type": ["boolean", "null"], "default": False}),
    "cluster_context": ("Kubeconfig context", "context in the kubeconfig", {"type": ["string", "null"]}),
    "namespace": ("Namespace", "namespace of the work unless its spec names one (a profile namespace: KFP runs too)", {"type": ["string", "null"]}),
    "kfp_namespace": ("KFP namespace", "namespace of KFP runs if not the one above (multi-user KFP requires one)", {"type": ["string", "null"]}),
    "kfp_token_file": ("KFP token file", "file with the KFP bearer token on the workers, re-read on 401", {"type": ["string", "null"]}),
    "kfp_cookies": ("KFP auth cookies", "the platform's auth cookie string, e.g. authservice_session=...; a secret", {"type": ["string", "null"]}),
    "kfp_ssl_ca_cert": ("KFP CA certificate", "CA bundle file for the KFP endpoint's TLS", {"type": ["string", "null"]}),
    "kfp_proxy": ("KFP proxy", "HTTP proxy URL for the KFP endpoint", {"type": ["string", "null"]}),
    "allowed_namespaces": (
        "Allowed namespaces",
        "comma-separated; work in any other namespace is refused before submission",
        {"type": ["string", "null"]},
    ),
    "mlflow_tracking_uri": ("MLflow tracking URI", "default: $MLFLOW_TRACKING_URI; empty means no MLflow", {"type": ["string", "null"]}),
    "mlflow_experiment": ("MLflow experiment", "default: $MLFLOW_EXPERIMENT_NAME, else kubeflow-tasks", {"type": ["string", "null"]}),
    "mlflow_credentials_secret": (
        "MLflow credentials Secret",
        "kubernetes backend: Secret with MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN for the work (never inlined)",
        {"type": ["string", "null"]},
    ),
    "kfp_ui_url": ("KFP UI URL", "base URL of the Kubeflow Pipelines UI, for links", {"type": ["string", "null"]}),
    "mlflow_ui_url": ("MLflow UI URL", "base URL of the MLflow UI (default: an http tracking URI)", {"type": ["string", "null"]}),
    "katib_ui_url": ("Katib UI URL", "base URL of the Katib UI, e.g. https://kubeflow.example.com/katib", {"type": ["string", "null"]}),
    "state_dir": ("Local state directory", "local backend only (default: $KUBEFLOW_TASKS_STATE_DIR)", {"type": ["string", "null"]}),
}
HIDDEN_FIELDS = ["schema", "login", "port", "extra"]
RELABELING = {"host": "KFP endpoint", "password": "KFP token"}
PLACEHOLDERS = {
    "host": "https://kubeflow.example.com/pipeline",
    "password": "bearer token for the KFP API (optional)",
    "namespace": "kubeflow-user",
    "allowed_namespaces": "team-a,team-b",
    "mlflow_tracking_uri": "http://mlflow.mlflow:5000",
}


def conn_fields() -> dict[str, dict[str, Any]]:
    """The Airflow 3.2+ `conn-fields` metadata (the same keys as the legacy form widgets)."""
    return {name: {"label": label, "description": text, "schema": schema} for name, (label, text, schema) in FIELDS.items()}


def ui_field_behaviour() -> dict[str, Any]:
    """The legacy `get_ui_field_behaviour()` answer (the provider info spells the keys with dashes)."""
    return {"hidden_fields": HIDDEN_FIELDS, "relabeling": RELABELING, "placeholders": PLACEHOLDERS}


@dataclass(frozen=True)
class ConnectionOptions:
    """What a `kubeflow` connection says. `kfp_token` and `kfp_cookies` are secrets: never log or return them."""

    backend: str = "local"
    kubeconfig_path: str | None = None
    in_cluster: bool = False
    cluster_context: str | None = None
    namespace: str | None = None
    allowed_namespaces: tuple[str, ...] = ()
    kfp_host: str | None = None
    kfp_token: str | None = None
    kfp_namespace: str | None = None
    kfp_token_file: str | None = None
    kfp_cookies: str | None = None  # a secret, like kfp_token
    kfp_ssl_ca_cert: str | None = None
    kfp_proxy: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_credentials_secret: str | None = None
    mlflow_experiment: str | None = None
    kfp_ui_url: str | None = None
    mlflow_ui_url: str | None = None
    katib_ui_url: str | None = None
    state_dir: str | None = None

    def __repr__(self) -> str:  # the dataclass repr would print the token
        return f"ConnectionOptions(backend={self.backend!r}, namespace={self.namespace!r}, kfp_host={self.kfp_host!r})"

    @classmethod
    def parse(cls, *, host: str | None, password: str | None, extra: Mapping[str, Any]) -> ConnectionOptions:
        """Validate a connection's fields; errors are one line naming the field."""

        def get(name: str) -> Any:
            value = extra.get(name, extra.get(f"extra__{CONN_TYPE}__{name}"))
            return value.strip() if isinstance(value, str) else value

        backend = get("backend") or "local"
        if backend not in BACKEND_NAMES:
            raise SpecError("backend", f"expected one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
        in_cluster = get("in_cluster")
        if isinstance(in_cluster, str):
            in_cluster = in_cluster.lower() in ("1", "true", "yes", "on")
        options = cls(
            backend=backend,
            kubeconfig_path=get("kubeconfig_path") or None,
            in_cluster=bool(in_cluster),
            cluster_context=get("cluster_context") or None,
            namespace=get("namespace") or None,
            allowed_namespaces=tuple(n.strip() for n in (get("allowed_namespaces") or "").split(",") if n.strip()),
            kfp_host=host or None,
            kfp_token=password or None,
            kfp_namespace=get("kfp_namespace") or None,
            kfp_token_file=get("kfp_token_file") or None,
            kfp_cookies=get("kfp_cookies") or None,
            kfp_ssl_ca_cert=get("kfp_ssl_ca_cert") or None,
            kfp_proxy=get("kfp_proxy") or None,
            mlflow_tracking_uri=get("mlflow_tracking_uri") or None,
            mlflow_credentials_secret=get("mlflow_credentials_secret") or None,
            mlflow_experiment=get("mlflow_experiment") or None,
            kfp_ui_url=get("kfp_ui_url") or None,
            mlflow_ui_url=get("mlflow_ui_url") or None,
            katib_ui_url=get("katib_ui_url") or None,
            state_dir=get("state_dir") or None,
        )
        options._check()
        return options

    def _check(self) -> None:
        if self.in_cluster and self.kubeconfig_path:
            raise SpecError("in_cluster", "give either a kubeconfig path or in_cluster, not both")
        if self.namespace and self.allowed_namespaces and self.namespace not in self.allowed_namespaces:
            raise SpecError("namespace", f"{self.namespace!r} is not among the allowed namespaces {list(self.allowed_namespaces)}")
        cluster_only = (
            "kubeconfig_path", "cluster_context", "namespace", "allowed_namespaces", "kfp_host", "kfp_token",
            "kfp_namespace", "kfp_token_file", "kfp_cookies", "kfp_ssl_ca_cert", "kfp_proxy",
        )
        if self.backend == "local":
            for name in cluster_only:
                if getattr(self, name):
                    raise SpecError(name, "only applies with backend kubernetes")
            if self.in_cluster:
                raise SpecError("in_cluster", "only applies with backend kubernetes")
        elif self.state_dir:
            raise SpecError("state_dir", "only applies with backend local")

    def with_namespace(self, namespace: str) -> ConnectionOptions:
        """These options with another default namespace (an operator's `namespace=`), checked again."""
        options = replace(self, namespace=namespace)
        options._check()
        return options

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments for `shared.backends.get_backend(self.backend, ...)`."""
        if self.backend == "local":
            return {"state_dir": self.state_dir} if self.state_dir else {}
        options = {
            "kubeconfig": self.kubeconfig_path,
            "in_cluster": self.in_cluster or None,
            "context": self.cluster_context,
            "namespace": self.namespace,
            "allowed_namespaces": list(self.allowed_namespaces) or None,
            "kfp_host": self.kfp_host,
            "kfp_token": self.kfp_token,
            "kfp_ui_url": self.kfp_ui_url,
            "kfp_namespace": self.kfp_namespace,
            "kfp_token_file": self.kfp_token_file,
            "kfp_cookies": self.kfp_cookies,
            "kfp_ssl_ca_cert": self.kfp_ssl_ca_cert,
            "kfp_proxy": self.kfp_proxy,
        }
        return {name: value for name, value in options.items() if value is not None}

    def secrets(self) -> list[str]:
        """Values to mask in every log: the KFP token and the MLflow URI's password."""
        found = [secret for secret in (self.kfp_token, self.kfp_cookies) if secret]
        for cookie in (self.kfp_cookies or "").split(";"):  # each cookie's value on its own too
            value = cookie.partition("=")[2].strip()
            if value:
                found.append(value)
        if self.mlflow_tracking_uri:
            try:
                password = urlsplit(self.mlflow_tracking_uri).password
            except ValueError:
                password = None
            if password:
                found.append(password)
        return found

    # ------------------------------------------------------------------ links for people

    def mlflow_run_url(self, experiment_id: str | None, run_id: str | None) -> str | None:
        """The MLflow UI page of a run: the UI URL, else an http(s) tracking URI without credentials."""
        base = self.mlflow_ui_url or _http_base(self.mlflow_tracking_uri)
        if not (base and experiment_id and run_id):
            return None
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def katib_experiment_url(self, name: str, namespace: str | None) -> str | None:
        if not self.katib_ui_url:
            return None
        ns = namespace or self.namespace or "default"
        return f"{self.katib_ui_url.rstrip('/')}/experiment/{quote(name)}?ns={quote(ns)}"


def _http_base(uri: str | None) -> str | None:
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
