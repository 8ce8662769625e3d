"""The controllers the double plays: training operator v1, Katib, the garbage collector.

A background thread reconciles every `tick` seconds. Timings and outcomes come from `Behaviour`
(settable with `KubeDouble.set_behaviour`) or, per object, from annotations on the submitted CR:

- `double.kubeflow-tasks.dev/outcome`: jobs `Succeeded` | `Failed` | `Restart-then-Succeeded` | `Hang`
  (stays Running until deleted) | `CrashLoop` (the decisive container keeps failing and the kubelet
  restarts it in place, as with restartPolicy OnFailure: restartCount grows, the job stays Running
  until runPolicy.backoffLimit or activeDeadlineSeconds fails it); experiments `Succeeded` (trials succeed) | `Failed` (trials fail,
  so maxFailedTrialCount ends it with ExperimentFailed) | `Hang` (trials never finish).
  `ImagePullBackOff` | `Unschedulable` (the pods stay Pending with the kubelet's waiting reason or
  the scheduler's PodScheduled=False condition; the job stays Created).
- `double.kubeflow-tasks.dev/run-seconds`: how long the job (or each trial) runs, e.g. "0.5".

`Controllers.trial_workload` (a callable, default None) plays a trial's container: it gets each
Trial just before it succeeds (with its observation), e.g. to log what the trial's code would log
to MLflow with the hand-off environment found in `spec.runSpec`.

Kueue: a job labelled `kueue.x-k8s.io/queue-name` is created suspended (kube.py plays Kueue's
mutating webhook) and admitted `Behaviour.kueue_admit_seconds` later by setting
`spec.runPolicy.suspend` to false, as Kueue does; the operator then resumes it (Suspended=False).

Conditions are written as the operators write them: training operator `setCondition` /
`filterOutCondition` (Running and Restarting replace each other, Succeeded/Failed flip Running to
False without touching its lastTransitionTime, nothing changes after Failed); Katib's condition
list with Running flipped to False on the terminal condition, and its end rules in order: goal,
max failed trials (`failed + metricsUnavailable >= maxFailedTrialCount`, non-zero), max trials.

runPolicy limits as in the operator's `ReconcileJobs` (pkg/controller.v1/common/job.go, v1.9): first
`PastBackoffLimit` (the restartCounts of the Running pods of OnFailure/Always replicas reach
backoffLimit; with backoffLimit 0, any restart), then `PastActiveDeadline` (activeDeadlineSeconds since
startTime). Either fails the job with reason `<Kind>Failed` and "Job <name> has failed because ...",
sets completionTime and deletes the pods whatever the cleanPodPolicy.
"""

from __future__ import annotations

import copy
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .store import Store, now_rfc3339

ANNOTATION_OUTCOME = "double.kubeflow-tasks.dev/outcome"
ANNOTATION_RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
STUCK_PODS = ("ImagePullBackOff", "Unschedulable")  # outcomes whose pods never start
JOB_KINDS = {"pytorchjobs": ("PyTorchJob", "pytorchReplicaSpecs", "pytorch"),
             "tfjobs": ("TFJob", "tfReplicaSpecs", "tensorflow")}
DEFAULT_RESTART_POLICY = {"pytorchjobs": "OnFailure", "tfjobs": "Never"}  # the operator's setDefaults


@dataclass
class Behaviour:
    """Controller timings (seconds) and default outcomes."""

    tick: float = 0.02
    job_start_seconds: float = 0.05
    job_run_seconds: float = 0.2
    job_outcome: str = "Succeeded"
    trial_run_seconds: float = 0.1
    trial_outcome: str = "Succeeded"
    pod_termination_seconds: float = 0.05
    log_epochs: int = 3
    kueue_admit_seconds: float | None = 0.2  # a queued job is admitted this long after it was seen; None: never


@dataclass
class _JobState:
    phase: str = "New"  # New, Created, Running, Done, Suspended
    since: float = field(default_factory=time.monotonic)
    restarted: bool = False
    epochs: int = 0
    crashes: int = 0  # CrashLoop: container restarts so far
    finished_at: float | None = None  # when the job was seen finished (ttlSecondsAfterFinished)


