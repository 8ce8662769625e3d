"""How the backend reaches the cluster and the KFP API: configuration resolved once, clients built lazily.

Resolution follows what kubectl and kfp users expect: an explicit host + token, else a kubeconfig
(the option, else every file in `$KUBECONFIG`, else `~/.kube/config`) with its context and
namespace, else the in-cluster service account. KFP: the option, else `$KF_PIPELINES_ENDPOINT`; a
bearer token, else a token file that is re-read when the server answers 401 (projected
service-account tokens rotate). Nothing here touches the network until the first request, and the
`kubernetes` / `kfp_server_api` modules are imported only then.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import KubeflowTasksError, SpecError, Unreachable
from shared.retry import api_error, http_status, is_transient, retrying

T = TypeVar("T")
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
KFP_SA_TOKEN = (
    "/var/run/secrets/kubeflow/pipelines/token"  # kfp's ServiceAccountTokenVolumeCredentials default
)
POOL_SIZE = 32  # connections kept per host: a scheduler submits from many threads at once


def call(fn: Callable[..., T], *args: Any, retry: bool = True, **kwargs: Any) -> T:
    """One API request, retried by `shared.retry` (the only layer: urllib3's own retries are off).

    An API's refusal leaves as a one-line `ApiError` (status and body kept for the caller)."""
    what = getattr(fn, "__name__", "request").removesuffix("_with_http_info")
    try:
        return retrying()(fn, *args, **kwargs) if retry else fn(*args, **kwargs)
    except Exception as exc:
        converted = api_error(exc, what)
        if converted is not exc:
            raise converted from None
        if is_transient(exc) and not isinstance(exc, KubeflowTasksError):  # the server is out of reach
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise Unreachable(f"{what}: cannot reach the server: {text}") from None
        raise


def read_body(response: Any) -> Any:
    """The JSON of a `_preload_content=False` response; raw dicts keep the server's own words."""
    return json.loads(response.data or b"null")


@dataclass(frozen=True)
class ClusterOptions:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    in_cluster: bool | None = None  # None: only when no kubeconfig exists and we run in a pod
    host: str | None = None
    token: str | None = None
    verify_ssl: bool = True


class Cluster:
    """One `kubernetes.client.ApiClient` per backend, built on first use."""

    def __init__(self, options: ClusterOptions, request_timeout: float):
        self.options = options
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._client: Any = None
        self._namespace: str | None = None
        self._identity: str | None = None

    def _kubeconfig(self) -> str | None:
        """The kubeconfig path(s) to load, None for in-cluster; `$KUBECONFIG` may list several files."""
        if self.options.kubeconfig:
            if not Path(self.options.kubeconfig).expanduser().is_file():
                raise SpecError("kubeconfig", f"file {self.options.kubeconfig!r} not found")
            return str(Path(self.options.kubeconfig).expanduser())
        if self.options.in_cluster:
            return None
        paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        existing = [
            str(Path(p).expanduser()) for p in paths or ["~/.kube/config"] if Path(p).expanduser().is_file()
        ]
        if existing:
            return os.pathsep.join(existing)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and self.options.in_cluster is not False:
            return None
        raise SpecError(
            "kubeconfig", "no kubeconfig found ($KUBECONFIG, ~/.kube/config) and not in a cluster"
        )

    def _configure(self) -> tuple[Any, str]:
        from kubernetes import client, config

        cfg = client.Configuration()
        namespace = None
        if self.options.host:
            if not self.options.token:
                raise SpecError("token", "required with an explicit host")
            cfg.host = self.options.host
            cfg.api_key = {"authorization": self.options.token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
            cfg.verify_ssl = self.options.verify_ssl
        else:
            path = self._kubeconfig()
            if path is None:
                config.load_incluster_config(client_configuration=cfg)
                if IN_CLUSTER_NAMESPACE.is_file():
                    namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
            else:
                try:
                    config.load_kube_config(
                        config_file=path,
                        context=self.options.context,
                        client_configuration=cfg,
                        persist_config=False,
                    )
                    contexts, active = config.list_kube_config_contexts(path)
                except config.ConfigException as exc:
                    raise SpecError(
                        "kubeconfig" if not self.options.context else "context", str(exc)
                    ) from None
                except (AttributeError, KeyError, TypeError, ValueError) as exc:  # e.g. a list, not a mapping
                    raise SpecError("kubeconfig", f"{path} is not a valid kubeconfig ({type(exc).__name__}: {exc})") from None
                chosen = next((c for c in contexts if c["name"] == self.options.context), active)
                namespace = ((chosen or {}).get("context") or {}).get("namespace")
        cfg.connection_pool_maxsize = POOL_SIZE
        cfg.retries = False  # one retry layer: ours (urllib3 would retry connection errors 3 times more)
        return cfg, self.options.namespace or namespace or "default"

    def api_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from kubernetes import client

                cfg, self._namespace = self._configure()
                secret = cfg.api_key.get("authorization") or cfg.cert_file or ""
                self._identity = f"{cfg.host}#{hashlib.sha256(str(secret).encode()).hexdigest()[:12]}"
                self._client = client.ApiClient(cfg)
            return self._client

    @property
    def options_given(self) -> bool:
        """Whether a cluster was named (kubeconfig, context, host or in-cluster), not just looked for."""
        o = self.options
        return bool(o.kubeconfig or o.context or o.host or o.in_cluster)

    @property
    def namespace(self) -> str:
        """The default namespace: the option, else the kubeconfig context's, else the pod's, else default."""
        if self._namespace is None:
            if self.options.namespace:
                return self.options.namespace
            self.api_client()
        assert self._namespace is not None
        return self._namespace

    @property
    def identity(self) -> str:
        """Host plus a digest of the credentials: shared watches are per cluster and identity."""
        self.api_client()
        assert self._identity is not None
        return self._identity

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client())

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())


