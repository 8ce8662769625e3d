"""PyTorchJob and TFJob on this machine, with the Kubeflow training operator's semantics.

Every replica (type x index) is a local process started from the primary container's command with
exactly the environment the training operator (v1.9) injects, so the `train.py` that runs on the
cluster runs here unchanged. Success, failure, restarts, backoffLimit and activeDeadlineSeconds
follow the operator's rules. The deviations, all forced by running on one machine:

- Addresses: the operator points replicas at `<job>-master-0` (PyTorch), `<job>-<type>-<i>.<ns>.svc`
  (TF_CONFIG) or `<job>-worker-0` (elastic rendezvous). Those names do not resolve here, so every
  address is 127.0.0.1.
- Ports: the declared port (23456, 2222, rdzvPort) may be taken on this machine, and TF replicas
  would all share it, so each job (PyTorch) or each replica (TF) gets a free local port instead.
- A replica that succeeds is not restarted, even with restartPolicy Always (the kubelet would
  restart it forever); the job's success rule then decides as usual.
- OnFailure/Always restarts happen in place like the kubelet's, without CrashLoopBackOff delays;
  every restart (ExitCode retries too) counts against runPolicy.backoffLimit, and the job fails once
  a failure would need more than backoffLimit restarts.
- When the job is decided, the remaining replicas are killed (cleanPodPolicy is not needed locally).
- A suspended job (runPolicy.suspend) is not run: it stays PENDING "Suspended" (never terminal, as
  on a cluster where Kueue or a person resumes it) until it is cancelled or its deadline passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shared.backends.local import procs
from shared.backends.local.runner import RunContext
from shared.specs.model import ReplicaSpec, TrainingJobSpec
from shared.status import State, Status

LOCALHOST = "127.0.0.1"
POLL_SECONDS = 0.1
KILL_GRACE_SECONDS = 2.0
LEADERS = {"PyTorchJob": ("Master",), "TFJob": ("Chief", "Master")}
_SIGNAL_EXIT_BASE = 128  # a process killed by signal N exits 128+N, as a container reports it


def free_port() -> int:
    """A TCP port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the operator's environment


def pytorch_env(
    spec: TrainingJobSpec, rtype: str, index: int, master_port: int, rdzv_port: int
) -> dict[str, str]:
    """The variables `pkg/controller.v1/pytorch/{envvar,master,elastic}.go` set on a replica.

    As upstream: MASTER_*, WORLD_SIZE, RANK, PET_NODE_RANK and PET_NPROC_PER_NODE only when the
    job has a Master; PET_NNODES always (min:max with an elasticPolicy).
    """
    total = sum(r.replicas for r in spec.replicas)
    env = {"PYTHONUNBUFFERED": "1"}
    if spec.replica("Master") is not None:
        nproc = spec.nproc_per_node
        rank = index + 1 if rtype == "Worker" else index
        env |= {
            "MASTER_ADDR": LOCALHOST,
            "PET_MASTER_ADDR": LOCALHOST,
            "MASTER_PORT": str(master_port),
            "PET_MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(total * (int(nproc) if nproc and nproc.isdigit() else 1)),
            "RANK": str(rank),
            "PET_NODE_RANK": str(rank),
        }
        if nproc is not None:
            env["PET_NPROC_PER_NODE"] = nproc
    elastic = spec.manifest.get("spec", {}).get("elasticPolicy")
    if elastic is None:
        env["PET_NNODES"] = str(total)
    else:
        env |= _elastic_env(spec, elastic, rdzv_port)
    return env


def _elastic_env(spec: TrainingJobSpec, policy: Mapping[str, Any], rdzv_port: int) -> dict[str, str]:
    low, high = policy.get("minReplicas"), policy.get("maxReplicas")
    if low is None and high is None:
        worker = spec.replica("Worker")
        nnodes = str(worker.replicas if worker else 0)
    else:
        nnodes = f"{low}:{high}"
    env = {
        "PET_RDZV_ENDPOINT": f"{LOCALHOST}:{rdzv_port}",
        "PET_RDZV_BACKEND": str(policy.get("rdzvBackend") or "c10d"),
        "PET_NNODES": nnodes,
    }
    if policy.get("maxRestarts") is not None:
        env["PET_MAX_RESTARTS"] = str(policy["maxRestarts"])
    if policy.get("nProcPerNode") is not None:
        env["PET_NPROC_PER_NODE"] = str(policy["nProcPerNode"])
    if policy.get("rdzvId") is not None:
        env["PET_RDZV_ID"] = str(policy["rdzvId"])
    if policy.get("rdzvConf"):
        env["PET_RDZV_CONF"] = ",".join(f"{c['key']}={c['value']}" for c in policy["rdzvConf"])
    if policy.get("standalone"):
        env["PET_STANDALONE"] = ""
    return env


