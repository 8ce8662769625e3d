"""Remote objects -> the normalised Status, exactly per reference §6.

The current condition of a CR is the newest condition with status True (by lastTransitionTime),
never `conditions[-1]`, which is only the last one written and may be False. Terminal conditions
are checked first. `Suspended=True` is PENDING, never terminal: Kueue (or any queueing controller)
holds a job suspended until it admits it, and a waiter that stopped there would let a retry submit a
second job that Kueue later admits too. A Katib experiment that ends Succeeded without an optimal trial produced nothing
usable, so it is FAILED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.backends.kubernetes import naming
from shared.status import State, Status

JOB_STATES = {
    "Created": State.PENDING,
    "Running": State.RUNNING,
    "Restarting": State.RUNNING,
    "Succeeded": State.SUCCEEDED,
    "Failed": State.FAILED,
    "Suspended": State.PENDING,
}
EXPERIMENT_STATES = {
    "Created": State.PENDING,
    "Running": State.RUNNING,
    "Restarting": State.RUNNING,
    "Succeeded": State.SUCCEEDED,
    "Failed": State.FAILED,
}
KFP_STATES = {
    "RUNTIME_STATE_UNSPECIFIED": State.PENDING,
    "PENDING": State.PENDING,
    "RUNNING": State.RUNNING,
    "CANCELING": State.RUNNING,
    "PAUSED": State.RUNNING,
    "SUCCEEDED": State.SUCCEEDED,
    "SKIPPED": State.SUCCEEDED,
    "FAILED": State.FAILED,
    "CANCELED": State.CANCELLED,
}
TERMINAL_CONDITIONS = ("Succeeded", "Failed")
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def current_condition(conditions: Sequence[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    """The terminal True condition if any, else the newest True one; ties go to the later entry."""
    true = [(i, c) for i, c in enumerate(conditions or []) if str(c.get("status")) == "True"]
    if not true:
        return None

    def newest(pair: tuple[int, Mapping[str, Any]]) -> tuple[str, int]:
        index, cond = pair
        return (str(cond.get("lastTransitionTime") or cond.get("lastUpdateTime") or ""), index)

    terminal = [p for p in true if p[1].get("type") in TERMINAL_CONDITIONS]
    return max(terminal or true, key=newest)[1]


def _message(cond: Mapping[str, Any]) -> str:
    reason, message = cond.get("reason") or "", cond.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


def cancelled_by_us(obj: Mapping[str, Any]) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return naming.CANCELLED_ANNOTATION in annotations


def job_status(obj: Mapping[str, Any]) -> Status:
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    cond = current_condition(conditions)
    raw = str(cond.get("type")) if cond else ""
    state = JOB_STATES.get(raw, State.RUNNING) if cond else State.PENDING
    outputs = {
        "replica_statuses": {
            rtype: {k: int(v) for k, v in counts.items() if k in ("active", "succeeded", "failed")}
            for rtype, counts in (status.get("replicaStatuses") or {}).items()
        },
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
            for c in conditions
        ],
        "reason": (cond or {}).get("reason", ""),
    }
    message = suspended_message(obj, cond) if raw == "Suspended" else _message(cond or {})
    return _while_deleting(obj, Status(state, raw or "Pending", message, outputs))


def suspended_message(obj: Mapping[str, Any], cond: Mapping[str, Any] | None) -> str:
    """Who holds the job: Kueue's queue (the job's queue-name label), else `runPolicy.suspend`."""
    queue = ((obj.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    by = f"Kueue (queue {queue})" if queue else "spec.runPolicy.suspend"
    detail = _message(cond or {})
    return f"queued/suspended by {by}" + (f": {detail}" if detail else "")


def experiment_status(obj: Mapping[str, Any]) -> Status:
    status = obj.get("status") or {}
    cond = current_condition(status.get("conditions"))
    raw = str(cond.get("type")) if cond else ""
    state = EXPERIMENT_STATES.get(raw, State.RUNNING) if cond else State.PENDING
    outputs = experiment_outputs(obj)
    message = _message(cond or {})
    if state is State.SUCCEEDED and not outputs["best_trial"]:
        state, message = State.FAILED, f"{message}, but no trial produced the objective metric".lstrip(", ")
    return _while_deleting(obj, Status(state, raw or "Pending", message, outputs))


def _while_deleting(obj: Mapping[str, Any], status: Status) -> Status:
    """A non-terminal object being deleted is still running until it is gone (foreground deletion)."""
    if status.terminal or not (obj.get("metadata") or {}).get("deletionTimestamp"):
        return status
    return Status(State.RUNNING, "Terminating", "deletion in progress", status.outputs)


def experiment_outputs(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The same keys the local backend reports; numbers from Katib's strings where they parse."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    objective = spec.get("objective") or {}
    optimal = status.get("currentOptimalTrial") or {}
    best = optimal.get("bestTrialName") or ""
    metrics = ((optimal.get("observation") or {}).get("metrics")) or []
    return {
        "best_trial": best,
        "best_parameters": (
            {p.get("name"): p.get("value") for p in optimal.get("parameterAssignments") or []} if best else {}
        ),
        "best_metrics": {m.get("name"): _number(_pick(m, objective)) for m in metrics} if best else {},
        "objective_metric": objective.get("objectiveMetricName", ""),
        "trials": int(status.get("trials") or 0),
        "trials_succeeded": int(status.get("trialsSucceeded") or 0),
        "trials_failed": int(status.get("trialsFailed") or 0),
        "trials_killed": int(status.get("trialsKilled") or 0),
        "trials_early_stopped": int(status.get("trialsEarlyStopped") or 0),
        "trials_metrics_unavailable": int(status.get("trialMetricsUnavailable") or 0),
    }


def metric_strategy(name: str, objective: Mapping[str, Any]) -> str:
    """Katib's strategies: the objective follows its type, the other metrics default to latest."""
    for entry in objective.get("metricStrategies") or []:
        if entry.get("name") == name and entry.get("value"):
            return str(entry["value"])
    if name == objective.get("objectiveMetricName"):
        return "max" if objective.get("type") == "maximize" else "min"
    return "latest"


