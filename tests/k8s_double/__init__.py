"""A wire-level test double of the Kubernetes and KFP REST APIs for the KubernetesBackend's tests.

    double = KubeDouble(specs_dir)       # ../shared/specs (the `reference_specs` fixture)
    double.start()
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")   # bearer "s3cr3t-token"
    ... real `kubernetes` / `kfp` clients against double.url and double.kfp_url ...
    double.stop()

Two loopback servers: the Kubernetes API at `url`, KFP v2beta1 at `kfp_url`. See kube.py,
kfp.py, controllers.py (per-object outcome annotations), validation.py and faults.py.
"""

from __future__ import annotations

import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from .controllers import ANNOTATION_OUTCOME, ANNOTATION_RUN_SECONDS, Behaviour, Controllers
from .faults import Faults
from .kfp import KfpApi
from .kube import RESOURCES, KubeApi
from .server import Server
from .store import Store
from .validation import Admission

__all__ = ["ANNOTATION_OUTCOME", "ANNOTATION_RUN_SECONDS", "KubeDouble"]


class KubeDouble:
    """The Kubernetes API (Kubeflow CRs, pods, logs) and the KFP API, with controllers and faults."""

    def __init__(self, specs_dir: Path, history_size: int = 2000) -> None:
        self.stopping = threading.Event()
        self.store = Store(history_size)
        self.faults = Faults()
        self.request_log: list[tuple[str, str, int]] = []
        self.behaviour = Behaviour()
        self.kube = KubeApi(self.store, Admission(Path(specs_dir)), self.stopping)
        self.kube.tokens.add("s3cr3t-token")
        self.kfp = KfpApi(Path(specs_dir), self._record_run_change)
        self.controllers = Controllers(self.store, self.behaviour, self.stopping)
        self.controllers.kfp_step = self.kfp.step
        self._kube_server = Server(self.kube, self.faults, self.request_log, self.stopping)
        self._kfp_server = Server(self.kfp, self.faults, self.request_log, self.stopping)

    # -- lifecycle

    def start(self) -> KubeDouble:
        self._kube_server.start()
        self._kfp_server.start()
        self.controllers.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        self._kube_server.stop()
        self._kfp_server.stop()

    @property
    def url(self) -> str:
        return self._kube_server.url

    @property
    def kfp_url(self) -> str:
        return self._kfp_server.url

    @property
    def kfp_token(self) -> str:
        return self.kfp.token

    @kfp_token.setter
    def kfp_token(self, value: str) -> None:
        self.kfp.token = value

    def write_kubeconfig(self, path: Path, namespace: str = "default", token: str = "s3cr3t-token") -> Path:
        """A kubeconfig with context "double" (current) whose user presents `token`, which the API accepts."""
        self.kube.tokens.add(token)
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "double", "preferences": {},
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": token}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double", "namespace": namespace}}],
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        return path

    # -- behaviour

    def set_behaviour(self, **kw: Any) -> None:
        """Controller timings/outcomes (`Behaviour` fields: job_run_seconds, job_outcome, trial_outcome, ...),
        KFP (`kfp_pending_seconds`, `kfp_run_seconds`, `kfp_cancel_seconds`, `kfp_outcome`, `kfp_outcomes`),
        `bookmark_interval`, `watch_cut_after`, `webhook_status` (422, or 403 as controller-runtime sends),
        `kfp_multi_user` (KFP in multi-user mode, see kfp.py), `kueue_admit_seconds` (see controllers.py), and
        `absent` / `forbidden`: plurals whose CRD is not installed (404) or that RBAC denies us (403)."""
        names = {f.name for f in fields(Behaviour)}
        for key, value in kw.items():
            if key in names:
                setattr(self.behaviour, key, value)
            elif key == "kfp_multi_user":
                self.kfp.multi_user = bool(value)
            elif key.startswith("kfp_") and hasattr(self.kfp.behaviour, key[4:]):
                setattr(self.kfp.behaviour, key[4:], value)
            elif key in ("bookmark_interval", "watch_cut_after"):
                setattr(self.kube, key, value)
            elif key in ("absent", "forbidden"):  # plurals: CRD not installed (404) / RBAC denies (403)
                setattr(self.kube, key, set(value))
            elif key == "webhook_status":
                self.kube.admission.webhook_status = value
            else:
                raise TypeError(f"unknown behaviour {key!r}")

    def compact(self) -> None:
        """Forget the event history: every resourceVersion seen so far becomes too old to watch from (410)."""
        self.store.compact()

    # -- inspection

    def objects(self, plural: str, namespace: str | None = "default") -> list[dict[str, Any]]:
        if plural not in RESOURCES:
            raise KeyError(f"unknown resource {plural!r}; known: {sorted(RESOURCES)}")
        with self.store.cond:
            return self.store.list(plural, namespace)

    def runs(self) -> list[dict[str, Any]]:
        with self.kfp.lock:
            return [dict(r) for r in self.kfp.runs.values()]

    def pod_log(self, name: str, namespace: str = "default") -> list[str]:
        with self.store.cond:
            return list(self.store.pod_logs.get((namespace, name), []))

    def request_count(self, method: str | None = None, path_contains: str | None = None) -> int:
        return sum(1 for m, p, _ in list(self.request_log)
                   if (method is None or m == method) and (path_contains is None or path_contains in p))

    @property
    def events_at(self) -> dict[str, list[tuple[float, str]]]:
        """`"<plural>/<namespace>/<name>"` or `"runs/<run_id>"` -> [(time.monotonic(), what)] per state change."""
        return self.store.events_at

    def _record_run_change(self, key: str, state: str) -> None:
        import time

        with self.store.cond:
            self.store.events_at[key].append((time.monotonic(), state))