def tf_config(
    spec: TrainingJobSpec, rtype: str, index: int, ports: Mapping[tuple[str, int], int]
) -> str | None:
    """TF_CONFIG as `pkg/controller.v1/tensorflow/tensorflow.go` writes it (compact JSON, sorted
    cluster keys like Go's encoder), or None for a job of a single replica."""
    if sum(r.replicas for r in spec.replicas) <= 1:
        return None
    cluster = {
        r.type.lower(): [f"{LOCALHOST}:{ports[(r.type, i)]}" for i in range(r.replicas)]
        for r in sorted(spec.replicas, key=lambda r: r.type.lower())
    }
    task = {"type": rtype.lower(), "index": index}
    if spec.manifest.get("spec", {}).get("enableDynamicWorker"):
        config: dict[str, Any] = {
            "sparseCluster": _sparse_cluster(cluster, rtype.lower(), index),
            "task": task,
        }
    else:
        config = {"cluster": cluster, "task": task, "environment": "cloud"}
    return json.dumps(config, separators=(",", ":"))


def _sparse_cluster(cluster: Mapping[str, list[str]], rtype: str, index: int) -> dict[str, Any]:
    """enableDynamicWorker: a worker knows only itself and the PS; a PS only itself (upstream's
    `convertClusterSpecToSparseClusterSpec`, including `ps: null` when there is no PS)."""
    if rtype == "ps":
        return {"worker": {}, "ps": [cluster["ps"][index]]}
    if rtype == "worker":
        return {"worker": {str(index): cluster["worker"][index]}, "ps": cluster.get("ps")}
    return {"worker": {}, "ps": []}


# ---------------------------------------------------------------- replicas


class _LogSink:
    """One replica's log file plus the run log; lines are flushed as they come."""

    def __init__(self, path: Path, prefix: str, run_log, lock: threading.Lock):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = path.open("a", encoding="utf-8")
        self._prefix = prefix
        self._run_log = run_log
        self._lock = lock

    def __call__(self, line: str) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.write(line + "\n")
            self._file.flush()
            self._run_log(self._prefix + line)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class _Replica:
    spec: ReplicaSpec
    index: int
    env: dict[str, str]
    sink: _LogSink
    child: procs.Child | None = None
    outcome: str = "active"  # active | succeeded | failed | stopped


def _exit_code(returncode: int) -> int:
    return _SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def _retryable(policy: str, code: int) -> bool:
    """restartPolicy semantics: ExitCode retries only 128-255 (signals, OOM kills), 1-127 are permanent."""
    if policy in ("OnFailure", "Always"):
        return True
    return policy == "ExitCode" and code >= _SIGNAL_EXIT_BASE


# ---------------------------------------------------------------- the runner