def _condition(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
    now = now_rfc3339()
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now}


def set_job_condition(status: dict[str, Any], cond: dict[str, str]) -> None:
    """Training operator `setCondition` + `filterOutCondition` (pkg/util/status.go, v1.9)."""
    conditions = status.setdefault("conditions", [])
    if any(c["type"] == "Failed" and c["status"] == "True" for c in conditions):
        return
    current = next((c for c in conditions if c["type"] == cond["type"]), None)
    if current and current["status"] == cond["status"] and current["reason"] == cond["reason"]:
        return
    if current and current["status"] == cond["status"]:
        cond["lastTransitionTime"] = current["lastTransitionTime"]
    kept = []
    for c in conditions:
        if {c["type"], cond["type"]} == {"Running", "Restarting"} or c["type"] == cond["type"]:
            continue
        if cond["type"] in ("Failed", "Succeeded") and c["type"] == "Running":
            c = dict(c, status="False")
        kept.append(c)
    status["conditions"] = kept + [cond]


def set_katib_condition(status: dict[str, Any], ctype: str, value: str, reason: str, message: str) -> None:
    """Katib `setCondition`: update in place (lastTransitionTime only when the status flips), else append."""
    conditions = status.setdefault("conditions", [])
    new = _condition(ctype, value, reason, message)
    for i, c in enumerate(conditions):
        if c["type"] == ctype:
            if c["status"] == value:
                new["lastTransitionTime"] = c["lastTransitionTime"]
            conditions[i] = new
            return
    conditions.append(new)


def _is_true(obj: dict[str, Any], ctype: str) -> bool:
    return any(c["type"] == ctype and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or [])