def _pick(metric: Mapping[str, Any], objective: Mapping[str, Any]) -> Any:
    return metric.get(metric_strategy(str(metric.get("name")), objective), metric.get("latest"))


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def kfp_status(run: Mapping[str, Any], url: str | None) -> Status:
    raw = str(run.get("state") or "RUNTIME_STATE_UNSPECIFIED")
    state = KFP_STATES.get(raw, State.RUNNING)  # an unknown state is not an outcome: keep waiting
    error = (run.get("error") or {}).get("message") or ""
    outputs = {"run_id": run.get("run_id"), "state": raw, "url": url, "error": error}
    mlflow = ((run.get("plugins_output") or {}).get("mlflow") or {}).get("entries") or {}
    if mlflow:
        outputs["mlflow"] = {k: (v or {}).get("value") for k, v in mlflow.items()}
    message = error if state is State.FAILED or (error and not state.terminal) else ""
    return Status(state, raw, message, outputs)


def deleted_status(obj: Mapping[str, Any] | None, cancelled: bool, plural: str = "") -> Status:
    """The object is gone: if it had ended (`ttlSecondsAfterFinished` removes finished jobs), that end
    stands; ours to cancel means CANCELLED; anyone else's delete of running work is a failure."""
    if obj is not None and plural:
        last = status_of(plural, obj)
        if last.terminal:
            return Status(
                last.state,
                last.raw_state,
                f"{last.message} (the object was removed since)".lstrip(),
                last.outputs,
            )
    if cancelled or (obj is not None and cancelled_by_us(obj)):
        return Status(State.CANCELLED, "Deleted", "cancelled: the object was deleted")
    return Status(State.FAILED, "Deleted", "deleted externally: the object no longer exists")


def status_of(plural: str, obj: Mapping[str, Any]) -> Status:
    return experiment_status(obj) if plural == "experiments" else job_status(obj)