@dataclass(frozen=True)
class KfpOptions:
    """How to reach KFP, as `kfp.Client` offers it. `token` and `cookies` are secrets (never printed)."""

    host: str | None = None
    token: str | None = None
    token_file: str | None = None
    ui_url: str | None = None
    namespace: str | None = None  # multi-user KFP: the profile namespace of runs and experiments
    cookies: str | None = None  # the platform's auth cookie string, e.g. "authservice_session=..."
    ssl_ca_cert: str | None = None
    proxy: str | None = None
    verify_ssl: bool = True

    def __repr__(self) -> str:
        return f"KfpOptions(host={self.host!r}, namespace={self.namespace!r})"


class Kfp:
    """The KFP v2beta1 API through `kfp_server_api`, without kfp.Client's healthz round trip."""

    def __init__(self, options: KfpOptions, request_timeout: float):
        self.options = options
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._client: Any = None
        self._multi_user: bool | None = None

    @property
    def host(self) -> str:
        host = self.options.host or os.environ.get("KF_PIPELINES_ENDPOINT")
        if not host:
            raise SpecError("kfp_host", "no KFP endpoint: pass --kfp-host or set $KF_PIPELINES_ENDPOINT")
        return host.rstrip("/")

    @property
    def configured(self) -> bool:
        return bool(self.options.host or os.environ.get("KF_PIPELINES_ENDPOINT"))

    def run_url(self, run_id: str) -> str:
        return f"{(self.options.ui_url or self.host).rstrip('/')}/#/runs/details/{run_id}"

    def _token_file(self) -> str | None:
        if self.options.token_file:
            return self.options.token_file
        path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", KFP_SA_TOKEN)
        return path if Path(path).is_file() else None

    def _token(self) -> str | None:
        if self.options.token:
            return self.options.token
        path = self._token_file()
        if path is None:
            return None
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SpecError("kfp_token_file", f"cannot read {path!r}: {exc.strerror}") from None

    def _set_token(self, cfg: Any) -> None:
        token = self._token()
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}

    def api_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import kfp_server_api

                if self.options.ssl_ca_cert and not Path(self.options.ssl_ca_cert).is_file():
                    raise SpecError("kfp_ssl_ca_cert", f"file {self.options.ssl_ca_cert!r} not found")
                cfg = kfp_server_api.Configuration(host=self.host)
                cfg.connection_pool_maxsize = POOL_SIZE
                cfg.retries = False  # one retry layer: ours
                cfg.verify_ssl = self.options.verify_ssl
                cfg.ssl_ca_cert = self.options.ssl_ca_cert
                cfg.proxy = self.options.proxy
                self._set_token(cfg)
                self._client = kfp_server_api.ApiClient(cfg, cookie=self.options.cookies)
            return self._client

    def multi_user(self) -> bool:
        """Whether the server runs in multi-user mode (`GET /apis/v2beta1/healthz`), asked once per client."""
        if self._multi_user is None:
            import kfp_server_api

            body = self.request(
                kfp_server_api.HealthzServiceApi(self.api_client()).healthz_service_get_healthz
            )
            self._multi_user = bool((body or {}).get("multi_user"))
        return self._multi_user

    def namespace_for(self, namespace: str | None) -> str | None:
        """The namespace runs go to; multi-user KFP refuses work without one, so that is bad input."""
        namespace = namespace or self.options.namespace
        if not namespace and self.multi_user():
            raise SpecError(
                "namespace",
                f"KFP at {self.host} runs in multi-user mode: runs belong to a profile namespace; "
                "pass --namespace or --kfp-namespace (the connection's namespace / kfp_namespace)",
            )
        return namespace

    @property
    def identity(self) -> str:
        token = self._token() or ""
        return f"{self.host}#{hashlib.sha256(token.encode()).hexdigest()[:12]}"

    def runs(self) -> Any:
        import kfp_server_api

        return kfp_server_api.RunServiceApi(self.api_client())

    def experiments(self) -> Any:
        import kfp_server_api

        return kfp_server_api.ExperimentServiceApi(self.api_client())

    def request(self, method: Callable[..., Any], *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        """One KFP call with a timeout, retries of transient errors (unless `retry` is False: a create
        is retried by its caller, after looking for what it may have made) and one token re-read on 401.

        Returns the JSON body as plain data (the generated models drop fields they do not know).
        """
        kwargs.setdefault("_request_timeout", self.request_timeout)
        kwargs["_preload_content"] = False
        try:
            return read_body(call(method, *args, retry=retry, **kwargs))
        except Exception as exc:
            if http_status(exc) != 401 or self.options.token or self._token_file() is None:
                raise
        with self._lock:
            self._set_token(self._client.configuration)
        return read_body(call(method, *args, retry=retry, **kwargs))