class Controllers:
    """Reconciles jobs, experiments, trials and deletions; also drives KFP runs (`kfp_step`)."""

    def __init__(self, store: Store, behaviour: Behaviour, stopping: threading.Event) -> None:
        self.store, self.behaviour, self.stopping = store, behaviour, stopping
        self.jobs: dict[str, _JobState] = {}
        self.trial_started: dict[str, float] = {}
        # What runs in a trial's primary container, for a test to play (the double runs no containers):
        # called with the Trial (its spec.runSpec holds the env we handed over) just before it succeeds,
        # so whatever it records exists before the experiment can end, as with a real trial.
        self.trial_workload: Any = None
        self.deleting_since: dict[str, float] = {}
        self.kueue_seen: dict[str, float] = {}
        self.kueue_admitted: set[str] = set()
        self.kfp_step = lambda: None
        self.thread = threading.Thread(target=self._run, name="k8s-double-controllers", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.behaviour.tick):
            self.step()

    def step(self) -> None:
        with self.store.cond:
            keys = list(self.store.objects)
        for plural, ns, name in keys:
            with self.store.cond:
                obj = self.store.objects.get((plural, ns, name))
                if obj is None:
                    continue
                obj = copy.deepcopy(obj)
                if obj["metadata"].get("deletionTimestamp"):
                    self._finalize(plural, obj)
                elif self._owner_gone(obj):
                    self._delete_dependent(plural, obj)
                elif plural in JOB_KINDS:
                    self._job(plural, obj)
                elif plural == "experiments":
                    self._experiment(obj)
                elif plural == "trials":
                    self._trial(obj)
        self.kfp_step()

    # ------------------------------------------------------------ garbage collection

    def _owner_gone(self, obj: dict[str, Any]) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs:
            return False
        uids = {o["metadata"]["uid"] for o in self.store.objects.values()}
        return all(r["uid"] not in uids for r in refs)

    def _dependents(self, uid: str) -> list[tuple[str, dict[str, Any]]]:
        return [(p, o) for (p, _, _), o in self.store.objects.items()
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    def _delete_dependent(self, plural: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if plural == "pods":
            meta["deletionTimestamp"] = now_rfc3339()
            self.store.update(plural, obj)
            self.deleting_since[meta["uid"]] = time.monotonic()
        else:
            self.store.delete(plural, meta["namespace"], meta["name"])

    def _finalize(self, plural: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if plural == "pods":
            since = self.deleting_since.setdefault(meta["uid"], time.monotonic())
            if time.monotonic() - since >= self.behaviour.pod_termination_seconds:
                self.store.delete(plural, meta["namespace"], meta["name"])
                self.deleting_since.pop(meta["uid"], None)
            return
        if "foregroundDeletion" not in (meta.get("finalizers") or []):
            return  # someone else's finalizer: wait for them
        dependents = self._dependents(meta["uid"])
        for dep_plural, dep in dependents:
            if not dep["metadata"].get("deletionTimestamp"):
                self._delete_dependent(dep_plural, copy.deepcopy(dep))
        if not dependents:
            meta["finalizers"] = [f for f in meta["finalizers"] if f != "foregroundDeletion"]
            if meta["finalizers"]:
                self.store.update(plural, obj)
            else:
                self.store.delete(plural, meta["namespace"], meta["name"])

    # ------------------------------------------------------------ training operator

    def _outcome(self, obj: dict[str, Any], default: str) -> tuple[str, float | None]:
        ann = obj["metadata"].get("annotations") or {}
        seconds = ann.get(ANNOTATION_RUN_SECONDS)
        return ann.get(ANNOTATION_OUTCOME, default), float(seconds) if seconds else None

    def _write_status(self, plural: str, obj: dict[str, Any], what: str) -> None:
        stored = self.store.update(plural, obj)
        self.store.record_change(plural, stored, what)

    def _pods(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        uid = obj["metadata"]["uid"]
        return [copy.deepcopy(o) for p, o in self._dependents(uid) if p == "pods"]

    def _job(self, plural: str, obj: dict[str, Any]) -> None:
        kind, key, _ = JOB_KINDS[plural]
        meta, status = obj["metadata"], obj.setdefault("status", {})
        state = self.jobs.setdefault(meta["uid"], _JobState())
        full = f"{meta['namespace']}/{meta['name']}"
        outcome, run_seconds = self._outcome(obj, self.behaviour.job_outcome)
        run_seconds = self.behaviour.job_run_seconds if run_seconds is None else run_seconds
        elapsed = time.monotonic() - state.since
        if state.phase == "Done" or _is_true(obj, "Failed") or _is_true(obj, "Succeeded"):
            return self._after_finished(plural, obj, state)
        suspend = bool((obj["spec"].get("runPolicy") or {}).get("suspend"))
        if suspend and self._kueue_admits(plural, obj):
            return
        if suspend and state.phase != "Suspended":
            for pod in self._pods(obj):
                self._delete_dependent("pods", pod)
            set_job_condition(status, _condition("Suspended", "True", f"{kind}Suspended", f"{kind} {meta['name']} is suspended."))
            status.pop("startTime", None)
            state.phase, state.since = "Suspended", time.monotonic()
            return self._write_status(plural, obj, "Suspended")
        if state.phase == "Suspended":
            if suspend:
                return
            set_job_condition(status, _condition("Suspended", "False", f"{kind}Resumed", f"{kind} {meta['name']} is resumed."))
            state.phase, state.since = "New", time.monotonic()
        if state.phase == "New":
            set_job_condition(status, _condition("Created", "True", f"{kind}Created", f"{kind} {meta['name']} is created."))
            status["replicaStatuses"] = {rtype: {} for rtype in obj["spec"][key]}
            self._create_pods(plural, obj)
            state.phase, state.since = "Created", time.monotonic()
            return self._write_status(plural, obj, "Created")
        if state.phase == "Created" and outcome in STUCK_PODS:
            return self._stuck_pods(obj, outcome, state)
        if state.phase == "Created" and elapsed >= self.behaviour.job_start_seconds:
            self._set_pods_phase(obj, "Running")
            set_job_condition(status, _condition("Running", "True", f"{kind}Running", f"{kind} {full} is running."))
            status.setdefault("startTime", now_rfc3339())
            status["replicaStatuses"] = self._replica_statuses(obj, key, active=True)
            state.phase, state.since = "Running", time.monotonic()
            return self._write_status(plural, obj, "Running")
        if state.phase != "Running":
            return
        failure = self._past_limits(plural, obj, elapsed)
        if failure:
            return self._fail_past_limits(plural, obj, failure, state)
        master = self._master_pod(obj)
        if outcome == "CrashLoop":
            crashes = int(elapsed / max(run_seconds / 2, self.behaviour.tick))
            if master and crashes > state.crashes:
                state.crashes = crashes
                self._restart_container(meta["namespace"], master, crashes)
            return
        epochs = self.behaviour.log_epochs
        while master and state.epochs < epochs and elapsed >= run_seconds * (state.epochs + 1) / (epochs + 1):
            state.epochs += 1
            loss = 1.0 / (state.epochs + 1)
            self.store.append_log(meta["namespace"], master, f"epoch={state.epochs} loss={loss:.4f}")
        if outcome == "Restart-then-Succeeded" and not state.restarted and elapsed >= run_seconds / 2:
            state.restarted = True
            master_type = self._decisive_type(obj, key)
            set_job_condition(status, _condition("Restarting", "True", f"{kind}Restarting",
                                                 f"{kind} {full} is restarting because 1 {master_type} replica(s) failed."))
            if master:
                self.store.append_log(meta["namespace"], master, "RuntimeError: injected failure (the job restarts)")
            self._write_status(plural, obj, "Restarting")
            set_job_condition(status, _condition("Running", "True", f"{kind}Running", f"{kind} {full} is running."))
            return self._write_status(plural, obj, "Running")
        if outcome == "Hang" or elapsed < run_seconds:
            return
        decisive = self._decisive_type(obj, key)
        if outcome == "Failed":
            if master:
                self.store.append_log(meta["namespace"], master, "RuntimeError: injected failure")
            self._set_pods_phase(obj, "Failed")
            status["replicaStatuses"] = self._replica_statuses(obj, key, active=False, failed_type=decisive)
            set_job_condition(status, _condition("Failed", "True", f"{kind}Failed",
                                                 f"{kind} {full} has failed because 1 {decisive} replica(s) failed."))
        else:
            if master:
                self.store.append_log(meta["namespace"], master, f"val_rmse={0.1 + 0.01 * len(meta['name']):.4f}")
            self._set_pods_phase(obj, "Succeeded")
            status["replicaStatuses"] = self._replica_statuses(obj, key, active=False)
            set_job_condition(status, _condition("Succeeded", "True", f"{kind}Succeeded", f"{kind} {full} successfully completed."))
        status["completionTime"] = now_rfc3339()
        state.phase = "Done"
        self._write_status(plural, obj, "Failed" if outcome == "Failed" else "Succeeded")

    def _stuck_pods(self, obj: dict[str, Any], outcome: str, state: _JobState) -> None:
        """Pods that never start, as the kubelet and the scheduler report them (the job stays Created)."""
        if state.restarted:  # written once
            return
        state.restarted = True
        for pod in self._pods(obj):
            if outcome == "Unschedulable":
                pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                                                "lastTransitionTime": now_rfc3339()}]
            else:
                image = pod["spec"]["containers"][0].get("image", "")
                pod["status"]["containerStatuses"] = [{
                    "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                                          "message": f'Back-off pulling image "{image}"'}}}
                    for c in pod["spec"].get("containers", [])]
            self.store.update("pods", pod)

    def _after_finished(self, plural: str, obj: dict[str, Any], state: _JobState) -> None:
        """runPolicy.ttlSecondsAfterFinished: the operator deletes a finished job that long after it
        finished (background propagation: the garbage collector removes the pods once the job is gone;
        a finalizer keeps it, marked, until its owner removes it)."""
        ttl = (obj["spec"].get("runPolicy") or {}).get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        finished = state.finished_at = state.finished_at or time.monotonic()
        if time.monotonic() - finished >= ttl:  # the operator's plain delete: finalizers hold the object
            meta = obj["metadata"]
            self.store.request_delete(plural, meta["namespace"], meta["name"])

    def _kueue_admits(self, plural: str, obj: dict[str, Any]) -> bool:
        """Kueue: a suspended job with a queue-name label is admitted (spec.runPolicy.suspend set to false)
        `kueue_admit_seconds` after it was first seen; True when it did so now."""
        meta = obj["metadata"]
        if not (meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL) or meta["uid"] in self.kueue_admitted:
            return False
        seen = self.kueue_seen.setdefault(meta["uid"], time.monotonic())
        wait = self.behaviour.kueue_admit_seconds
        if wait is None or time.monotonic() - seen < wait:
            return False
        self.kueue_admitted.add(meta["uid"])
        obj["spec"]["runPolicy"]["suspend"] = False
        meta["generation"] = meta.get("generation", 1) + 1
        self._write_status(plural, obj, "Admitted")
        return True

    def _past_limits(self, plural: str, obj: dict[str, Any], running_for: float) -> str | None:
        """The operator's failure message when backoffLimit or activeDeadlineSeconds is exceeded, else None."""
        _, key, _ = JOB_KINDS[plural]
        policy, name = obj["spec"].get("runPolicy") or {}, obj["metadata"]["name"]
        limit = policy.get("backoffLimit")
        if limit is not None:
            counted = {rtype.lower() for rtype, rspec in obj["spec"][key].items()
                       if rspec.get("restartPolicy", DEFAULT_RESTART_POLICY[plural]) in ("OnFailure", "Always")}
            restarts = sum(cs.get("restartCount", 0) for pod in self._pods(obj)
                           if pod["status"].get("phase") == "Running"
                           and pod["metadata"]["labels"].get("training.kubeflow.org/replica-type") in counted
                           for cs in pod["status"].get("containerStatuses") or [])
            if (restarts > 0) if limit == 0 else (restarts >= limit):
                return f"Job {name} has failed because it has reached the specified backoff limit"
        deadline = policy.get("activeDeadlineSeconds")
        if deadline is not None and running_for >= deadline:
            return f"Job {name} has failed because it was active longer than specified deadline"
        return None

    def _fail_past_limits(self, plural: str, obj: dict[str, Any], message: str, state: _JobState) -> None:
        kind = JOB_KINDS[plural][0]
        status = obj["status"]
        status.setdefault("completionTime", now_rfc3339())
        for pod in self._pods(obj):
            if not pod["metadata"].get("deletionTimestamp"):
                self._delete_dependent("pods", pod)
        set_job_condition(status, _condition("Failed", "True", f"{kind}Failed", message))
        state.phase = "Done"
        self._write_status(plural, obj, "Failed")

    def _restart_container(self, namespace: str, pod_name: str, restart_count: int) -> None:
        """The kubelet restarting a failed container in place (restartPolicy OnFailure): the pod stays Running."""
        pod = self.store.get("pods", namespace, pod_name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        self.store.append_log(namespace, pod_name, "RuntimeError: injected failure (the container restarts)")
        for cs in pod["status"].get("containerStatuses") or []:
            cs["restartCount"] = restart_count
            cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": now_rfc3339()}}
            cs["state"] = {"running": {"startedAt": now_rfc3339()}}
        self.store.update("pods", pod)

    @staticmethod
    def _decisive_type(obj: dict[str, Any], key: str) -> str:
        types = list(obj["spec"][key])
        return next((t for t in ("Master", "Chief") if t in types), "Worker" if "Worker" in types else types[0])

    def _master_pod(self, obj: dict[str, Any]) -> str | None:
        pods = sorted(self._pods(obj), key=lambda p: p["metadata"]["name"])
        master = [p for p in pods if p["metadata"]["labels"].get("training.kubeflow.org/job-role") == "master"]
        chosen = master or [p for p in pods if p["metadata"]["labels"].get("training.kubeflow.org/replica-index") == "0"]
        return chosen[0]["metadata"]["name"] if chosen else None

    def _replica_statuses(self, obj: dict[str, Any], key: str, active: bool, failed_type: str | None = None) -> dict[str, Any]:
        out = {}
        name = obj["metadata"]["name"]
        for rtype, rspec in obj["spec"][key].items():
            n = rspec.get("replicas", 1)
            selector = f"training.kubeflow.org/job-name={name},training.kubeflow.org/operator-name={obj['kind'].lower()}-controller," \
                       f"training.kubeflow.org/replica-type={rtype.lower()}"
            entry: dict[str, Any] = {"selector": selector, "labelSelector": {"matchLabels": dict(
                kv.split("=") for kv in selector.split(","))}}
            if active:
                entry["active"] = n
            elif rtype == failed_type:
                entry["failed"] = 1
                if n > 1:
                    entry["succeeded"] = n - 1
            elif failed_type is None:
                entry["succeeded"] = n
            out[rtype] = entry
        return out

    def _create_pods(self, plural: str, obj: dict[str, Any]) -> None:
        kind, key, _ = JOB_KINDS[plural]
        meta = obj["metadata"]
        decisive = self._decisive_type(obj, key)
        for rtype, rspec in obj["spec"][key].items():
            template = rspec.get("template") or {}
            for i in range(rspec.get("replicas", 1)):
                labels = dict((template.get("metadata") or {}).get("labels") or {})
                labels.update({
                    "training.kubeflow.org/job-name": meta["name"],
                    "training.kubeflow.org/operator-name": f"{kind.lower()}-controller",
                    "training.kubeflow.org/replica-type": rtype.lower(),
                    "training.kubeflow.org/replica-index": str(i),
                })
                # pkg/controller.v1 IsMasterRole: Master/Chief, or a TFJob's worker 0 when it has neither.
                if rtype in ("Master", "Chief") or (plural == "tfjobs" and decisive == rtype == "Worker" and i == 0):
                    labels["training.kubeflow.org/job-role"] = "master"
                pod = {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"{meta['name']}-{rtype.lower()}-{i}", "namespace": meta["namespace"],
                                 "labels": labels,
                                 "ownerReferences": [{"apiVersion": obj["apiVersion"], "kind": kind, "name": meta["name"],
                                                      "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
                    "spec": copy.deepcopy(template.get("spec") or {"containers": []}),
                    "status": {"phase": "Pending"},
                }
                self.store.create("pods", pod)

    def _set_pods_phase(self, obj: dict[str, Any], phase: str) -> None:
        for pod in self._pods(obj):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            pod["status"]["phase"] = phase
            state = ({"running": {"startedAt": now_rfc3339()}} if phase == "Running" else
                     {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1,
                                     "reason": "Completed" if phase == "Succeeded" else "Error"}})
            pod["status"]["containerStatuses"] = [{"name": c["name"], "image": c.get("image", ""), "imageID": "",
                                                   "ready": phase == "Running", "restartCount": 0, "state": state}
                                                  for c in pod["spec"].get("containers", [])]
            self.store.update("pods", pod)

    # ------------------------------------------------------------ Katib

    def _experiment(self, obj: dict[str, Any]) -> None:
        meta, spec, status = obj["metadata"], obj["spec"], obj.setdefault("status", {})
        if _is_true(obj, "Succeeded") or _is_true(obj, "Failed"):
            return
        if not status.get("conditions"):
            set_katib_condition(status, "Created", "True", "ExperimentCreated", "Experiment is created")
            status["startTime"] = now_rfc3339()
            status["currentOptimalTrial"] = {"bestTrialName": "", "parameterAssignments": [], "observation": {}}
            return self._write_status("experiments", obj, "Created")
        trials = [copy.deepcopy(o) for p, o in self._dependents(meta["uid"]) if p == "trials"]
        buckets: dict[str, list[str]] = {k: [] for k in ("pending", "running", "succeeded", "failed", "killed",
                                                          "earlyStopped", "metricsUnavailable")}
        for t in trials:
            buckets[self._trial_bucket(t)].append(t["metadata"]["name"])
        before = json.dumps(status, sort_keys=True)
        self._fill_counters(status, buckets, len(trials))
        best = self._best_trial(spec, trials)
        if best:
            status["currentOptimalTrial"] = best
        completed = sum(len(buckets[k]) for k in ("succeeded", "failed", "killed", "earlyStopped", "metricsUnavailable"))
        failed = len(buckets["failed"]) + len(buckets["metricsUnavailable"])
        max_trials, max_failed = spec.get("maxTrialCount"), spec.get("maxFailedTrialCount")
        objective = spec.get("objective") or {}
        end = None
        if best and objective.get("goal") is not None and self._goal_reached(objective, best):
            end = ("Succeeded", "ExperimentGoalReached", "Experiment has succeeded because Objective goal has reached")
        elif max_failed is not None and failed != 0 and failed >= max_failed:
            end = ("Failed", "ExperimentFailed", "Experiment has failed because max failed count has reached")
        elif max_trials is not None and completed >= max_trials:
            end = ("Succeeded", "ExperimentMaxTrialsReached", "Experiment has succeeded because max trial count has reached")
        if end:
            running = next((c for c in status["conditions"] if c["type"] == "Running"), None)
            if running:
                set_katib_condition(status, "Running", "False", running["reason"], running["message"])
            set_katib_condition(status, end[0], "True", end[1], end[2])
            status["completionTime"] = now_rfc3339()
            return self._write_status("experiments", obj, end[0])
        if not _is_true(obj, "Running"):
            set_katib_condition(status, "Running", "True", "ExperimentRunning", "Experiment is running")
        active = len(buckets["pending"]) + len(buckets["running"])
        budget = (max_trials if max_trials is not None else math.inf) - len(trials)
        for _ in range(int(min(spec.get("parallelTrialCount", 3) - active, budget))):
            self._create_trial(obj, len(trials))
            trials.append({})
        self._fill_counters(status, buckets, len(trials))
        status["trials"] = len(trials)
        if json.dumps(status, sort_keys=True) != before:
            self._write_status("experiments", obj, "Running")

    @staticmethod
    def _trial_bucket(trial: dict[str, Any]) -> str:
        for ctype, bucket in (("Succeeded", "succeeded"), ("Failed", "failed"), ("Killed", "killed"),
                              ("EarlyStopped", "earlyStopped"), ("MetricsUnavailable", "metricsUnavailable"),
                              ("Running", "running")):
            if _is_true(trial, ctype):
                return bucket
        return "pending"

    @staticmethod
    def _fill_counters(status: dict[str, Any], buckets: dict[str, list[str]], total: int) -> None:
        status["trials"] = total
        for bucket, counter, listed in (
            ("pending", "trialsPending", "pendingTrialList"), ("running", "trialsRunning", "runningTrialList"),
            ("succeeded", "trialsSucceeded", "succeededTrialList"), ("failed", "trialsFailed", "failedTrialList"),
            ("killed", "trialsKilled", "killedTrialList"), ("earlyStopped", "trialsEarlyStopped", "earlyStoppedTrialList"),
            ("metricsUnavailable", "trialMetricsUnavailable", "metricsUnavailableTrialList"),
        ):
            status[counter] = len(buckets[bucket])
            if buckets[bucket]:
                status[listed] = sorted(buckets[bucket])
            else:
                status.pop(listed, None)

    @staticmethod
    def _best_trial(spec: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any] | None:
        objective = spec.get("objective") or {}
        name = objective.get("objectiveMetricName")
        sign = 1 if objective.get("type") == "minimize" else -1
        scored = []
        for t in trials:
            if not _is_true(t, "Succeeded"):
                continue
            metrics = ((t.get("status") or {}).get("observation") or {}).get("metrics") or []
            main = next((m for m in metrics if m["name"] == name), None)
            if main:
                scored.append((sign * float(main["latest"]), t["metadata"]["name"], t))
        if not scored:
            return None
        _, best_name, best = min(scored, key=lambda s: (s[0], s[1]))
        return {"bestTrialName": best_name, "parameterAssignments": best["spec"]["parameterAssignments"],
                "observation": best["status"]["observation"]}

    @staticmethod
    def _goal_reached(objective: dict[str, Any], best: dict[str, Any]) -> bool:
        main = next(m for m in best["observation"]["metrics"] if m["name"] == objective["objectiveMetricName"])
        value, goal = float(main["latest"]), float(objective["goal"])
        return value <= goal if objective.get("type") == "minimize" else value >= goal

    def _create_trial(self, exp: dict[str, Any], index: int) -> None:
        meta, spec = exp["metadata"], exp["spec"]
        rng = random.Random(f"{meta['name']}-{index}")
        assignments = []
        for p in spec.get("parameters") or []:
            space = p.get("feasibleSpace") or {}
            if p.get("parameterType") == "int":
                value = str(rng.randint(int(space["min"]), int(space["max"])))
            elif p.get("parameterType") == "double":
                value = repr(round(rng.uniform(float(space["min"]), float(space["max"])), 6))
            else:
                value = rng.choice(space.get("list") or [""])
            assignments.append({"name": p["name"], "value": value})
        template = spec.get("trialTemplate") or {}
        by_param = {a["name"]: a["value"] for a in assignments}
        text = json.dumps(template.get("trialSpec") or {})
        name = f"{meta['name']}-{''.join(rng.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(8))}"
        for tp in template.get("trialParameters") or []:
            ref = tp.get("reference", "")
            value = by_param.get(ref, name if ref == "${trialSpec.Name}" else meta["namespace"] if ref == "${trialSpec.Namespace}" else "")
            text = text.replace("${trialParameters." + str(tp.get("name")) + "}", value)
        run_spec = json.loads(text)
        run_spec.setdefault("metadata", {}).update({"name": name, "namespace": meta["namespace"]})
        trial = {
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {"katib.kubeflow.org/experiment": meta["name"]},
                         "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("double.")},
                         "ownerReferences": [{"apiVersion": exp["apiVersion"], "kind": "Experiment", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"objective": spec.get("objective"), "parameterAssignments": assignments, "runSpec": run_spec,
                     "metricsCollector": spec.get("metricsCollectorSpec"),
                     "primaryContainerName": template.get("primaryContainerName"),
                     "successCondition": template.get("successCondition"),
                     "failureCondition": template.get("failureCondition"),
                     "primaryPodLabels": template.get("primaryPodLabels")},
        }
        self.store.create("trials", trial)

    def _trial(self, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.setdefault("status", {})
        if any(_is_true(obj, c) for c in ("Succeeded", "Failed", "Killed", "MetricsUnavailable", "EarlyStopped")):
            return
        outcome, run_seconds = self._outcome(obj, self.behaviour.trial_outcome)
        run_seconds = self.behaviour.trial_run_seconds if run_seconds is None else run_seconds
        if not status.get("conditions"):
            set_katib_condition(status, "Created", "True", "TrialCreated", "Trial is created")
            return self._write_status("trials", obj, "Created")
        if not _is_true(obj, "Running"):
            set_katib_condition(status, "Running", "True", "TrialRunning", "Trial is running")
            status["startTime"] = now_rfc3339()
            self.trial_started[meta["uid"]] = time.monotonic()
            return self._write_status("trials", obj, "Running")
        started = self.trial_started.setdefault(meta["uid"], time.monotonic())
        if outcome == "Hang" or time.monotonic() - started < run_seconds:
            return
        set_katib_condition(status, "Running", "False", "TrialRunning", "Trial is running")
        if outcome == "Failed":
            set_katib_condition(status, "Failed", "True", "TrialFailed", "Trial has failed")
        else:
            status["observation"] = {"metrics": self._metrics(obj)}
            if self.trial_workload is not None:
                self.trial_workload(copy.deepcopy(obj))
            set_katib_condition(status, "Succeeded", "True", "TrialSucceeded", "Trial has succeeded")
        status["completionTime"] = now_rfc3339()
        self._write_status("trials", obj, "Failed" if outcome == "Failed" else "Succeeded")

    @staticmethod
    def _metrics(trial: dict[str, Any]) -> list[dict[str, str]]:
        """A deterministic objective: a bowl over the parameters' values (smaller near 0.3 of each value)."""
        objective = trial["spec"].get("objective") or {}
        score = 0.1
        for a in trial["spec"]["parameterAssignments"]:
            try:
                x = float(a["value"])
            except ValueError:
                x = float(len(a["value"]))
            score += (math.log1p(abs(x)) - 0.3) ** 2 / 10
        value = score if objective.get("type") != "maximize" else 1 / (1 + score)
        names = [objective.get("objectiveMetricName", "objective")] + list(objective.get("additionalMetricNames") or [])
        out = []
        for i, name in enumerate(names):
            v = f"{value + i * 0.01:.6f}"
            out.append({"name": name, "min": v, "max": v, "latest": v})
        return out
