"""What the waiting benchmarks share: the PyTorchJobs they wait on and how they measure a cluster.

- `pytorch_job`: a one-pod PyTorchJob that runs `run_seconds` on the double (its annotation) and on
  the real stack (kwok reads the pod annotation the operator copies from the replica template).
- `serve_double`: the wire-level double in a child process, answering the parent's questions.
- `ApiserverRequests`: the real API server's own count of requests (`apiserver_request_total` on
  its /metrics), so a benchmark can count what a process it does not control (a real triggerer)
  sends.
- `SucceededClock`: a watch of its own, in the benchmark's process, that stamps the moment each job
  is first seen `Succeeded` (the reference for "status change to trigger event" delays; the
  condition's lastTransitionTime has only 1 s resolution).
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

POD_DURATION = "kubeflow-tasks.test/duration-seconds"  # kwok (tests/realstack/kwok-stages.yaml)
DOUBLE_RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"  # tests/k8s_double


def default_specs() -> str:
    """The upstream schemas the double validates against (`../shared/specs`, as tests/conftest.py
    finds them: KUBEFLOW_TASKS_REFERENCE_DIR overrides the folder beside the checkout)."""
    repo = Path(__file__).resolve().parents[1]
    return str(Path(os.environ.get("KUBEFLOW_TASKS_REFERENCE_DIR", repo.parent / "shared")) / "specs")


def pytorch_job(name: str, run_seconds: float) -> dict[str, Any]:
    container = {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "train.py"]}
    template = {
        "metadata": {"annotations": {POD_DURATION: str(max(1, round(run_seconds)))}},
        "spec": {"containers": [container]},
    }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "annotations": {DOUBLE_RUN_SECONDS: f"{run_seconds:.2f}"}},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}},
    }


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


def serve_double(conn: Any, specs_dir: str, **behaviour: Any) -> None:
    """The child: the double, answering `requests` (its request count), `events` (its state change
    times, system-wide monotonic clock) and `stop`."""
    from tests.k8s_double import KubeDouble

    double = KubeDouble(Path(specs_dir)).start()
    double.set_behaviour(tick=0.05, bookmark_interval=30.0, **behaviour)
    conn.send({"url": double.url, "kfp_url": double.kfp_url, "kfp_token": double.kfp_token})
    while True:
        command = conn.recv()
        if command == "requests":
            conn.send(len(double.request_log))
        elif command == "events":
            conn.send({k: list(v) for k, v in double.events_at.items()})
        else:
            double.stop()
            conn.send("stopped")
            return


def api_client(kubeconfig: str) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32  # the benchmark's own calls come from 16 threads
    return client.ApiClient(cfg)


class ApiserverRequests:
    """The API server's request counters for one resource, by verb (needs a client allowed to read
    /metrics; the real stack's admin is)."""

    def __init__(self, kubeconfig: str, resource: str = "pytorchjobs") -> None:
        self.client = api_client(kubeconfig)
        self.resource = resource

    def counts(self) -> dict[str, int]:
        response = self.client.call_api(
            "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
        )
        totals: dict[str, int] = {}
        needle = f'resource="{self.resource}"'
        for line in response.data.decode().splitlines():
            if line.startswith("apiserver_request_total{") and needle in line:
                labels, value = line.rsplit(" ", 1)
                verb = labels.split('verb="', 1)[1].split('"', 1)[0]
                totals[verb] = totals.get(verb, 0) + int(float(value))
        return totals

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {verb: after[verb] - before.get(verb, 0) for verb in after if after[verb] != before.get(verb, 0)}


class SucceededClock:
    """Stamps (time.time()) the first moment each PyTorchJob in a namespace is seen Succeeded, from a
    watch of its own in a daemon thread. Start it before the jobs are created."""

    def __init__(self, kubeconfig: str, namespace: str, plural: str = "pytorchjobs") -> None:
        self.kubeconfig, self.namespace, self.plural = kubeconfig, namespace, plural
        self.at: dict[str, float] = {}  # job name -> when first seen Succeeded
        self.condition_at: dict[str, str] = {}  # job name -> the condition's lastTransitionTime
        self.events = 0
        self.requests = 0  # LIST and WATCH requests this clock sent (to subtract from server counts)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="succeeded-clock", daemon=True)

    def start(self) -> SucceededClock:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("SucceededClock: no list within 30 s")
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client
        from kubernetes.watch.watch import iter_resp_lines

        api = client.CustomObjectsApi(api_client(self.kubeconfig))
        resource_version = None
        while not self._stop.is_set():
            try:
                self.requests += 1
                if resource_version is None:
                    self.requests += 1
                    body = api.list_namespaced_custom_object("kubeflow.org", "v1", self.namespace, self.plural)
                    for obj in body.get("items") or []:
                        self._see(obj)
                    resource_version = body["metadata"]["resourceVersion"]
                    self._ready.set()
                response = api.list_namespaced_custom_object(
                    "kubeflow.org", "v1", self.namespace, self.plural, watch=True, resource_version=resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=60, _preload_content=False,
                    _request_timeout=(10, 75),
                )
                try:
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            resource_version = None if obj.get("code") == 410 else resource_version
                            break
                        resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._see(obj)
                        if self._stop.is_set():
                            break
                finally:
                    response.close()
                    response.release_conn()
            except Exception:  # a cut watch: resume from where it was
                time.sleep(0.5)

    def _see(self, obj: dict[str, Any]) -> None:
        self.events += 1
        name = obj["metadata"]["name"]
        if name in self.at:
            return
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Succeeded" and cond.get("status") == "True":
                self.at[name] = time.time()
                self.condition_at[name] = cond.get("lastTransitionTime") or ""
                return


def condition_time(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 condition time (the API server keeps whole seconds)."""
    from datetime import datetime

    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LoadSampler:
    """The machine's 1-minute load average every few seconds while a phase runs (a daemon thread)."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._every = every
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="load-sampler", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        return f"{sum(self.samples) / len(self.samples):.1f} (max {max(self.samples):.1f})"
