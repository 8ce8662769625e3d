"""Log lines of remote work: a training job's leading pod, an experiment's trials, a KFP run's states.

Training jobs: the Master/Chief pod (label `training.kubeflow.org/job-role=master`), else replica 0
of the Workers, its framework container; `follow` waits for the pod to exist and streams its log.
Experiments have no single log: a line per finished trial (n of max, its parameters and objective,
the best so far), read from the Trial objects Katib creates. KFP: the run's URL, then its states.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared.backends.kubernetes import states
from shared.backends.kubernetes.access import call, read_body
from shared.errors import BackendError
from shared.status import Handle

if TYPE_CHECKING:
    from shared.backends.kubernetes import KubernetesBackend

JOB_LABEL = "training.kubeflow.org/job-name"
CONTAINER = {"PyTorchJob": "pytorch", "TFJob": "tensorflow"}
FOLLOW_READ_TIMEOUT = 900.0
TRIAL_DONE = ("Succeeded", "Failed", "Killed", "EarlyStopped", "MetricsUnavailable")


def _leading_pod(backend: KubernetesBackend, handle: Handle) -> dict[str, Any] | None:
    core = backend.cluster.core()
    for selector in (
        f"{JOB_LABEL}={handle.name},training.kubeflow.org/job-role=master",
        f"{JOB_LABEL}={handle.name},training.kubeflow.org/replica-type=worker,training.kubeflow.org/replica-index=0",
    ):
        body = read_body(
            call(
                core.list_namespaced_pod,
                handle.namespace,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=backend.request_timeout,
            )
        )
        if body.get("items"):
            return body["items"][0]
    return None


def job_lines(
    backend: KubernetesBackend, handle: Handle, follow: bool, tail: int | None = None
) -> Iterator[str]:
    from kubernetes.watch.watch import iter_resp_lines

    pod = _leading_pod(backend, handle)
    while pod is None or (pod.get("status") or {}).get("phase") == "Pending":
        if not follow:
            if pod is None:
                yield f"({handle.resource} {handle.name} has no pod yet)"
            return
        if backend.status(handle).terminal:
            return
        time.sleep(backend.log_poll_interval)
        pod = _leading_pod(backend, handle)
    response = call(
        backend.cluster.core().read_namespaced_pod_log,
        pod["metadata"]["name"],
        handle.namespace,
        container=CONTAINER.get(handle.resource or "", None),
        follow=follow,
        **({"tail_lines": tail} if tail is not None else {}),
        _preload_content=False,
        # a followed log may stay quiet for long, but not forever without the connection noticing
        _request_timeout=(backend.request_timeout, FOLLOW_READ_TIMEOUT)
        if follow
        else backend.request_timeout,
    )
    try:
        yield from iter_resp_lines(response)
    except Exception as exc:  # a broken stream ends the log, it does not fail the work
        raise BackendError(
            f"log stream of pod {pod['metadata']['name']} broke: {type(exc).__name__}"
        ) from exc
    finally:
        response.release_conn()


STUCK_REASONS = {
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


def startup_problem(backend: KubernetesBackend, handle: Handle) -> str | None:
    """Why a training job's pods do not run, as the kubelet and the scheduler say it: a container
    waiting in ImagePullBackOff/CrashLoopBackOff/..., or PodScheduled=False (Unschedulable)."""
    body = read_body(
        call(
            backend.cluster.core().list_namespaced_pod,
            handle.namespace,
            label_selector=f"{JOB_LABEL}={handle.name}",
            _preload_content=False,
            _request_timeout=backend.request_timeout,
        )
    )
    for pod in sorted(body.get("items") or [], key=lambda p: p["metadata"]["name"]):
        name, status = pod["metadata"]["name"], pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                return f"pod {name}: {waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {name}: {cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}".rstrip(
                    ": "
                )
    return None


def _trials(backend: KubernetesBackend, handle: Handle) -> list[dict[str, Any]]:
    body = read_body(
        call(
            backend.cluster.custom().list_namespaced_custom_object,
            "kubeflow.org",
            "v1beta1",
            handle.namespace,
            "trials",
            label_selector=f"katib.kubeflow.org/experiment={handle.name}",
            _preload_content=False,
            _request_timeout=backend.request_timeout,
        )
    )
    return sorted(body.get("items") or [], key=lambda t: str(t["metadata"].get("creationTimestamp") or ""))


def trial_lines(backend: KubernetesBackend, handle: Handle, follow: bool) -> Iterator[str]:
    namespace, plural, name = handle.id.split("/")
    reported: set[str] = set()
    while True:
        experiment = backend.get_object(namespace, plural, name)
        objective = (experiment.get("spec") or {}).get("objective") or {}
        total = (experiment.get("spec") or {}).get("maxTrialCount", "?")
        for trial in _trials(backend, handle):
            cond = states.current_condition((trial.get("status") or {}).get("conditions"))
            state = (cond or {}).get("type")
            tname = trial["metadata"]["name"]
            if state in TRIAL_DONE and tname not in reported:
                reported.add(tname)
                yield _trial_line(trial, state, len(reported), total, objective, experiment)
        status = states.experiment_status(experiment)
        if status.terminal or not follow:
            if status.terminal:
                yield f"experiment {name} {status.state.value} ({status.raw_state}): {status.message}".rstrip(
                    ": "
                )
            return
        time.sleep(backend.log_poll_interval)


def _trial_line(
    trial: dict[str, Any],
    state: str,
    n: int,
    total: Any,
    objective: dict[str, Any],
    experiment: dict[str, Any],
) -> str:
    metric = objective.get("objectiveMetricName", "")
    params = " ".join(
        f"{p['name']}={p['value']}" for p in (trial.get("spec") or {}).get("parameterAssignments") or []
    )
    metrics = ((trial.get("status") or {}).get("observation") or {}).get("metrics") or []
    found = next((m for m in metrics if m.get("name") == metric), None)
    value = found.get(states.metric_strategy(metric, objective), found.get("latest")) if found else None
    result = f"{metric}={value}" if value is not None else f"no {metric}"
    best = states.experiment_outputs(experiment)
    best_value = best["best_metrics"].get(metric)
    best_text = (
        f"best {metric}={best_value}, trial {best['best_trial']}" if best["best_trial"] else "no best yet"
    )
    return f"trial {n}/{total} {trial['metadata']['name']} {state}: {params} -> {result} ({best_text})"


def run_lines(backend: KubernetesBackend, handle: Handle, follow: bool) -> Iterator[str]:
    yield f"KFP run {handle.id.split('/', 1)[1]}: {handle.url}"
    last = None
    while True:
        status = backend.status(handle)
        if status.raw_state != last:
            last = status.raw_state
            yield f"{status.raw_state}" + (f": {status.message}" if status.message else "")
        if status.terminal or not follow:
            return
        time.sleep(backend.log_poll_interval)