class TrainingRunner:
    """Runs a TrainingJobSpec locally; see the module docstring for the rules and deviations."""

    def __init__(self, spec: TrainingJobSpec, ctx: RunContext):
        self.spec = spec
        self.ctx = ctx
        self._lock = threading.Lock()  # guards starting children against a concurrent stop()
        self._log_lock = threading.Lock()
        self._stopping = threading.Event()
        self._replicas: list[_Replica] = []
        self._restarts = 0
        self._last_report: tuple[Any, ...] | None = None

    # -- protocol

    def run(self) -> Status:
        if self.spec.run_policy.suspend:
            self._report(
                State.PENDING,
                "Suspended",
                f"queued/suspended by runPolicy.suspend: {self._ref} waits to be resumed",
                f"{self.spec.resource}Suspended",
            )
            self._stopping.wait()
            return self._cancelled()
        problem = self._unrunnable()
        if problem:
            return Status(State.FAILED, "Failed", problem)
        self._report(State.PENDING, "Created", f"{self._ref} is created.")
        try:
            with self._lock:
                if self._stopping.is_set():
                    return self._cancelled()
                self._replicas = self._plan()
                for replica in self._replicas:
                    self._start(replica)
            return self._supervise()
        except OSError as exc:  # a missing command: on a cluster, a container that cannot start
            return self._finish(
                State.FAILED,
                f"{self.spec.resource}Failed",
                f"{self._ref} has failed: a replica cannot start: {exc}",
            )
        finally:
            self._kill([r for r in self._replicas if r.child is not None])
            for replica in self._replicas:
                replica.sink.close()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            children = [r for r in self._replicas if r.child is not None]
        self._kill(children)

    # -- setup

    @property
    def _ref(self) -> str:
        ns = f"{self.spec.namespace}/" if self.spec.namespace else ""
        return f"{self.spec.resource} {ns}{self.spec.name}"

    def _unrunnable(self) -> str | None:
        for replica in self.spec.replicas:
            if not replica.container.command and not replica.container.args:
                return (
                    f"{replica.type}: container {replica.container.name!r} has no command or args; "
                    "an image's entrypoint cannot run locally"
                )
        return None

    def _plan(self) -> list[_Replica]:
        """Every replica with its environment: container env, then ours, then the operator's (last wins,
        as with duplicate names in a pod spec)."""
        spec = self.spec
        pytorch = spec.resource == "PyTorchJob"
        master_port, rdzv_port = (free_port(), free_port()) if pytorch else (0, 0)
        tf_ports = (
            {} if pytorch else {(r.type, i): free_port() for r in spec.replicas for i in range(r.replicas)}
        )
        planned = []
        for rspec in spec.replicas:
            for index in range(rspec.replicas):
                env = dict(rspec.container.env) | dict(self.ctx.env)
                if pytorch:
                    env |= pytorch_env(spec, rspec.type, index, master_port, rdzv_port)
                else:
                    config = tf_config(spec, rspec.type, index, tf_ports)
                    if config is not None:
                        env["TF_CONFIG"] = config
                name = f"{rspec.type.lower()}-{index}"
                sink = _LogSink(
                    self.ctx.workdir / "logs" / f"{name}.log", f"[{name}] ", self.ctx.log, self._log_lock
                )
                planned.append(_Replica(rspec, index, env, sink))
        return planned

    def _cwd(self, rspec: ReplicaSpec) -> str:
        wd = rspec.container.working_dir
        if wd:
            path = Path(self.spec.base_dir, wd)  # an absolute workingDir stays as it is
            if path.is_dir():
                return str(path)
        return self.spec.base_dir

    def _start(self, replica: _Replica) -> None:
        container = replica.spec.container
        replica.child = procs.Child(
            [*container.command, *container.args],
            env=procs.child_env(replica.env),
            cwd=self._cwd(replica.spec),
            on_line=replica.sink,
            registry=self.ctx.registry,
        )
        replica.outcome = "active"

    # -- supervision

    def _supervise(self) -> Status:
        started = time.monotonic()
        deadline = self.spec.run_policy.active_deadline_seconds
        self._report(State.RUNNING, "Running", f"{self._ref} is running.")
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return self._cancelled()
                verdict = self._tick()
            if verdict is not None:
                return verdict
            if deadline is not None and time.monotonic() - started >= deadline:
                return self._finish(
                    State.FAILED,
                    "DeadlineExceeded",
                    f"Job {self.spec.name} has failed because it was active longer than specified deadline",
                )
            time.sleep(POLL_SECONDS)

    def _tick(self) -> Status | None:
        """Collect exits, restart what the policy retries, and decide the job if it is decided."""
        restarted: list[_Replica] = []
        failed: list[_Replica] = []
        for replica in self._replicas:
            if replica.outcome != "active" or replica.child is None:
                continue
            code = replica.child.poll()
            if code is None:
                continue
            code = _exit_code(code)
            if code == 0:
                replica.outcome = "succeeded"
            elif _retryable(replica.spec.restart_policy, code):
                restarted.append(replica)
            else:
                replica.outcome = "failed"
                failed.append(replica)

        if failed:
            rtype = failed[0].spec.type
            count = sum(1 for r in self._replicas if r.spec.type == rtype and r.outcome == "failed")
            return self._finish(
                State.FAILED,
                f"{self.spec.resource}Failed",
                f"{self._ref} has failed because {count} {rtype} replica(s) failed.",
            )
        if self._succeeded():
            return self._finish(
                State.SUCCEEDED, f"{self.spec.resource}Succeeded", f"{self._ref} successfully completed."
            )
        if restarted:
            limit = self.spec.run_policy.backoff_limit
            if limit is not None and self._restarts + len(restarted) > limit:
                return self._finish(
                    State.FAILED,
                    "BackoffLimitExceeded",
                    f"Job {self.spec.name} has failed because it has reached the specified backoff limit",
                )
            for replica in restarted:
                self._restarts += 1
                self._start(replica)
            rtype = restarted[0].spec.type
            self._report(
                State.RUNNING,
                "Restarting",
                f"{self._ref} is restarting because {len(restarted)} {rtype} replica(s) failed.",
                reason=f"{self.spec.resource}Restarting",
            )
            return None
        if not any(r.outcome == "active" for r in self._replicas):
            return self._finish(
                State.FAILED,
                f"{self.spec.resource}Failed",
                f"{self._ref} has failed because every replica exited without meeting its success policy.",
            )
        self._report(State.RUNNING, "Running", f"{self._ref} is running.")
        return None

    def _succeeded(self) -> bool:
        """The operator's success rule: follow the Master/Chief if there is one, else the Workers."""
        for leader in LEADERS[self.spec.resource]:
            group = self._of(leader)
            if group:
                return all(r.outcome == "succeeded" for r in group)
        workers = self._of("Worker")
        if not workers:
            return False
        done = [r.outcome == "succeeded" for r in workers]
        if self.spec.resource == "PyTorchJob":
            elastic = self.spec.manifest.get("spec", {}).get("elasticPolicy") is not None
            return any(done) if elastic else all(done)
        return all(done) if self.spec.success_policy == "AllWorkers" else done[0]

    def _of(self, rtype: str) -> list[_Replica]:
        return [r for r in self._replicas if r.spec.type == rtype]

    # -- endings and reports

    def _finish(self, state: State, reason: str, message: str) -> Status:
        """Kill what still runs (the operator deletes the pods of a decided job) and conclude."""
        remaining = [r for r in self._replicas if r.outcome == "active"]
        self._kill(remaining)
        for replica in remaining:
            replica.outcome = "stopped"
        raw = "Succeeded" if state is State.SUCCEEDED else "Failed"
        return Status(state, raw, message, self._outputs(reason))

    def _cancelled(self) -> Status:
        for replica in self._replicas:
            if replica.outcome == "active":
                replica.outcome = "stopped"
        message = f"{self._ref} was cancelled; every replica was killed."
        return Status(State.CANCELLED, "Cancelled", message, self._outputs("Cancelled"))

    def _outputs(self, reason: str) -> dict[str, Any]:
        statuses: dict[str, dict[str, int]] = {}
        for replica in self._replicas:
            counts = statuses.setdefault(replica.spec.type, {"active": 0, "succeeded": 0, "failed": 0})
            if replica.outcome in counts:
                counts[replica.outcome] += 1
        return {"replica_statuses": statuses, "restarts": self._restarts, "reason": reason}

    def _report(self, state: State, raw: str, message: str, reason: str | None = None) -> None:
        outputs = self._outputs(reason or f"{self.spec.resource}{raw}")
        key = (state, raw, message, json.dumps(outputs, sort_keys=True))
        if key == self._last_report:
            return
        if self._last_report is None or self._last_report[1] != raw:
            self._say(message)
        self._last_report = key
        self.ctx.report(Status(state, raw, message, outputs))

    def _say(self, message: str) -> None:
        """A line of the runner's own in the run log, between the replicas' lines."""
        with self._log_lock:
            self.ctx.log(f"[{self.spec.name}] {message}")

    @staticmethod
    def _kill(replicas: list[_Replica]) -> None:
        """SIGTERM every group at once, give them KILL_GRACE_SECONDS together, then SIGKILL the rest."""
        children = [r.child for r in replicas if r.child is not None]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline and any(procs.group_alive(c.pid) for c in children):
            time.sleep(0.05)
        for child in children:
            child.kill_group(grace=0)
